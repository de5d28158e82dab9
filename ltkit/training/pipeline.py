"""A whole run: check the configuration, load the data, obtain the model by the run's procedure,
evaluate. ``run(config)`` is what the notebook (and so every grid run) calls.

The top of the training stack: :mod:`ltkit.training.procedures` holds how a model is
obtained (stage-one training, two experts, stage-two procedures), all on top of
:mod:`ltkit.training.engine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from ..config.fields import RunConfig
from ..core.hardware import lower_priority
from ..core.io import run_lock
from ..core.layout import TRAIN_LOCK
from ..data import LTDataset
from ..metrics import TRAININGS
from ..runs.records import RunResult
from .check import make_config
from .checkpoint import save_final
from .engine import evaluate_model, load_data, make_context, pick_device, seed_everything
from .packed import train_pack
from .procedures import PROCEDURES


def run(params: RunConfig | dict[str, Any], ckpt_dir: str | Path | None = None, progress: bool = True,
        keep_model: bool = False, ds: LTDataset | None = None) -> RunResult:
    """Load data, obtain the model by the run's procedure, evaluate: a whole run."""
    cfg = params if isinstance(params, RunConfig) else make_config(params)
    lower_priority()  # a campaign's runs yield the CPU to interactive work ($LTKIT_NICE)
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
    fitted = PROCEDURES.get(cfg.procedure)(ctx, ckpt, progress, **cfg.procedure_params)
    result = evaluate_model(ctx, fitted)
    # cost, beside the accuracy: full trainings this run did (a stage-two procedure reuses its stage one)
    result.metrics[TRAININGS] = PROCEDURES.info(cfg.procedure).trainings  # (seconds go to provenance)
    if keep_model:
        result.model = fitted.model
    return result


def run_pack(params: list[RunConfig | dict[str, Any]], ckpt_dirs: list[str | Path | None] | None = None,
             progress: bool = True, backend: str = "auto") -> list[RunResult | Exception]:
    """Several stage-one runs trained as one packed model (:mod:`ltkit.training.packed`), each evaluated and
    returned as if it had run alone, or the exception that stopped it (its pack goes on without it).

    The data are loaded and put on the device once; every run holds its own training lock.
    """
    cfgs = [p if isinstance(p, RunConfig) else make_config(p) for p in params]
    lower_priority()
    ckpts = [Path(d) if d else None for d in (ckpt_dirs or [None] * len(cfgs))]
    with contextlib.ExitStack() as locks:
        for ck in ckpts:
            if ck is not None:
                locks.enter_context(run_lock(ck / TRAIN_LOCK))
        device = pick_device(cfgs[0].device)
        ctx0 = make_context(cfgs[0], load_data(cfgs[0]), device)
        ctxs = [dataclasses.replace(ctx0, cfg=c) for c in cfgs]  # one copy of the images on the device
        fits = train_pack(ctxs, ckpts, progress, backend)
        out: list[RunResult | Exception] = []
        for ctx, ck, fit in zip(ctxs, ckpts, fits, strict=True):
            if isinstance(fit, Exception):
                out.append(fit)
                continue
            if ck is not None:
                save_final(ck, ctx.cfg, fit.model)
            result = evaluate_model(ctx, fit)
            result.metrics[TRAININGS] = PROCEDURES.info("train").trainings
            out.append(result)
        return out
