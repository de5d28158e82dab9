"""The training loop: one function, ``run(config)``, returns a run's metrics and tables.

GPU fast path: the split sits on the device as uint8 and is augmented there
in batches (:mod:`ltkit.loader`); bf16 autocast, channels_last, cuDNN
benchmark, fused optimisers and ``torch.compile`` on CUDA; the only host syncs
are at the end of an epoch (progress bar, history, NaN guard). The CPU path
runs the same code.

Reliability: after every epoch the model, optimiser, history and best-so-far
state are checkpointed atomically; re-launching the same run resumes from
the last complete epoch and, because every epoch's random draws are seeded
from (seed, epoch), ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .config import PROTOCOL_DEFAULTS, RunConfig, make_config
from .data import LTDataset, load_dataset
from .io import atomic_torch_save, atomic_write_json, run_lock
from .loader import DeviceSplit, augment, batches, epoch_indices, to_float
from .losses import create_loss
from .metrics import balanced_top1, evaluate_predictions, top1
from .models import MODELS, NormedLinear, create_model, get_classifier, set_classifier

_log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Training diverged: a NaN or infinite loss, parameter or running statistic, or an absurd loss."""


DIVERGED_LOSS = 1e6  # an epoch's mean loss above this is divergence, not learning (CE-type losses stay < ~100)


def _non_finite_state(model: nn.Module) -> list[str]:
    """Names of parameters and buffers (BatchNorm running statistics included) holding NaN or inf."""
    items = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not items:
        return []
    ok = torch.stack([torch.isfinite(v).all() for _, v in items]).tolist()  # one host sync
    return [k for (k, _), good in zip(items, ok, strict=True) if not good]


class CheckpointMismatch(RuntimeError):
    """A checkpoint belongs to another model or configuration."""


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    history: pd.DataFrame
    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    dataset: dict[str, Any]
    model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU (accepted here: auto, cpu)")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def load_data(cfg: RunConfig) -> LTDataset:
    extra = {"val_per_class": cfg.val_per_class, "test_imb_factor": cfg.test_imb_factor}  # each protocol takes its own
    return load_dataset(cfg.dataset, cfg.protocol, imb_factor=cfg.imb_factor, imb_type=cfg.imb_type,
                        root=cfg.data_root, split_seed=cfg.split_seed, source_kwargs=cfg.source_params, **extra)


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then x ``lr_decay`` at each milestone (epoch >= m)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    return cfg.lr * cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The run's model; ``cfg.classifier == 'cosine'`` gives every backbone Cao et al.'s normalised classifier."""
    normed = cfg.classifier == "cosine"
    kwargs = dict(cfg.model_params)
    if MODELS.info(cfg.model)["family"] == "cifar":
        kwargs.setdefault("normed", normed)
        return create_model(cfg.model, num_classes, pretrained=bool(cfg.pretrained), **kwargs)
    model = create_model(cfg.model, num_classes, pretrained=bool(cfg.pretrained), **kwargs)
    if normed:
        old = get_classifier(model, cfg.model)
        set_classifier(model, cfg.model, NormedLinear(old.in_features, num_classes))
    return model


def normalisation(cfg: RunConfig, ds: LTDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the run normalises with: the protocol's published constants, or the data's own."""
    if cfg.normalization == "recipe":
        return PROTOCOL_DEFAULTS[cfg.protocol]["norm"]
    return tuple(ds.mean), tuple(ds.std)


def make_optimizer(cfg: RunConfig, params, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)


def maybe_compile(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    mode = cfg.compile
    if mode == "auto":  # compiling costs ~1-2 min: worth it on CUDA for real runs, not for short checks
        mode = "on" if device.type == "cuda" and cfg.epochs >= 10 and cfg.max_steps is None else "off"
    if mode == "off":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "reduce-overhead" else None)


