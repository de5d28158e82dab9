"""What ``notebooks/train.ipynb`` calls: build the config, run, write the results folder.

Keeping this logic here keeps the notebook short enough to read and re-run by hand, and lets the
tests exercise it without Jupyter. The notebook's parameters cell is the one list of its parameters
(:mod:`ltkit.config.parameters` reads it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config.fields import RunConfig
from .config.parameters import config_parameter_names
from .core.io import read_json
from .core.layout import PROVENANCE
from .runs.provenance import now
from .runs.records import load_record, record_failure, write_run
from .runs.status import Status, run_status
from .training.check import make_config
from .training.pipeline import run


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


def train_and_record(cfg: RunConfig, output_dir: str | Path | None, checkpoint_dir: str | Path | None, clock: Clock,
                     ds=None, progress: bool = True):
    """Run and write the results folder; on failure, record it in provenance and re-raise.

    A run that a packed model already trained and recorded (:mod:`ltkit.training.packed`, provenance
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
