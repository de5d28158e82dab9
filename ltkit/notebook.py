"""What ``notebooks/train.ipynb`` calls: build the config, run, write the results folder.

Keeping this logic here keeps the notebook short enough to read and re-run
by hand, and lets the tests exercise it without Jupyter. The notebook's
parameters cell is the one list of its parameters: the grid runner reads it
(:func:`parameter_names`) to know which config fields papermill passes by name.
"""

from __future__ import annotations

import ast
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import FIELDS, RunConfig, make_config
from .engine import RunResult
from .io import read_json
from .layout import NOTEBOOK, PROVENANCE
from .pipeline import run
from .results import Status, load_metrics, now, record_failure, run_status, write_run


@cache
def parameter_names(notebook: Path = NOTEBOOK) -> tuple[str, ...]:
    """The names the notebook's ``parameters`` cell assigns, in order (papermill injects values for them)."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return tuple(t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name))


def config_parameter_names() -> tuple[str, ...]:
    """The notebook's parameters that are RunConfig fields (the rest steer the notebook: output_dir, smoke, ...)."""
    return tuple(k for k in parameter_names() if k in FIELDS)


def run_config(params: dict[str, Any], smoke: bool = False, extra: dict[str, Any] | None = None) -> RunConfig:
    """The notebook's parameters (its namespace: the config fields among them are taken) plus ``extra``
    (any other RunConfig field) as a validated RunConfig; ``smoke`` = 1 epoch of 2 steps."""
    cfg = {k: params[k] for k in config_parameter_names() if k in params}
    cfg.update(extra or {})
    if smoke:
        cfg.update(epochs=1, max_steps=2, bootstrap=100, stage2_epochs=1)
    return make_config(cfg)


class Clock:
    def __init__(self) -> None:
        self.start, self.t0 = now(), time.perf_counter()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.t0


def packed_record(output_dir: str | Path | None, cfg: RunConfig) -> dict | None:
    """The pack a finished run of this very configuration was trained in (provenance ``run.packed``), else None."""
    if not output_dir or run_status(output_dir, cfg.fingerprint()) != Status.DONE:
        return None
    try:
        return read_json(Path(output_dir) / PROVENANCE)["run"].get("packed")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_record(output_dir: str | Path, cfg: RunConfig) -> RunResult:
    """A finished run read back from its results folder, in the shape :func:`train_and_record` returns
    (no model): what the notebook shows for a run that a packed model trained and recorded."""
    out = Path(output_dir)
    with np.load(out / "predictions.npz") as npz:
        preds = {k.removeprefix("pred_"): npz[k].astype(np.int64) for k in npz.files if k.startswith("pred_")}
        labels = {k.removeprefix("label_"): npz[k].astype(np.int64) for k in npz.files if k.startswith("label_")}
    try:
        history = pd.read_csv(out / "history.csv")
    except pd.errors.EmptyDataError:
        history = pd.DataFrame()
    prov = read_json(out / PROVENANCE)
    return RunResult(cfg, load_metrics(out) or {}, pd.read_csv(out / "per_class.csv"), history, preds, labels,
                     prov.get("dataset") or {},
                     extra={**(prov.get("procedure_extra") or {}), "record_of_pack": prov["run"].get("packed")})


def train_and_record(cfg: RunConfig, output_dir: str | Path | None, checkpoint_dir: str | Path | None, clock: Clock,
                     ds=None, progress: bool = True):
    """Run and write the results folder; on failure, record it in provenance and re-raise.

    A run that a packed model already trained and recorded (:mod:`ltkit.packed`, provenance
    ``run.packed``) is read back instead, so its notebook shows that record without training
    or writing anything (``ltkit grid record`` executes such notebooks after a pack); its
    ``extra['record_of_pack']`` says which pack.
    """
    if packed_record(output_dir, cfg) is not None:
        return load_record(output_dir, cfg)
    try:
        result = run(cfg, ckpt_dir=checkpoint_dir, progress=progress, ds=ds)
    except Exception as exc:
        if output_dir:
            record_failure(output_dir, cfg, clock.start, clock.wall, f"{type(exc).__name__}: {exc}")
        raise
    if output_dir:
        write_run(output_dir, result, clock.start, clock.wall)
    return result
