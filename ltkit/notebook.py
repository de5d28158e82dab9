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

from .config import FIELDS, RunConfig, make_config
from .layout import NOTEBOOK
from .pipeline import run
from .results import now, record_failure, write_run


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
