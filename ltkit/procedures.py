"""How a run obtains its model (``PROCEDURES`` registry), each one function returning a :class:`Fitted`.

Stage one (trains from the data with the run's loss):

* ``train``: the stage-one loop of :mod:`ltkit.train` (every plain run);
* ``two_expert``: one model for the frequent half of the classes and one for the rare half, combined by
  standardised logits (the sibling report's head/tail split); costs two trainings.

Stage two (starts from the stage-one run named by ``stage1``, same grid and seed, reading its ``final.pt``):

* ``la_posthoc``: post-hoc logit adjustment, z_j - tau * log pi_j (Menon et al. 2021, Eq. 8);
* ``tau_norm``: classifier weights w_j / ||w_j||^tau (Kang et al. 2020, Eq. 5);
* ``crt``: classifier re-training on frozen features with class-balanced sampling (Kang et al. 2020);
* ``lws``: learnable weight scaling, logits_j = f_j * (w_j . x + b_j), only f trained (Kang et al. 2020).

tau (for ``la_posthoc`` and ``tau_norm``) is chosen on the validation split by
balanced accuracy; the test split is only read for the final evaluation. A
procedure's own parameters (tau, lr, augment, head_fraction) are the config's
``procedure_params``, checked against the function's signature.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import read_final, save_final
from .data import restrict_classes
from .engine import Context, Fitted, build_model, features_and_logits, make_context
from .layout import FINAL, sibling_dir
from .loader import augment, epoch_indices
from .metrics import balanced_top1
from .models import get_classifier, set_classifier
from .registry import Registry
from .train import train_model


@dataclass(frozen=True)
class ProcedureSpec:
    """``stage``: 1 trains from the data, 2 starts from a stage-one run's checkpoint (the config's
    ``stage1``); ``trainings``: the full trainings it costs itself (its cost column in the book);
    ``paper``: where it comes from."""

    stage: int
    trainings: int
    paper: str


PROCEDURES: Registry[ProcedureSpec] = Registry("procedure", ProcedureSpec)


@PROCEDURES.register("train", stage=1, trainings=1, paper="the recipe of the run's protocol")
def train(ctx: Context, ckpt_dir: Path | None, progress: bool = True) -> Fitted:
    """Stage one: train the run's model with its loss; ``final.pt`` is what stage-two runs start from."""
    cfg = ctx.cfg
    fitted = train_model(ctx, build_model(cfg, ctx.ds.num_classes).to(ctx.device), ckpt_dir, progress)
    if ckpt_dir is not None:
        save_final(ckpt_dir, cfg, fitted.model)
    return fitted
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


def _log_prior(ctx) -> torch.Tensor:
    c = torch.as_tensor(ctx.ds.train_counts, dtype=torch.float32, device=ctx.device)
    return torch.log(c / c.sum())


def _need_val(ctx) -> None:
    if ctx.val is None:
        raise RuntimeError(f"{ctx.cfg.procedure}: choosing tau needs a validation split and this data has none "
                           "(balanced cao2019 data leaves no unused images); pass procedure_params: {tau: ...}")


def _pick_tau(ctx, score) -> tuple[float, pd.DataFrame]:
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


def _fitted(model: nn.Module, rows: list[dict[str, Any]], **extra: Any) -> Fitted:
    """A stage-two result: the model after its last step (no selection)."""
    logit_fn = extra.pop("logit_fn", None)
    return Fitted(model, pd.DataFrame(rows), len(rows) - 1, extra, logit_fn)


@PROCEDURES.register("la_posthoc", stage=2, trainings=0, paper="Menon et al. 2021, Eq. 8")
def la_posthoc(ctx, ckpt_dir: Path | None, progress: bool = True, tau: float | None = None):
    model = load_stage1(ctx, ckpt_dir)
    lp = _log_prior(ctx)
    table = None
    if tau is None:
        _need_val(ctx)
        vlog = ctx.predict(model, ctx.val)
        tau, table = _pick_tau(ctx, lambda t: posthoc_adjust(vlog, lp, t))
    return _fitted(model, [], tau=tau, tau_search=table, logit_fn=lambda z: posthoc_adjust(z, lp, tau))