@torch.no_grad()
def predict(model: nn.Module, split: DeviceSplit, size: int, mean: torch.Tensor, std: torch.Tensor,
            batch_size: int, amp: bool, channels_last: bool) -> torch.Tensor:
    """Float32 logits of a whole split, large batches, no autograd."""
    model.eval()
    out = []
    for idx in batches(np.arange(len(split)), batch_size):
        x = to_float(split.images[idx], size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(split.device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(x).float())
    return torch.cat(out)


@dataclass
class Context:
    """What a training loop and the stage-two methods share."""

    cfg: RunConfig
    ds: LTDataset
    device: torch.device
    train: DeviceSplit
    val: DeviceSplit | None
    tests: dict[str, DeviceSplit]
    mean: torch.Tensor
    std: torch.Tensor
    amp: bool
    channels_last: bool

    def predict(self, model: nn.Module, split: DeviceSplit) -> torch.Tensor:
        return predict(model, split, self.cfg.image_size, self.mean, self.std, self.cfg.eval_batch_size,
                       self.amp, self.channels_last)


def make_context(cfg: RunConfig, ds: LTDataset, device: torch.device) -> Context:
    def dev(split):
        return None if split is None else DeviceSplit(split.images, split.labels, device)

    stat = {"device": device, "dtype": torch.float32}
    mean, std = normalisation(cfg, ds)
    return Context(cfg, ds, device, dev(ds.train), dev(ds.val), {k: dev(v) for k, v in ds.tests.items()},
                   torch.tensor(mean, **stat).view(1, 3, 1, 1), torch.tensor(std, **stat).view(1, 3, 1, 1),
                   amp=device.type == "cuda", channels_last=device.type == "cuda")


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
    """Many / medium / few accuracy of a split (groups by training count, :func:`ltkit.data.shot_groups`)."""
    from .data import shot_groups

    correct = (logits.argmax(1) == labels).cpu().numpy()
    lab = labels.cpu().numpy()
    return {g: float(correct[mask[lab]].mean()) for g, mask in shot_groups(counts).items() if mask[lab].any()}


def train_model(ctx: Context, model: nn.Module, ckpt_dir: Path | None, progress: bool = True) -> pd.DataFrame:
    """Train ``model`` per ``ctx.cfg``; returns the per-epoch history. Leaves the selected weights in ``model``."""
    from tqdm.auto import tqdm

    cfg, device = ctx.cfg, ctx.device
    counts = ctx.ds.train_counts
    loss_fn = create_loss(cfg.loss, counts, **cfg.loss_params).to(device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters(), device)
    fwd = maybe_compile(model, cfg, device)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val": -1.0, "epoch": -1, "state": None}
    start, launch = 0, 1  # launch: 1 for a fresh run, +1 each time it resumes (shown in history.csv)
    last = ckpt_dir / "last.pt" if ckpt_dir else None
    if last is not None and last.exists():
        start, history, best, launch = _resume(last, cfg, model, opt)
    gen = torch.Generator(device=device)
    tb = _tensorboard(cfg, ckpt_dir, start)
    bar = tqdm(range(start, cfg.epochs), desc=f"{cfg.model}/{cfg.name}/seed{cfg.seed}", disable=not progress,
               initial=start, total=cfg.epochs, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # global RNG (SEQL's Bernoulli draws, dropout)
        gen.manual_seed(cfg.seed * 100_003 + epoch)  # crop/flip draws
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch)
        model.train()
        order = epoch_indices(cfg.sampler, ctx.train.labels_np, counts, epoch, cfg.epochs, cfg.seed)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        seen = 0
        for step, idx in enumerate(batches(order, cfg.batch_size)):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
            x = augment(ctx.train.images[idx_t], cfg.image_size, ctx.mean, ctx.std, gen)
            if ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = ctx.train.labels[idx_t]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.amp):
                logits = fwd(x)
            loss = loss_fn(logits, y)
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
        if bad_step >= 0:
            raise NonFiniteLoss(f"non-finite training loss at epoch {epoch}, step {bad_step} "
                                f"({cfg.model}/{cfg.name}, lr {lr_at(cfg, epoch):g}); the run stops here")
        bad_state = _non_finite_state(model)
        if bad_state:
            raise NonFiniteLoss(f"non-finite values in {', '.join(bad_state[:5])}" + (" ..." if len(bad_state) > 5 else "")
                                + f" after epoch {epoch} ({cfg.model}/{cfg.name}, lr {lr_at(cfg, epoch):g}) although "
                                "the loss stayed finite; the run stops here")
        mean_loss = float(loss_sum) / max(seen, 1)
        if mean_loss > DIVERGED_LOSS:
            raise NonFiniteLoss(f"training diverged at epoch {epoch}: mean loss {mean_loss:.3g} > {DIVERGED_LOSS:g} "
                                f"({cfg.model}/{cfg.name}, lr {lr_at(cfg, epoch):g}); the run stops here")
        row: dict[str, Any] = {"epoch": epoch, "lr": lr_at(cfg, epoch), "train_loss": mean_loss,
                               "train_acc": int(correct) / max(seen, 1), "images": seen,
                               "train_seconds": train_seconds, "launch": launch}
        if ctx.val is not None:
            vlog = ctx.predict(fwd, ctx.val)
            row["val_top1"] = top1(vlog, ctx.val.labels)
            row["val_balanced_acc"] = balanced_top1(vlog, ctx.val.labels, ctx.ds.num_classes)
            if tb is not None:
                for g, acc in _group_accuracy(vlog, ctx.val.labels, counts).items():
                    tb.add_scalar(f"val/{g}", acc, epoch)
            if cfg.select == "best_val" and row["val_top1"] > best["val"]:
                best = {"val": row["val_top1"], "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if cfg.track_test and _test_epoch(cfg, epoch):  # for the labelled best-epoch-on-test number; never selects
            row["test_top1"] = top1(ctx.predict(fwd, ctx.tests["balanced"]), ctx.tests["balanced"].labels)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if tb is not None:
            for key in ("train_loss", "train_acc", "lr", "val_top1", "val_balanced_acc", "test_top1", "seconds"):
                if key in row:
                    tb.add_scalar({"seconds": "time/epoch_seconds"}.get(key, f"{key.split('_')[0]}/{key}"), row[key], epoch)
            tb.flush()
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k in ("train_loss", "train_acc", "val_top1")})
        if last is not None:
            atomic_torch_save(last, {"epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                                     "history": history, "best": best, "fingerprint": cfg.fingerprint(),
                                     "model_name": cfg.model, "launch": launch})
            atomic_write_json(last.with_name("progress.json"),  # for `ltkit grid status`, no checkpoint load
                              {"epoch": epoch + 1, "epochs": cfg.epochs, "launch": launch, "updated": time.time(),
                               "seconds_per_epoch": row["seconds"]})
    bar.close()
    if tb is not None:
        tb.close()
    if cfg.select == "best_val" and best["state"] is not None:
        model.load_state_dict(best["state"])
    hist = pd.DataFrame(history)
    hist.attrs["selected_epoch"] = best["epoch"] if cfg.select == "best_val" else cfg.epochs - 1
    return hist


