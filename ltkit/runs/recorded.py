"""A finished run's data as its record holds it: what a recorded run's notebook shows without the images.

A reader who re-executes a committed run's notebook may not have the dataset (CIFAR is not in the
repository, a folder dataset is someone else's). Everything the notebook shows about the data is in
the run's own files: the training counts, class names and class groups in ``per_class.csv``, the
test labels in ``predictions.npz``, the split sizes in ``provenance.json``. :class:`RecordedData`
answers the few questions the notebook asks of a dataset (``sizes``, ``train_counts``, ``tests``,
``num_classes``, ``classes``, ``groups``) from those files, so it never loads an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import read_json_or_empty
from ..core.layout import PROVENANCE

GROUPS = ("head", "middle", "tail", "many", "medium", "few")


@dataclass
class RecordedSplit:
    """A test split known by its labels only (all the notebook counts)."""

    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


@dataclass
class RecordedData:
    """The dataset of a finished run, read back from its results folder (see the module's docstring)."""

    classes: list[str]
    train_counts: np.ndarray
    tests: dict[str, RecordedSplit]
    recorded_sizes: dict[str, int]
    class_groups: dict[str, np.ndarray] = field(default_factory=dict)
    recorded: bool = True  # not the images: the notebook says so

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def groups(self) -> dict[str, np.ndarray]:
        return dict(self.class_groups)

    def sizes(self) -> dict[str, int]:
        return dict(self.recorded_sizes)


def recorded_data(run_dir: str | Path) -> RecordedData:
    """The data a finished run saw, from its ``per_class.csv``, ``predictions.npz`` and ``provenance.json``."""
    run_dir = Path(run_dir)
    per_class = pd.read_csv(run_dir / "per_class.csv")
    names = per_class["name"].astype(str).tolist() if "name" in per_class else [str(c) for c in per_class["class"]]
    counts = per_class["train_count"].to_numpy(dtype=np.int64)
    groups = {g: per_class[f"group_{g}"].to_numpy(dtype=bool) for g in GROUPS if f"group_{g}" in per_class}
    with np.load(run_dir / "predictions.npz") as npz:
        tests = {k.removeprefix("label_"): RecordedSplit(npz[k].astype(np.int64)) for k in npz.files
                 if k.startswith("label_")}
    sizes = (read_json_or_empty(run_dir / PROVENANCE).get("dataset") or {}).get("sizes") or {}
    if not sizes:
        sizes = {"train": int(counts.sum()), **{f"test_{k}": len(v) for k, v in tests.items()}}
    return RecordedData(names, counts, tests, {k: int(v) for k, v in sizes.items()}, groups)
