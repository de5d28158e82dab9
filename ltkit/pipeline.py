"""A whole run: check the configuration, load the data, train stage one or run a stage-two method,
evaluate. ``run(config)`` is what the notebook (and so every grid run) calls.

The top of the training stack: it dispatches between :mod:`ltkit.train` (stage
one) and :mod:`ltkit.methods` (stage two), which both build on :mod:`ltkit.engine`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .config import make_config
from .data import LTDataset
from .engine import RunResult, build_model, evaluate_model, load_data, make_context, pick_device, seed_everything
from .io import atomic_torch_save, run_lock
from .layout import FINAL, TRAIN_LOCK
from .methods import STAGE2
from .runconfig import RunConfig
from .train import train_model


def run(params: RunConfig | dict[str, Any], ckpt_dir: str | Path | None = None, progress: bool = True,
        keep_model: bool = False, ds: LTDataset | None = None) -> RunResult:
    """Load data, build, train (or run a stage-two method), evaluate: a whole run."""
    cfg = params if isinstance(params, RunConfig) else make_config(params)
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    # The process that trains holds the run's training lock for as long as it trains, so a killed
    # grid runner (whose notebook kernel may train on) never lets a second runner train the same run.
    with run_lock(ckpt / TRAIN_LOCK) if ckpt is not None else contextlib.nullcontext():
        return _run(cfg, ckpt, progress, keep_model, ds)


def _run(cfg: RunConfig, ckpt: Path | None, progress: bool, keep_model: bool, ds: LTDataset | None) -> RunResult:
    device = pick_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    ds = ds if ds is not None else load_data(cfg)
    ctx = make_context(cfg, ds, device)
    if cfg.loss in STAGE2:
        fitted = STAGE2.get(cfg.loss)(ctx, ckpt, **cfg.loss_params)
        trainings = STAGE2.info(cfg.loss).trainings
    else:
        trainings = 1
        fitted = train_model(ctx, build_model(cfg, ds.num_classes).to(device), ckpt, progress)
        if ckpt is not None:
            atomic_torch_save(ckpt / FINAL, {"model": fitted.model.state_dict(), "model_name": cfg.model,
                                             "fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    result = evaluate_model(ctx, fitted)
    # cost, beside the accuracy: full trainings this run did (a stage-two method reuses its stage one)
    result.metrics["trainings"] = trainings  # (training seconds, not deterministic, go to provenance)
    if keep_model:
        result.model = fitted.model
    return result