def _resume(path: Path, cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer):
    try:  # tensors and plain types only: a checkpoint handed to you cannot run code when it is loaded
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatch(f"{path}: unreadable or not a plain-tensor checkpoint ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); it was left untouched; delete it to start the "
                                 "run afresh") from exc
    if ck.get("model_name") != cfg.model:
        raise CheckpointMismatch(f"{path}: checkpoint of model {ck.get('model_name')!r}, not {cfg.model!r}; "
                                 "it was left untouched; point the run elsewhere or delete it")
    if ck.get("fingerprint") != cfg.fingerprint():
        raise CheckpointMismatch(f"{path}: checkpoint of another configuration (fingerprint {ck.get('fingerprint')} "
                                 f"!= {cfg.fingerprint()}); it was left untouched; delete it to start afresh")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    return ck["epoch"], ck["history"], ck["best"], ck.get("launch", 1) + 1


def run(params: RunConfig | dict[str, Any], ckpt_dir: str | Path | None = None, progress: bool = True,
        keep_model: bool = False, ds: LTDataset | None = None) -> RunResult:
    """Load data, build, train (or run a stage-two method), evaluate: a whole run."""
    cfg = params if isinstance(params, RunConfig) else make_config(params)
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    # The process that trains holds the run's training lock for as long as it trains, so a killed
    # grid runner (whose notebook kernel may train on) never lets a second runner train the same run.
    with run_lock(ckpt / ".train.lock") if ckpt is not None else contextlib.nullcontext():
        return _run(cfg, ckpt, progress, keep_model, ds)


