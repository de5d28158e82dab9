"""How a run obtains its model (``PROCEDURES`` registry), each one function returning a :class:`Fitted`.

Stage one (trains from the data with the run's loss):

* ``train``: the stage-one loop of :mod:`ltkit.training.loop` (every plain run);
* ``two_expert``: one model for the frequent half of the classes and one for the rare half, combined by
  standardised logits (the sibling report's head/tail split); costs two trainings.

Stage two (starts from the stage-one run named by ``stage1``, same grid and seed, reading its ``final.pt``):

* ``la_posthoc``: post-hoc logit adjustment, z_j - tau * log pi_j (Menon et al. 2021, Eq. 8);
* ``tau_norm``: classifier weights w_j / ||w_j||^tau (Kang et al. 2020, Eq. 5);
* ``crt``: classifier re-training on frozen features with class-balanced sampling (Kang et al. 2020);
* ``lws``: learnable weight scaling, logits_j = f_j * (w_j . x + b_j), only f trained (Kang et al. 2020);
* ``las``: MiSLAS's stage two: the classifier and a scale per class trained with label-aware smoothing while
  the backbone's BatchNorm statistics shift to the class-balanced batches (Zhong et al. 2021).

tau (for ``la_posthoc`` and ``tau_norm``) is chosen on the validation split by
balanced accuracy; the test split is only read for the final evaluation. A
procedure's own parameters (tau, lr, augment, head_fraction) are the config's
``procedure_params``, checked against the function's signature.

Each entry is the procedure itself: short orchestration over :mod:`.stage_two` (loading a stage one,
choosing tau, re-training a head) and :mod:`.experts`, imported when the procedure runs, so that the
registry (what :func:`ltkit.training.check.make_config` checks a configuration against) imports no
torch. Adding a procedure is one function and one ``@PROCEDURES.register`` line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.registry import Registry

if TYPE_CHECKING:
    from .engine import Context, Fitted


@dataclass(frozen=True)
class ProcedureSpec:
    """``stage``: 1 trains from the data, 2 starts from a stage-one run's checkpoint (the config's
    ``stage1``); ``trainings``: the full trainings it costs itself (its cost column in the book);
    ``label``: its name in tables and sentences; ``paper``: where it comes from."""

    stage: int
    trainings: int
    label: str
    paper: str


PROCEDURES: Registry[ProcedureSpec] = Registry("procedure", ProcedureSpec)


def is_stage_two(procedure: object) -> bool:
    """Whether ``procedure`` (a run's recorded procedure; anything else, a missing value included, is not) names a
    stage-two procedure: one that starts from a stage-one run's checkpoint."""
    return isinstance(procedure, str) and procedure in PROCEDURES and PROCEDURES.info(procedure).stage == 2


@PROCEDURES.register("train", stage=1, trainings=1, label="training", paper="the recipe of the run's protocol")
def train(ctx: Context, ckpt_dir: Path | None, progress: bool = True) -> Fitted:
    """Stage one: train the run's model with its loss; ``final.pt`` is what stage-two runs start from."""
    from .checkpoint import save_final
    from .engine import build_model
    from .loop import train_model

    cfg = ctx.cfg
    fit = train_model(ctx, build_model(cfg, ctx.ds.num_classes).to(ctx.device), ckpt_dir, progress)
    if ckpt_dir is not None:
        save_final(ckpt_dir, cfg, fit.model)
    return fit


@PROCEDURES.register("la_posthoc", stage=2, trainings=0, label="post-hoc LA", paper="Menon et al. 2021, Eq. 8")
def la_posthoc(ctx: Context, ckpt_dir: Path | None, progress: bool = True, tau: float | None = None) -> Fitted:
    """Post-hoc logit adjustment of the stage one's logits, z - tau log pi."""
    from .stage_two import fitted, load_stage1, log_prior, need_val, pick_tau, posthoc_adjust

    model = load_stage1(ctx, ckpt_dir)
    lp = log_prior(ctx)
    table = None
    if tau is None:
        need_val(ctx)
        vlog = ctx.predict(model, ctx.val)
        tau, table = pick_tau(ctx, lambda t: posthoc_adjust(vlog, lp, t))
    return fitted(model, [], tau=tau, tau_search=table, logit_fn=lambda z: posthoc_adjust(z, lp, tau))


@PROCEDURES.register("crt", stage=2, trainings=0, label="cRT", paper="Kang et al. 2020 (cRT)")
def crt(ctx: Context, ckpt_dir: Path | None, progress: bool = True, lr: float = 0.1,
        augment: bool | None = None) -> Fitted:
    """Classifier re-training: a fresh classifier on the frozen stage-one backbone, class-balanced sampling."""
    from ..models import get_classifier, set_classifier
    from .stage_two import feature_source, fitted, load_stage1, tracked_test_top1, train_head

    model = load_stage1(ctx, ckpt_dir)
    features, how = feature_source(ctx, model, augment)
    old = get_classifier(model, ctx.cfg.model)
    new = type(old)(old.in_features, old.out_features).to(ctx.device)  # Linear or NormedLinear, fresh
    rows = train_head(ctx, features, new, new.parameters(), ctx.cfg.stage2_epochs, lr,
                      track=tracked_test_top1(ctx, model, new))
    set_classifier(model, ctx.cfg.model, new)
    return fitted(model.eval(), rows, features=how)


@PROCEDURES.register("tau_norm", stage=2, trainings=0, label="τ-norm", paper="Kang et al. 2020, Eq. 5")
def tau_norm(ctx: Context, ckpt_dir: Path | None, progress: bool = True, tau: float | None = None) -> Fitted:
    """tau-normalised classifier weights, w_j / ||w_j||^tau (the bias dropped, as Kang et al. do)."""
    import torch

    from .engine import features_and_logits
    from .stage_two import fitted, linear_weight, load_stage1, need_val, pick_tau, tau_normalise

    model = load_stage1(ctx, ckpt_dir)
    clf = linear_weight(model, ctx.cfg.model)
    w0, b0 = clf.weight.detach().clone(), None if clf.bias is None else clf.bias.detach().clone()
    table = None
    if tau is None:
        need_val(ctx)
        feats_val, _ = features_and_logits(ctx, model, ctx.val)
        tau, table = pick_tau(ctx, lambda t: feats_val @ tau_normalise(w0, t).T)
    with torch.no_grad():
        clf.weight.copy_(tau_normalise(w0, tau))
        if b0 is not None:
            clf.bias.zero_()  # Kang et al. drop the bias with tau-normalisation
    return fitted(model, [], tau=tau, tau_search=table)


@PROCEDURES.register("lws", stage=2, trainings=0, label="LWS", paper="Kang et al. 2020 (LWS)")
def lws(ctx: Context, ckpt_dir: Path | None, progress: bool = True, lr: float = 0.1,
        augment: bool | None = None) -> Fitted:
    """Learnable weight scaling: one scale f_j per class on the frozen classifier."""
    import torch
    from torch import nn

    from ..models import get_classifier, set_classifier
    from .stage_two import Scaled, feature_source, fitted, load_stage1, tracked_test_top1, train_head

    model = load_stage1(ctx, ckpt_dir)
    features, how = feature_source(ctx, model, augment)
    clf = get_classifier(model, ctx.cfg.model)
    for p in clf.parameters():
        p.requires_grad_(False)
    scale = nn.Parameter(torch.ones(ctx.ds.num_classes, device=ctx.device))
    head = Scaled(clf, scale)  # trained on the backbone's features, then put in the model as its classifier
    rows = train_head(ctx, features, head, [scale], ctx.cfg.stage2_epochs, lr, track=tracked_test_top1(ctx, model, head))
    set_classifier(model, ctx.cfg.model, head)
    return fitted(model.eval(), rows, scales=scale.detach().cpu().numpy().round(4).tolist(), features=how)


@PROCEDURES.register("las", stage=2, trainings=0, label="LAS + shifted BN",
                     paper="Zhong et al. 2021 (MiSLAS's stage two)")
def las(ctx: Context, ckpt_dir: Path | None, progress: bool = True, lr: float = 0.1, smooth_head: float = 0.4,
        smooth_tail: float = 0.1, concave: bool = True, shift_bn: bool = True, classifier_lr_factor: float = 0.2,
        weight_decay: float = 2e-4) -> Fitted:
    """MiSLAS's stage two: the stage one's classifier, kept and trained further, times one learnable scale per
    class (as LWS), on class-balanced batches of augmented images with label-aware smoothing (``smooth_head`` for
    the most frequent class down to ``smooth_tail`` for the rarest, concave in the count: the values and the
    shape of MiSLAS's released CIFAR-100 stage two), while the frozen backbone's BatchNorm statistics follow those
    batches (``shift_bn``). SGD with a cosine schedule over the stage's epochs, the scales at ``lr``, the classifier
    at ``classifier_lr_factor`` x ``lr``, weight decay ``weight_decay``: the released config's values."""
    import torch
    from torch import nn

    from ..models import get_classifier, set_classifier
    from .stage_two import (
        Scaled,
        feature_source,
        fitted,
        label_aware_epsilon,
        label_aware_smoothing,
        load_stage1,
        tracked_test_top1,
        train_head,
    )

    for name, value in (("smooth_head", smooth_head), ("smooth_tail", smooth_tail)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"procedure_params.{name} = {value!r} (accepted: 0 <= value < 1, the target mass taken "
                             "off the true class)")
    model = load_stage1(ctx, ckpt_dir)
    features, how = feature_source(ctx, model, True, shift_bn=shift_bn)
    clf = get_classifier(model, ctx.cfg.model)
    scale = nn.Parameter(torch.ones(ctx.ds.num_classes, device=ctx.device))
    head = Scaled(clf, scale)
    eps = label_aware_epsilon(ctx.ds.train_counts, smooth_head, smooth_tail, concave)
    groups = [{"params": list(clf.parameters()), "lr": classifier_lr_factor * lr}, {"params": [scale], "lr": lr}]
    rows = train_head(ctx, features, head, groups, ctx.cfg.stage2_epochs, lr,
                      loss_fn=lambda z, y: label_aware_smoothing(z, y, eps), weight_decay=weight_decay,
                      track=tracked_test_top1(ctx, model, head))
    set_classifier(model, ctx.cfg.model, head)
    return fitted(model.eval(), rows, scales=scale.detach().cpu().numpy().round(4).tolist(), features=how,
                  smoothing={"head": smooth_head, "tail": smooth_tail, "shape": "concave" if concave else "linear"})


@PROCEDURES.register("two_expert", stage=1, trainings=2, label="two experts",
                     paper="head / tail experts (the sibling report)")
def two_expert(ctx: Context, ckpt_dir: Path | None, progress: bool = True, head_fraction: float = 0.5) -> Fitted:
    """Train a head expert and a tail expert (the run's loss each, same recipe as a stage-one run) and
    combine them. Within each half the imbalance factor is roughly the square root of the whole's,
    which is the idea; the price is two trainings, recorded in the run's metrics."""
    import pandas as pd

    from ..data import restrict_classes
    from .engine import Fitted, build_model, make_context
    from .experts import TwoExpert, frequency_halves
    from .loop import train_model

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
