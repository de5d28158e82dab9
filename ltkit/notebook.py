"""What ``notebooks/train.ipynb`` calls: build the config, run, write the results folder.

Keeping this logic here keeps the notebook short enough to read and re-run
by hand, and lets the tests exercise it without Jupyter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import RunConfig, make_config
from .pipeline import run
from .results import now, record_failure, write_run


def run_config(protocol: str, dataset: str, model: str, loss: str, seed: int, imb_factor: float = 100,
               imb_type: str = "exp", label: str | None = None, epochs: int | None = None, batch_size: int = 128,
               data_root: str | None = None, smoke: bool = False, extra: dict[str, Any] | None = None) -> RunConfig:
    """The notebook's parameters as a validated RunConfig; ``smoke`` = 1 epoch of 2 steps."""
    params = dict(protocol=protocol, dataset=dataset, model=model, loss=loss, seed=seed, imb_factor=imb_factor,
                  imb_type=imb_type, label=label, epochs=epochs, batch_size=batch_size, data_root=data_root)
    params.update(extra or {})
    if smoke:
        params.update(epochs=1, max_steps=2, bootstrap=100, stage2_epochs=1)
    return make_config(params)


class Clock:
    def __init__(self) -> None:
        self.start, self.t0 = now(), time.perf_counter()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.t0


def train_and_record(cfg: RunConfig, output_dir: str | Path | None, checkpoint_dir: str | Path | None, clock: Clock,
                     ds=None, progress: bool = True):
    """Run and write the results folder; on failure, record it in provenance and re-raise."""
    try:
        result = run(cfg, ckpt_dir=checkpoint_dir, progress=progress, ds=ds)
    except Exception as exc:
        if output_dir:
            record_failure(output_dir, cfg, clock.start, clock.wall, f"{type(exc).__name__}: {exc}")
        raise
    if output_dir:
        write_run(output_dir, result, clock.start, clock.wall)
    return result