def _linear_weight(model: nn.Module, name: str) -> nn.Module:
    clf = get_classifier(model, name)
    if not isinstance(clf, nn.Linear):
        raise RuntimeError(f"{name}: classifier is {type(clf).__name__}; tau-norm/LWS need a plain linear layer "
                           "(train stage one with a loss that does not use the cosine classifier)")
    return clf


@PROCEDURES.register("tau_norm", stage=2, trainings=0, paper="Kang et al. 2020, Eq. 5")
def tau_norm(ctx, ckpt_dir: Path | None, progress: bool = True, tau: float | None = None):
    model = load_stage1(ctx, ckpt_dir)
    clf = _linear_weight(model, ctx.cfg.model)
    w0, b0 = clf.weight.detach().clone(), None if clf.bias is None else clf.bias.detach().clone()
    feats_val = None
    table = None
    if tau is None:
        _need_val(ctx)
        feats_val, _ = features_and_logits(ctx, model, ctx.val)
        tau, table = _pick_tau(ctx, lambda t: feats_val @ tau_normalise(w0, t).T)
    with torch.no_grad():
        clf.weight.copy_(tau_normalise(w0, tau))
        if b0 is not None:
            clf.bias.zero_()  # Kang et al. drop the bias with tau-normalisation
    return _fitted(model, [], tau=tau, tau_search=table)


def _feature_source(ctx, model: nn.Module, augment_images: bool | None):
    """Where the classifier's training inputs come from, per batch of training-image indices.

    Kang et al. (2020) re-train the classifier on *augmented* images passed through the frozen
    backbone (a fresh crop and flip every epoch): ``augment_images=True``, the default for the
    cao2019 protocol. ``False`` caches the un-augmented features once (one backbone pass in all,
    much cheaper on the 224-px backbones): the default elsewhere. Returns (function, description).
    """
    if augment_images is None:
        augment_images = ctx.cfg.protocol == "cao2019"
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
        x = augment(ctx.train.images[idx], ctx.cfg.image_size, ctx.mean, ctx.std, gen)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grabbed.clear()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            model(x)
        return grabbed[0]

    fn.remove_hook = hook.remove
    return fn, "augmented images through the frozen backbone (Kang et al. 2020)"


