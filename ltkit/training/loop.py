"""The stage-one training loop: :func:`train_model` = per epoch :func:`train_one_epoch`, then
:func:`validate`, then a checkpoint.

GPU fast path: the split sits on the device as uint8 and is augmented there
in batches (:mod:`ltkit.data.loader`); bf16 autocast, channels_last, cuDNN
benchmark, fused optimisers and ``torch.compile`` on CUDA; the only host syncs
are at the end of an epoch (progress bar, history, NaN guard). The CPU path
runs the same code.

Reliability: after every epoch the model, optimiser, history and best-so-far
state are checkpointed atomically; re-launching the same run resumes from
the last complete epoch and, because every epoch's random draws are seeded
from (seed, epoch), ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config.fields import RunConfig
from ..core.layout import LAST
from ..data.loader import augment, batches
from ..data.samplers import epoch_indices
from ..data.splits import shot_groups
from ..losses import create_loss
from ..metrics import balanced_top1, top1
from .checkpoint import load_last, non_finite_state, save_last
from .engine import Context, Fitted, make_optimizer, maybe_compile

_log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Training diverged: a NaN or infinite loss, parameter or running statistic, or an absurd loss."""


DIVERGED_LOSS = 1e6  # an epoch's mean loss above this is divergence, not learning (CE-type losses stay < ~100)


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then x ``lr_decay`` at each milestone (epoch >= m)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    return cfg.lr * cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)


def _test_epoch(cfg: RunConfig, epoch: int) -> bool:
    """Test-set tracking epochs: every epoch from the first lr decay on (where the best epoch of the
    published step schedules lies), every 10th before it, and the last. Saves ~70% of that evaluation."""
    first = min(cfg.milestones) if cfg.milestones else 0
    return epoch >= first or epoch % 10 == 9 or epoch == cfg.epochs - 1


def _tensorboard(cfg: RunConfig, ckpt_dir: Path | None, start: int):
    """A SummaryWriter in ``<checkpoint dir>/tensorboard`` when asked for and installed, else None.

    Watching only: ``results/`` stays the source of truth. ``purge_step`` drops the events of epochs
    a killed run logged but did not checkpoint, so a resumed run's curves have no doubles.
    """
    if not cfg.tensorboard or ckpt_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _log.warning("tensorboard: true, but the tensorboard package is not installed "
                     "(pip install tensorboard, or ltkit[tensorboard]); training without live curves")
        return None
    return SummaryWriter(str(ckpt_dir / "tensorboard"), purge_step=start)


def _group_accuracy(logits: torch.Tensor, labels: torch.Tensor, counts: np.ndarray) -> dict[str, float]:
    """Many / medium / few accuracy of a split (groups by training count, :func:`ltkit.data.splits.shot_groups`)."""
    correct = (logits.argmax(1) == labels).cpu().numpy()
    lab = labels.cpu().numpy()
    return {g: float(correct[mask[lab]].mean()) for g, mask in shot_groups(counts).items() if mask[lab].any()}


def train_one_epoch(ctx: Context, model: nn.Module, fwd: nn.Module, loss_fn: nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, epoch: int) -> dict[str, Any]:
    """One epoch of SGD steps; returns its history row (loss, accuracy, images, seconds).

    Every random draw of the epoch (sampler order, crops and flips, SEQL's Bernoulli
    draws) is seeded from (seed, epoch), so a resumed run repeats an uninterrupted one.
    Divergence (a non-finite loss, parameter or running statistic, or a mean loss
    above :data:`DIVERGED_LOSS`) raises :class:`NonFiniteLoss`.
    """
    cfg, device = ctx.cfg, ctx.device
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # global RNG (SEQL's Bernoulli draws, dropout)
    gen.manual_seed(cfg.seed * 100_003 + epoch)  # crop/flip draws
    for g in opt.param_groups:
        g["lr"] = lr_at(cfg, epoch)
    if hasattr(loss_fn, "set_epoch"):
        loss_fn.set_epoch(epoch)
    model.train()
    order = epoch_indices(cfg.sampler, ctx.train.labels_np, ctx.ds.train_counts, epoch, cfg.epochs, cfg.seed)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    # mixup (Zhang et al. 2018, Eq. 1): x = lam x_i + (1 - lam) x_j, loss = lam l(y_i) + (1 - lam) l(y_j), one
    # lam ~ Beta(alpha, alpha) per batch; drawn from (seed, epoch) like every other draw, so a resumed run repeats
    mix = np.random.default_rng([cfg.seed, epoch, 0x6D6978]) if cfg.mixup else None
    for step, idx in enumerate(batches(order, cfg.batch_size)):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
        x = augment(ctx.train.images[idx_t], cfg.image_size, ctx.mean, ctx.std, gen)
        y = ctx.train.labels[idx_t]
        if mix is not None:
            lam = float(mix.beta(cfg.mixup, cfg.mixup))
            perm = torch.randperm(len(idx), generator=gen, device=device)
            x = lam * x + (1.0 - lam) * x[perm]
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            logits = fwd(x)
        loss = loss_fn(logits, y) if mix is None else lam * loss_fn(logits, y) + (1.0 - lam) * loss_fn(logits, y[perm])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ld = loss.detach()
        bad = ~torch.isfinite(ld)
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
        loss_sum += torch.where(bad, torch.zeros_like(ld), ld) * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(idx)
    bad_step = int(first_bad)  # the epoch's host syncs: this, the state check and the loss
    train_seconds = time.perf_counter() - t0
    where = f"({cfg.model}/{cfg.method}, lr {lr_at(cfg, epoch):g})"
    if bad_step >= 0:
        raise NonFiniteLoss(f"non-finite training loss at epoch {epoch}, step {bad_step} {where}; the run stops here")
    bad_state = non_finite_state(model)
    if bad_state:
        raise NonFiniteLoss(f"non-finite values in {', '.join(bad_state[:5])}" + (" ..." if len(bad_state) > 5 else "")
                            + f" after epoch {epoch} {where} although the loss stayed finite; the run stops here")
    mean_loss = float(loss_sum) / max(seen, 1)
    if mean_loss > DIVERGED_LOSS:
        raise NonFiniteLoss(f"training diverged at epoch {epoch}: mean loss {mean_loss:.3g} > {DIVERGED_LOSS:g} "
                            f"{where}; the run stops here")
    return {"epoch": epoch, "lr": lr_at(cfg, epoch), "train_loss": mean_loss, "train_acc": int(correct) / max(seen, 1),
            "images": seen, "train_seconds": train_seconds}