def _run(cfg: RunConfig, ckpt: Path | None, progress: bool, keep_model: bool, ds: LTDataset | None) -> RunResult:
    from .methods import STAGE2

    device = pick_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    ds = ds if ds is not None else load_data(cfg)
    ctx = make_context(cfg, ds, device)
    extra: dict[str, Any] = {}
    if cfg.loss in STAGE2:
        model, history, extra = STAGE2.get(cfg.loss)(ctx, ckpt, **cfg.loss_params)
    else:
        model = build_model(cfg, ds.num_classes).to(device)
        history = train_model(ctx, model, ckpt, progress)
        if ckpt is not None:
            atomic_torch_save(ckpt / "final.pt", {"model": model.state_dict(), "model_name": cfg.model,
                                                  "fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})
    logit_fn = extra.pop("logit_fn", None)
    trainings = extra.pop("trainings", 0 if cfg.loss in STAGE2 else 1)
    result = evaluate_model(ctx, model, history, logit_fn)
    result.extra.update(extra)
    # cost, beside the accuracy: full trainings this run did (a stage-two method reuses its stage one)
    result.metrics["trainings"] = int(trainings)  # (training seconds, not deterministic, go to provenance)
    if keep_model:
        result.model = model
    return result


def evaluate_model(ctx: Context, model: nn.Module, history: pd.DataFrame, logit_fn=None) -> RunResult:
    cfg, ds = ctx.cfg, ctx.ds
    preds, labels = {}, {}
    for name, split in ctx.tests.items():
        logits = ctx.predict(model, split)
        if logit_fn is not None:
            logits = logit_fn(logits)
        preds[name] = logits.argmax(1).cpu().numpy()
        labels[name] = split.labels_np
    metrics, table = evaluate_predictions(preds, labels, ds.groups(), ds.train_counts, ds.classes, cfg.bootstrap)
    sel = history.attrs.get("selected_epoch", len(history) - 1)
    metrics["selected_epoch"] = int(sel)
    metrics["epochs"] = int(cfg.epochs)
    if "val_top1" in history and len(history):
        metrics["val.top1_selected"] = float(history["val_top1"].iloc[sel]) if 0 <= sel < len(history) else math.nan
    if "test_top1" in history and len(history):
        # Labelled comparison number: what codebases that pick the best epoch on the test set report.
        metrics["balanced.top1_best_epoch_on_test"] = float(history["test_top1"].max())
        metrics["best_epoch_on_test"] = int(history["test_top1"].idxmax())
    mean, std = normalisation(cfg, ds)
    return RunResult(cfg, metrics, table, history, preds, labels,
                     {"sizes": ds.sizes(), "train_counts": ds.train_counts.tolist(), "classes": ds.classes,
                      "meta": ds.meta, "normalization": {"kind": cfg.normalization, "mean": list(mean), "std": list(std)},
                      "classifier": cfg.classifier, "weights": MODELS.info(cfg.model).get("weights") if cfg.pretrained
                      else None},
                     extra={"train_seconds_total": float(history["seconds"].sum()) if "seconds" in history else 0.0})


def features_and_logits(ctx: Context, model: nn.Module, split: DeviceSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (the classifier's input) and logits of a split, via a forward hook."""
    clf = get_classifier(model, ctx.cfg.model)
    feats: list[torch.Tensor] = []
    h = clf.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().float()))
    try:
        logits = ctx.predict(model, split)
    finally:
        h.remove()
    return torch.cat(feats), logits