def _train_head(ctx, features, head: nn.Module, params, epochs: int, lr: float) -> list[dict[str, Any]]:
    """SGD on the classifier alone, class-balanced sampling, cosine schedule (Kang et al. 2020, section 4)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    labels = ctx.train.labels
    rows = []
    for epoch in range(epochs):
        order = epoch_indices("class_balanced", ctx.train.labels_np, ctx.ds.train_counts, epoch, epochs, ctx.cfg.seed + 1)
        total = 0.0
        for start in range(0, len(order), ctx.cfg.batch_size):
            idx = torch.from_numpy(order[start:start + ctx.cfg.batch_size]).to(ctx.device)
            with torch.enable_grad():
                loss = F.cross_entropy(head(features(idx, epoch)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        rows.append({"epoch": epoch, "lr": sched.get_last_lr()[0], "train_loss": total / len(order)})
    if hasattr(features, "remove_hook"):
        features.remove_hook()
    return rows


@PROCEDURES.register("crt", stage=2, trainings=0, paper="Kang et al. 2020 (cRT)")
def crt(ctx, ckpt_dir: Path | None, progress: bool = True, lr: float = 0.1, augment: bool | None = None):
    """Classifier re-training: a fresh classifier on the frozen stage-one backbone, class-balanced sampling."""
    model = load_stage1(ctx, ckpt_dir)
    features, how = _feature_source(ctx, model, augment)
    old = get_classifier(model, ctx.cfg.model)
    new = type(old)(old.in_features, old.out_features).to(ctx.device)  # Linear or NormedLinear, fresh
    rows = _train_head(ctx, features, new, new.parameters(), ctx.cfg.stage2_epochs, lr)
    set_classifier(model, ctx.cfg.model, new)
    return _fitted(model.eval(), rows, features=how)


class _Scaled(nn.Module):
    """A frozen classifier followed by one learnable scale per class (LWS)."""

    def __init__(self, clf: nn.Module, scale: nn.Parameter) -> None:
        super().__init__()
        self.clf, self.scale = clf, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x) * self.scale


@PROCEDURES.register("lws", stage=2, trainings=0, paper="Kang et al. 2020 (LWS)")
def lws(ctx, ckpt_dir: Path | None, progress: bool = True, lr: float = 0.1, augment: bool | None = None):
    """Learnable weight scaling: one scale f_j per class on the frozen classifier."""
    model = load_stage1(ctx, ckpt_dir)
    features, how = _feature_source(ctx, model, augment)
    clf = get_classifier(model, ctx.cfg.model)
    for p in clf.parameters():
        p.requires_grad_(False)
    scale = nn.Parameter(torch.ones(ctx.ds.num_classes, device=ctx.device))
    head = _Scaled(clf, scale)  # trained on the backbone's features, then put in the model as its classifier
    rows = _train_head(ctx, features, head, [scale], ctx.cfg.stage2_epochs, lr)
    set_classifier(model, ctx.cfg.model, head)
    return _fitted(model.eval(), rows, scales=scale.detach().cpu().numpy().round(4).tolist(), features=how)


# --------------------------------------------------------------------------- two experts


def frequency_halves(counts: np.ndarray, head_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(head classes, tail classes): the ``head_fraction`` most frequent classes and the rest.

    Ties are broken by class index, so the split is deterministic.
    """
    if not 0 < head_fraction < 1:
        raise ValueError(f"bad value for 'head_fraction': {head_fraction} (accepted: a number in (0, 1))")
    order = np.lexsort((np.arange(len(counts)), -np.asarray(counts)))
    n_head = min(max(1, int(round(head_fraction * len(counts)))), len(counts) - 1)
    return np.sort(order[:n_head]), np.sort(order[n_head:])


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score of one expert's logits, so two experts' scores share a scale."""
    return (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True).clamp_min(1e-6)


class TwoExpert(nn.Module):
    """Two models over disjoint class sets; each one's logits are standardised per sample and
    written into the full class vector, so the arg-max picks the more confident expert."""

    def __init__(self, experts: list[nn.Module], classes: list[np.ndarray], num_classes: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        for i, c in enumerate(classes):
            self.register_buffer(f"classes{i}", torch.as_tensor(c, dtype=torch.long))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_full((x.shape[0], self.num_classes), float("-inf"), dtype=torch.float32)
        for i, expert in enumerate(self.experts):
            out[:, getattr(self, f"classes{i}")] = standardise(expert(x).float())
        return out


@PROCEDURES.register("two_expert", stage=1, trainings=2, paper="head / tail experts (the sibling report)")
def two_expert(ctx, ckpt_dir: Path | None, progress: bool = True, head_fraction: float = 0.5):
    """Train a head expert and a tail expert (the run's loss each, same recipe as a stage-one run) and
    combine them. Within each half the imbalance factor is roughly the square root of the whole's,
    which is the idea; the price is two trainings, recorded in the run's metrics."""
    cfg = ctx.cfg
    halves = frequency_halves(ctx.ds.train_counts, head_fraction)
    experts, histories, selected = [], [], []
    for name, keep in zip(("head", "tail"), halves, strict=True):
        # a plain stage-one run on its own classes (loss, classifier, schedule and sampler as configured)
        expert_cfg = dataclasses.replace(cfg, method=f"{cfg.method}_{name}", procedure="train", procedure_params={})
        sub = restrict_classes(ctx.ds, keep)
        sub_ctx = make_context(expert_cfg, sub, ctx.device)
        model = build_model(expert_cfg, sub.num_classes).to(ctx.device)
        fit = train_model(sub_ctx, model, None if ckpt_dir is None else ckpt_dir / name, progress=progress)
        experts.append(model.eval())
        selected.append(fit.selected_epoch)
        # an expert's validation / test accuracy is over its own classes only: keep it, under a name
        # that the run-level metrics (selected validation, best epoch on test) do not read
        hist = fit.history.rename(columns={c: f"expert_{c}" for c in ("val_top1", "val_balanced_acc", "test_top1")})
        histories.append(hist.assign(expert=name))
    history = pd.concat(histories, ignore_index=True)
    combined = TwoExpert(experts, list(halves), ctx.ds.num_classes).to(ctx.device).eval()
    return Fitted(combined, history, len(history) - 1, {"head_classes": halves[0].tolist(), "selected_epochs": selected})
