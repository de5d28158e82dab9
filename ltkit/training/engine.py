"""What the stage-one loop and the stage-two methods share: device, data on the device, the model,
prediction, features and evaluation.

GPU fast path: the split sits on the device as uint8 and is normalised there in
large batches (:mod:`ltkit.data.loader`); bf16 autocast and channels_last on CUDA;
``torch.compile`` when it pays. The CPU path runs the same code.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config.fields import RunConfig
from ..core.hardware import resolve_precision
from ..data import PROTOCOLS, LTDataset, load_dataset
from ..data.loader import DeviceSplit, batches, to_float
from ..metrics import BEST_EPOCH_ON_TEST, EPOCHS, SELECTED_EPOCH, VAL_SELECTED, evaluate_predictions
from ..models import MODELS, create_model, get_classifier, set_classifier
from ..models.cifar import NormedLinear
from ..runs.records import RunResult


@dataclass
class Fitted:
    """A trained model and how it got there: what :func:`evaluate_model` needs besides the data.

    The stage-one loop (:func:`ltkit.training.loop.train_model`) and every stage-two method
    (:mod:`ltkit.training.procedures`) return one. ``selected_epoch`` is the history row whose
    weights the model holds (best validation epoch or the last); ``extra`` goes to
    provenance (tau, scales, ...); ``logit_fn`` post-processes test logits (post-hoc
    logit adjustment).
    """

    model: nn.Module
    history: pd.DataFrame
    selected_epoch: int
    extra: dict[str, Any] = field(default_factory=dict)
    logit_fn: Callable[[torch.Tensor], torch.Tensor] | None = None


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
    extra = {"val_per_class": cfg.val_per_class, "test_imb_factor": cfg.test_imb_factor,  # each protocol takes its own
             "subset_seed": cfg.subset_seed}
    return load_dataset(cfg.dataset, cfg.protocol, imb_factor=cfg.imb_factor, imb_type=cfg.imb_type,
                        root=cfg.data_root, split_seed=cfg.split_seed, source_kwargs=cfg.source_params, **extra)


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The run's model; ``cfg.classifier == 'cosine'`` gives every backbone Cao et al.'s normalised classifier."""
    normed = cfg.classifier == "cosine"
    kwargs = dict(cfg.model_params)
    if MODELS.info(cfg.model).family == "cifar":
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
        return PROTOCOLS.info(cfg.protocol).recipe["norm"]
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
    # bf16 autocast + channels_last (oneDNN's and cuDNN's fast layout for bf16 convolutions): ltkit.core.hardware
    bf16 = resolve_precision(cfg.precision, device.type) == "bf16"
    return Context(cfg, ds, device, dev(ds.train), dev(ds.val), {k: dev(v) for k, v in ds.tests.items()},
                   torch.tensor(mean, **stat).view(1, 3, 1, 1), torch.tensor(std, **stat).view(1, 3, 1, 1),
                   amp=bf16, channels_last=bf16 or device.type == "cuda")


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


def evaluate_model(ctx: Context, fitted: Fitted) -> RunResult:
    """Test-set predictions, metrics with intervals and the per-class table of a fitted model."""
    cfg, ds, history = ctx.cfg, ctx.ds, fitted.history
    preds, labels = {}, {}
    for name, split in ctx.tests.items():
        logits = ctx.predict(fitted.model, split)
        if fitted.logit_fn is not None:
            logits = fitted.logit_fn(logits)
        preds[name] = logits.argmax(1).cpu().numpy()
        labels[name] = split.labels_np
    metrics, table = evaluate_predictions(preds, labels, ds.groups(), ds.train_counts, ds.classes, cfg.bootstrap)
    sel = fitted.selected_epoch
    metrics[SELECTED_EPOCH] = int(sel)
    metrics[EPOCHS] = int(cfg.epochs)
    if "val_top1" in history and len(history):
        metrics[VAL_SELECTED] = float(history["val_top1"].iloc[sel]) if 0 <= sel < len(history) else math.nan
    if "test_top1" in history and len(history):
        # Labelled comparison number: what codebases that pick the best epoch on the test set report.
        metrics[BEST_EPOCH_ON_TEST] = float(history["test_top1"].max())
        metrics["best_epoch_on_test"] = int(history["test_top1"].idxmax())
    mean, std = normalisation(cfg, ds)
    return RunResult(cfg, metrics, table, history, preds, labels,
                     {"sizes": ds.sizes(), "train_counts": ds.train_counts.tolist(), "classes": ds.classes,
                      "meta": ds.meta, "normalization": {"kind": cfg.normalization, "mean": list(mean), "std": list(std)},
                      "classifier": cfg.classifier, "weights": MODELS.info(cfg.model).weights if cfg.pretrained
                      else None},
                     extra={"train_seconds_total": float(history["seconds"].sum()) if "seconds" in history else 0.0,
                            **fitted.extra})
