"""Many small runs as one model: N stage-one runs trained together in one process.

Small CIFAR networks (ResNet-32 is 16/32/64 channels wide) leave a GPU idle:
kernel launches, not arithmetic, bound one run. Runs that share everything that
shapes the computation (data, architecture, optimiser, schedule, batch size,
epochs: :func:`ltkit.config.fields.pack_key`) are trained here as one packed model, while each keeps
what makes it a different run: seed (initial weights, sampler order, crop and flip
draws), loss, sampler and classifier head.

How: the N backbones' parameters and buffers are stacked (``torch.func.stack_module_state``)
and run by one ``vmap`` over ``functional_call``, which PyTorch executes as grouped
convolutions and batched matrix products; each run's classifier (linear, or the cosine
classifier LDAM presumes) is applied to its own slice of the features, and its loss to its
own logits. The packed loss is the sum of the runs' losses and every parameter belongs to
one run, so each run's gradients are its own, and the element-wise optimisers (SGD with
momentum, Adam) update each run exactly as they would alone.

Each run keeps its own results too: every epoch its weights and optimiser state are
written to its own checkpoint folder in the single-run format (:mod:`ltkit.training.loop`), so a
killed pack resumes (packed or alone) from where each run was; validation, selection and
the history are per run; a run that diverges stops (its error is returned) and the others
go on.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from ..config.fields import pack_key
from ..core.layout import LAST
from ..data.loader import augment, batches
from ..data.samplers import epoch_indices
from ..losses import create_loss
from ..models import MODELS, get_classifier, set_classifier
from .checkpoint import load_last, non_finite_state, save_last
from .engine import Context, Fitted, build_model, make_optimizer, seed_everything
from .loop import DIVERGED_LOSS, NonFiniteLoss, lr_at, validate
from .packing import packable

_log = logging.getLogger(__name__)


@dataclass
class _Member:
    """One run of the pack: its own context, model (the single-run layout of its weights), loss, draws."""

    ctx: Context
    ckpt: Path | None
    model: nn.Module
    head: nn.Module
    loss_fn: nn.Module
    opt: torch.optim.Optimizer  # a single-run optimiser over ``model``: its state is what checkpoints hold
    gen: torch.Generator
    loss_gen: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val": -1.0, "epoch": -1, "state": None})
    start: int = 0
    launch: int = 1
    error: Exception | None = None


def _member(ctx: Context, ckpt: Path | None) -> _Member:
    cfg = ctx.cfg
    seed_everything(cfg.seed, cfg.deterministic)  # the same initial weights as the run trained alone
    model = build_model(cfg, ctx.ds.num_classes).to(ctx.device)
    opt = make_optimizer(cfg, model.parameters(), ctx.device)
    m = _Member(ctx, ckpt, model, get_classifier(model, cfg.model),
                create_loss(cfg.loss, ctx.ds.train_counts, **cfg.loss_params).to(ctx.device), opt,
                torch.Generator(device=ctx.device), torch.Generator(device=ctx.device))
    last = ckpt / LAST if ckpt else None
    if last is not None and last.exists():
        m.start, m.history, m.best, m.launch = load_last(last, cfg, model, opt)
    if hasattr(m.loss_fn, "gen"):  # a loss that draws (SEQL) gets its run's own stream
        m.loss_fn.gen = m.loss_gen
    return m


class _Pack:
    """The stacked backbones, the heads, and the packed optimiser; moves weights between the
    packed form and each member's single-run model."""

    def __init__(self, members: list[_Member], backend: str) -> None:
        cfg = members[0].ctx.cfg
        self.members, self.backend = members, backend
        clf = MODELS.info(cfg.model).classifier
        self.clf_prefix = clf + "."
        backbones = []
        for m in members:
            bb = copy.deepcopy(m.model)
            set_classifier(bb, cfg.model, nn.Identity())
            backbones.append(bb)
        self.params, self.buffers = stack_module_state(backbones)
        self.base = copy.deepcopy(backbones[0]).to("meta")
        self.heads = nn.ModuleList([m.head for m in members])
        self.opt = make_optimizer(cfg, [*self.params.values(), *self.heads.parameters()], members[0].ctx.device)
        self._load_opt_states()

    # -- forward
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B, 3, H, W) images -> (N, B, F) features, every run through its own backbone.

        ``vmap``: one batched call (grouped convolutions): the fast path on a GPU. ``loop``: one
        call per run on views of the stacked tensors, the same kernels as a run trained alone,
        so bit-identical to it: the CPU default (a CPU is busy with one run's arithmetic anyway).
        """
        def one(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        if self.backend == "vmap":
            return torch.vmap(one, in_dims=(0, 0, 0), randomness="error")(self.params, self.buffers, x)
        return torch.stack([one({k: v[i] for k, v in self.params.items()}, {k: v[i] for k, v in self.buffers.items()},
                                x[i]) for i in range(len(self.members))])

    def train(self) -> None:
        self.base.train()
        self.heads.train()

    # -- packed <-> single-run weights and optimiser state
    def _param_map(self, i: int) -> dict[str, tuple[torch.Tensor, int | None]]:
        """Single-run parameter name -> (packed tensor, row i or None for a head's own tensor)."""
        out: dict[str, tuple[torch.Tensor, int | None]] = {k: (v, i) for k, v in self.params.items()}
        out.update({self.clf_prefix + k: (v, None) for k, v in self.heads[i].named_parameters()})
        return out

    @torch.no_grad()
    def to_member(self, i: int) -> None:
        """Write run i's packed weights and optimiser state into its single-run model and optimiser."""
        m = self.members[i]
        state = {k: v[i] for k, v in {**self.params, **self.buffers}.items()}
        state.update({self.clf_prefix + k: v for k, v in self.heads[i].state_dict().items()})
        m.model.load_state_dict(state)
        pmap = self._param_map(i)
        for name, p in m.model.named_parameters():
            packed, row = pmap[name]
            st = self.opt.state.get(packed, {})
            m.opt.state[p] = {k: (v[row].clone() if row is not None and torch.is_tensor(v) and v.dim() > 0 else
                                  v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        for g in m.opt.param_groups:
            g["lr"] = self.opt.param_groups[0]["lr"]

    @torch.no_grad()
    def _load_opt_states(self) -> None:
        """Stack the members' single-run optimiser states (after a resume) into the packed optimiser."""
        for i, m in enumerate(self.members):
            pmap = self._param_map(i)
            for name, p in m.model.named_parameters():
                st = m.opt.state.get(p)
                if not st:
                    continue
                packed, row = pmap[name]
                dst = self.opt.state.setdefault(packed, {})
                for k, v in st.items():
                    if row is None or not torch.is_tensor(v) or v.dim() == 0:
                        dst[k] = v.clone() if torch.is_tensor(v) else v
                    else:
                        if k not in dst:
                            dst[k] = torch.zeros_like(packed)
                        dst[k][row] = v


def _epoch_orders(members: list[_Member], epoch: int) -> list[np.ndarray]:
    orders = [epoch_indices(m.ctx.cfg.sampler, m.ctx.train.labels_np, m.ctx.ds.train_counts, epoch,
                            m.ctx.cfg.epochs, m.ctx.cfg.seed) for m in members]
    if len({len(o) for o in orders}) != 1:
        raise ValueError(f"packed runs need epochs of equal length, got {[len(o) for o in orders]}")
    return orders


BACKENDS = ("auto", "vmap", "loop")


def train_pack(ctxs: list[Context], ckpt_dirs: list[Path | None], progress: bool = True,
               backend: str = "auto") -> list[Fitted | Exception]:
    """Train the stage-one runs of ``ctxs`` (equal :func:`pack_key`) as one packed model.

    ``backend`` (see :meth:`_Pack.features`): ``auto`` is ``vmap`` on CUDA, ``loop`` on the CPU.

    Returns, per run, its :class:`Fitted` (selected weights in a single-run model, history,
    selected epoch) or the exception that stopped it (divergence); the others are unaffected.
    """
    from tqdm.auto import tqdm

    keys = {pack_key(c.cfg) for c in ctxs}
    if len(keys) != 1:
        raise ValueError("runs of one pack must share data, model and recipe (ltkit.config.fields.pack_key)")
    for c in ctxs:
        why = packable(c.cfg)
        if why:
            raise ValueError(f"{c.cfg.run_path()} cannot be packed: {why}")
    members = [_member(c, d) for c, d in zip(ctxs, ckpt_dirs, strict=True)]
    starts = {m.start for m in members}
    if len(starts) != 1:  # runs killed at different epochs: bring the laggards up alone first
        raise ValueError(f"packed runs must resume from the same epoch, got {sorted(starts)}")
    cfg0, ctx0 = ctxs[0].cfg, ctxs[0]
    device = ctx0.device
    if backend not in BACKENDS:
        raise ValueError(f"bad value for 'backend': {backend!r} (accepted: {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = "vmap" if device.type == "cuda" else "loop"
    pack = _Pack(members, backend)
    if cfg0.compile in ("on", "reduce-overhead"):  # opt-in: 'auto' leaves a pack eager until a GPU measures it
        pack.features = torch.compile(pack.features, mode="reduce-overhead" if cfg0.compile == "reduce-overhead"
                                      else None)
    n = len(members)
    names = ", ".join(m.ctx.cfg.method + f"/seed{m.ctx.cfg.seed}" for m in members)
    bar = tqdm(range(members[0].start, cfg0.epochs), desc=f"pack of {n} ({cfg0.model})", disable=not progress,
               initial=members[0].start, total=cfg0.epochs, unit="epoch")
    _log.info("training %d runs as one packed %s: %s", n, cfg0.model, names)
    for epoch in bar:
        t0 = time.perf_counter()
        active = [m.error is None for m in members]
        for g in pack.opt.param_groups:
            g["lr"] = lr_at(cfg0, epoch)
        for m in members:
            s = m.ctx.cfg.seed * 100_003 + epoch  # each run's streams exactly as when it trains alone
            m.gen.manual_seed(s)
            m.loss_gen.manual_seed(s)
            if hasattr(m.loss_fn, "set_epoch"):
                m.loss_fn.set_epoch(epoch)
        pack.train()
        orders = _epoch_orders(members, epoch)
        loss_sum = torch.zeros(n, device=device)
        correct = torch.zeros(n, device=device, dtype=torch.long)
        first_bad = torch.full((n,), -1, device=device, dtype=torch.long)
        seen = 0
        for step, idx0 in enumerate(batches(orders[0], cfg0.batch_size)):
            if cfg0.max_steps is not None and step >= cfg0.max_steps:
                break
            sl = slice(step * cfg0.batch_size, step * cfg0.batch_size + len(idx0))
            idx = torch.from_numpy(np.stack([o[sl] for o in orders])).to(device, non_blocking=True)
            x = torch.stack([augment(m.ctx.train.images[idx[i]], cfg0.image_size, ctx0.mean, ctx0.std, m.gen)
                             for i, m in enumerate(members)])
            y = ctx0.train.labels[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx0.amp):
                feats = pack.features(x)
                logits = [head(feats[i]) for i, head in enumerate(pack.heads)]
            losses = torch.stack([m.loss_fn(logits[i], y[i]) for i, m in enumerate(members)])
            ok = torch.isfinite(losses) & torch.tensor(active, device=device)
            pack.opt.zero_grad(set_to_none=True)
            torch.where(ok, losses, torch.zeros_like(losses)).sum().backward()
            pack.opt.step()
            ld = losses.detach()
            bad = ~torch.isfinite(ld)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            loss_sum += torch.where(bad, torch.zeros_like(ld), ld) * len(idx0)
            correct += torch.stack([(lg.detach().argmax(1) == y[i]).sum() for i, lg in enumerate(logits)])
            seen += len(idx0)
        train_seconds = time.perf_counter() - t0
        bad_steps, sums, hits = first_bad.tolist(), loss_sum.tolist(), correct.tolist()
        for i, m in enumerate(members):
            if m.error is not None:
                continue
            cfg = m.ctx.cfg
            where = f"({cfg.model}/{cfg.method}, lr {lr_at(cfg, epoch):g}, trained in a pack of {n})"
            pack.to_member(i)
            mean_loss = sums[i] / max(seen, 1)
            bad_state = non_finite_state(m.model)
            if bad_steps[i] >= 0:
                m.error = NonFiniteLoss(f"non-finite training loss at epoch {epoch}, step {bad_steps[i]} {where}; "
                                        "the run stops here, the rest of its pack goes on")
            elif bad_state:
                m.error = NonFiniteLoss(f"non-finite values in {', '.join(bad_state[:5])} after epoch {epoch} {where}; "
                                        "the run stops here, the rest of its pack goes on")
            elif mean_loss > DIVERGED_LOSS:
                m.error = NonFiniteLoss(f"training diverged at epoch {epoch}: mean loss {mean_loss:.3g} > "
                                        f"{DIVERGED_LOSS:g} {where}; the run stops here, the rest of its pack goes on")
            if m.error is not None:
                _log.error("%s", m.error)
                continue
            row: dict[str, Any] = {"epoch": epoch, "lr": lr_at(cfg, epoch), "train_loss": mean_loss,
                                   "train_acc": hits[i] / max(seen, 1), "images": seen,
                                   "train_seconds": train_seconds / n, "launch": m.launch}
            row.update(validate(m.ctx, m.model, epoch))
            if cfg.select == "best_val" and "val_top1" in row and row["val_top1"] > m.best["val"]:
                m.best = {"val": row["val_top1"], "epoch": epoch,
                          "state": {k: v.detach().clone() for k, v in m.model.state_dict().items()}}
            row["seconds"] = (time.perf_counter() - t0) / n  # the pack's epoch, shared out: its cost per run
            m.history.append(row)
            if m.ckpt is not None:
                save_last(m.ckpt / LAST, cfg, m.model, m.opt, epoch, m.history, m.best, m.launch)
        bar.set_postfix({"running": sum(m.error is None for m in members)})
    bar.close()
    out: list[Fitted | Exception] = []
    for i, m in enumerate(members):
        if m.error is not None:
            out.append(m.error)
            continue
        pack.to_member(i)
        cfg = m.ctx.cfg
        if cfg.select == "best_val" and m.best["state"] is not None:
            m.model.load_state_dict(m.best["state"])
        selected = m.best["epoch"] if cfg.select == "best_val" else cfg.epochs - 1
        out.append(Fitted(m.model, pd.DataFrame(m.history), int(selected), {"packed_with": names, "pack_size": n}))
    return out