def validate(ctx: Context, fwd: nn.Module, epoch: int, tb=None) -> dict[str, float]:
    """The epoch's validation accuracy (and, where the protocol tracks it, balanced test accuracy)."""
    cfg, row = ctx.cfg, {}
    if ctx.val is not None:
        vlog = ctx.predict(fwd, ctx.val)
        row["val_top1"] = top1(vlog, ctx.val.labels)
        row["val_balanced_acc"] = balanced_top1(vlog, ctx.val.labels, ctx.ds.num_classes)
        if tb is not None:
            for g, acc in _group_accuracy(vlog, ctx.val.labels, ctx.ds.train_counts).items():
                tb.add_scalar(f"val/{g}", acc, epoch)
    if cfg.track_test and _test_epoch(cfg, epoch):  # for the labelled best-epoch-on-test number; never selects
        row["test_top1"] = top1(ctx.predict(fwd, ctx.tests["balanced"]), ctx.tests["balanced"].labels)
    return row


def _log_scalars(tb, row: dict[str, Any], epoch: int) -> None:
    for key in ("train_loss", "train_acc", "lr", "val_top1", "val_balanced_acc", "test_top1", "seconds"):
        if key in row:
            tb.add_scalar({"seconds": "time/epoch_seconds"}.get(key, f"{key.split('_')[0]}/{key}"), row[key], epoch)
    tb.flush()


def train_model(ctx: Context, model: nn.Module, ckpt_dir: Path | None, progress: bool = True) -> Fitted:
    """Train ``model`` per ``ctx.cfg``, checkpointing every epoch into ``ckpt_dir`` and resuming from it.

    Leaves the selected weights in ``model`` (best validation epoch, or the last) and
    returns them with the per-epoch history.
    """
    from tqdm.auto import tqdm

    cfg, device = ctx.cfg, ctx.device
    loss_fn = create_loss(cfg.loss, ctx.ds.train_counts, **cfg.loss_params).to(device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters(), device)
    fwd = maybe_compile(model, cfg, device)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val": -1.0, "epoch": -1, "state": None}
    start, launch = 0, 1  # launch: 1 for a fresh run, +1 each time it resumes (shown in history.csv)
    last = ckpt_dir / LAST if ckpt_dir else None
    if last is not None and last.exists():
        start, history, best, launch = load_last(last, cfg, model, opt)
    gen = torch.Generator(device=device)
    tb = _tensorboard(cfg, ckpt_dir, start)
    bar = tqdm(range(start, cfg.epochs), desc=f"{cfg.model}/{cfg.method}/seed{cfg.seed}", disable=not progress,
               initial=start, total=cfg.epochs, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        row = train_one_epoch(ctx, model, fwd, loss_fn, opt, gen, epoch)
        row["launch"] = launch
        row.update(validate(ctx, fwd, epoch, tb))
        if cfg.select == "best_val" and "val_top1" in row and row["val_top1"] > best["val"]:
            best = {"val": row["val_top1"], "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if tb is not None:
            _log_scalars(tb, row, epoch)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k in ("train_loss", "train_acc", "val_top1")})
        if last is not None:
            save_last(last, cfg, model, opt, epoch, history, best, launch)
    bar.close()
    if tb is not None:
        tb.close()
    if cfg.select == "best_val" and best["state"] is not None:
        model.load_state_dict(best["state"])
    selected = best["epoch"] if cfg.select == "best_val" else cfg.epochs - 1
    return Fitted(model, pd.DataFrame(history), int(selected))
