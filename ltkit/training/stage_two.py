"""What the stage-two procedures share: a stage one's weights, tau chosen on validation, a re-trained head.

Menon et al. (2021, Eq. 8) for post-hoc logit adjustment; Kang et al. (2020) for tau-normalisation
(Eq. 5), classifier re-training (cRT) and learnable weight scaling (LWS), with class-balanced
sampling and a cosine schedule (their section 4); Zhong et al. (2021, MiSLAS) for label-aware
smoothing and shifted batch normalisation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..core.layout import FINAL, sibling_dir
from ..data.loader import augment
from ..data.samplers import epoch_indices
from ..metrics import balanced_top1, top1
from ..models import get_classifier, set_classifier
from .checkpoint import read_final
from .engine import Context, Fitted, build_model, features_and_logits

TAU_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))


def stage1_dir(ckpt_dir: Path | None, cfg) -> Path:
    if ckpt_dir is None:
        raise RuntimeError(f"{cfg.procedure} needs the stage-one checkpoint of {cfg.stage1!r}; run it with a checkpoint dir")
    return sibling_dir(ckpt_dir, cfg.stage1)


def load_stage1(ctx: Context, ckpt_dir: Path | None) -> nn.Module:
    path = stage1_dir(ckpt_dir, ctx.cfg) / FINAL
    ck = read_final(path, ctx.cfg.stage1)  # tensors and plain values only: loading never runs code
    if ck.get("model_name") != ctx.cfg.model:
        raise RuntimeError(f"{path}: stage-one model is {ck['model_name']!r}, this run wants {ctx.cfg.model!r}")
    # the stage one's own classifier and model parameters (its config was checked when it trained)
    s1 = dataclasses.replace(ctx.cfg, classifier=ck["config"]["classifier"], model_params=ck["config"]["model_params"])
    model = build_model(s1, ctx.ds.num_classes)
    model.load_state_dict(ck["model"])
    return model.to(ctx.device).eval()


def log_prior(ctx) -> torch.Tensor:
    c = torch.as_tensor(ctx.ds.train_counts, dtype=torch.float32, device=ctx.device)
    return torch.log(c / c.sum())


def need_val(ctx) -> None:
    if ctx.val is None:
        raise RuntimeError(f"{ctx.cfg.procedure}: choosing tau needs a validation split and this data has none "
                           "(balanced cao2019 data leaves no unused images); pass procedure_params: {tau: ...}")


def pick_tau(ctx, score) -> tuple[float, pd.DataFrame]:
    rows = [{"tau": float(t), "val_balanced_acc": balanced_top1(score(float(t)), ctx.val.labels,
                                                                     ctx.ds.num_classes)} for t in TAU_GRID]
    table = pd.DataFrame(rows)
    best = float(table.loc[table["val_balanced_acc"].idxmax(), "tau"])
    return best, table


def posthoc_adjust(logits: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """z - tau * log pi; tau = 0 leaves the logits unchanged."""
    return logits - tau * log_prior


def tau_normalise(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_j / ||w_j||^tau over the rows of an (out, in) weight; tau = 0 is the identity."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)


def fitted(model: nn.Module, rows: list[dict[str, Any]], **extra: Any) -> Fitted:
    """A stage-two result: the model after its last step (no selection)."""
    logit_fn = extra.pop("logit_fn", None)
    return Fitted(model, pd.DataFrame(rows), len(rows) - 1, extra, logit_fn)


def linear_weight(model: nn.Module, name: str) -> nn.Module:
    clf = get_classifier(model, name)
    if not isinstance(clf, nn.Linear):
        raise RuntimeError(f"{name}: classifier is {type(clf).__name__}; tau-norm/LWS need a plain linear layer "
                           "(train stage one with a loss that does not use the cosine classifier)")
    return clf


def feature_source(ctx, model: nn.Module, augment_images: bool | None, shift_bn: bool = False):
    """Where the classifier's training inputs come from, per batch of training-image indices.

    Kang et al. (2020) re-train the classifier on *augmented* images passed through the frozen
    backbone (a fresh crop and flip every epoch): ``augment_images=True``, the default for the
    cao2019 protocol. ``False`` caches the un-augmented features once (one backbone pass in all,
    much cheaper on the 224-px backbones): the default elsewhere. ``shift_bn`` (Zhong et al. 2021's
    shifted batch normalisation): the backbone's BatchNorm layers run in training mode on the stage
    two's class-balanced batches, so their running statistics move to that distribution while every
    weight stays frozen; implies augmented images. Returns (function, description).
    """
    if augment_images is None:
        augment_images = ctx.cfg.protocol == "cao2019"
    if shift_bn and not augment_images:
        raise ValueError("shifted batch normalisation needs the images through the backbone (augment: true)")
    if not augment_images:
        feats, _ = features_and_logits(ctx, model, ctx.train)
        return (lambda idx, epoch: feats[idx]), "cached un-augmented features"
    clf = get_classifier(model, ctx.cfg.model)
    gen = torch.Generator(device=ctx.device)
    grabbed: list[torch.Tensor] = []
    hook = clf.register_forward_hook(lambda m, inp, out: grabbed.append(inp[0].detach().float()))

    @torch.no_grad()
    def fn(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if epoch != getattr(fn, "epoch", None):  # one seeded stream of crops and flips per epoch
            gen.manual_seed(ctx.cfg.seed * 100_003 + 50_000 + epoch)
            fn.epoch = epoch
        model.eval()
        if shift_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()  # batch statistics, and running ones that follow the balanced batches
        x = augment(ctx.train.images[idx], ctx.cfg.image_size, ctx.mean, ctx.std, gen)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grabbed.clear()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            model(x)
        return grabbed[0]

    fn.remove_hook = hook.remove
    return fn, ("augmented images through the frozen backbone, its BatchNorm statistics shifted to the balanced "
                "batches (Zhong et al. 2021)" if shift_bn else
                "augmented images through the frozen backbone (Kang et al. 2020)")


def label_aware_epsilon(counts, head: float, tail: float, concave: bool = True) -> torch.Tensor:
    """Each class's smoothing, rising with its training count from ``tail`` (the rarest class) to ``head`` (the most
    frequent): with r = (N_y - N_min) / (N_max - N_min), eps_y = tail + (head - tail) sin(pi r / 2) (concave, the
    default of MiSLAS's released code, Zhong et al. 2021) or tail + (head - tail) r (linear). The head classes, the
    most over-confident, are smoothed most."""
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    r = (n - n.min()) / (n.max() - n.min()).clamp_min(1.0)
    return tail + (head - tail) * (torch.sin(r * torch.pi / 2) if concave else r)


def label_aware_smoothing(logits: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Label-aware smoothing (Zhong et al. 2021): cross-entropy against (1 - eps_y) on the true class plus eps_y
    spread evenly over all K classes, i.e. (1 - eps_y) (-log p_y) + eps_y mean_k(-log p_k), the form of MiSLAS's
    released code; with every eps_y = 0 it is plain cross-entropy."""
    logp = F.log_softmax(logits.float(), dim=1)
    e = eps.to(logits.device)[labels]
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    return ((1 - e) * nll - e * logp.mean(1)).mean()


def tracked_test_top1(ctx, model: nn.Module, head: nn.Module):
    """Top-1 on the balanced test set of ``model`` with ``head`` in its classifier's place, for each stage-two epoch
    when the protocol tracks the test set (cao2019): the labelled comparison number, never a selection. MiSLAS's
    published 47.00 (Zhong et al. 2021) is the best of its stage-two epochs on the test set; ours is the last
    epoch's, and this puts the paper's way of counting beside it. It reads no random numbers and trains nothing
    (no autograd, eval-mode BatchNorm; a shifted-BN stage two puts its BatchNorm layers back in training mode at its
    next batch), so the head trains the same with or without it. None when the protocol does not track the test."""
    if not ctx.cfg.track_test or "balanced" not in ctx.tests:
        return None
    split, name = ctx.tests["balanced"], ctx.cfg.model

    def fn() -> float:
        old = get_classifier(model, name)
        set_classifier(model, name, head)
        try:
            return top1(ctx.predict(model, split), split.labels)
        finally:
            set_classifier(model, name, old)

    return fn


def train_head(ctx, features, head: nn.Module, params, epochs: int, lr: float, loss_fn=None,
               weight_decay: float = 5e-4, track=None) -> list[dict[str, Any]]:
    """SGD on the classifier alone, class-balanced sampling, cosine schedule (Kang et al. 2020, section 4);
    ``params``: parameters, or parameter groups each with its own ``lr``; ``loss_fn(logits, labels)``:
    cross-entropy unless given; ``track``: :func:`tracked_test_top1`'s function, read after each epoch into the row's
    ``test_top1`` (not timed: ``seconds`` stays the head's training time)."""
    loss_fn = loss_fn or F.cross_entropy
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    labels = ctx.train.labels
    rows = []
    for epoch in range(epochs):
        t0 = time.perf_counter()  # the head's training time is this run's own cost (the book's cost column)
        order = epoch_indices("class_balanced", ctx.train.labels_np, ctx.ds.train_counts, epoch, epochs, ctx.cfg.seed + 1)
        total = 0.0
        for start in range(0, len(order), ctx.cfg.batch_size):
            idx = torch.from_numpy(order[start:start + ctx.cfg.batch_size]).to(ctx.device)
            with torch.enable_grad():
                loss = loss_fn(head(features(idx, epoch)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        rows.append({"epoch": epoch, "lr": max(sched.get_last_lr()), "train_loss": total / len(order),
                     "seconds": time.perf_counter() - t0})
        if track is not None:
            rows[-1]["test_top1"] = track()
    if hasattr(features, "remove_hook"):
        features.remove_hook()
    return rows


class Scaled(nn.Module):
    """A frozen classifier followed by one learnable scale per class (LWS)."""

    def __init__(self, clf: nn.Module, scale: nn.Parameter) -> None:
        super().__init__()
        self.clf, self.scale = clf, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x) * self.scale
