"""Class-sensitive losses, each built from the per-class training counts n_j.

Grouped as in the thesis's Table 3.4:

* re-weighting: weighted softmax CE (``wce``), focal (``focal``), class-balanced
  (``cb``), softmax equalization loss (``seql``), deferred re-weighting (``*_drw``);
* logit adjustment: Balanced Softmax (``bs``), logit-adjusted loss (``la``);
* re-margining: LDAM (``ldam``).

Conventions. Logits are cast to float32 (autocast gives bf16). Class weights
w_j reduce as PyTorch's ``cross_entropy(weight=w)`` does, a weighted mean
sum_i w_{y_i} l_i / sum_i w_{y_i}, so weights change the balance between
classes, not the step size; the normalisation sum_j w_j = K is stated for
reading only. Every factory is registered with an ``equivalent_to_ce(counts,
**params)`` predicate: the grid runner uses it (after a numerical check, see
:func:`check_ce_equivalence`) to run a loss that is plain CE by construction
only once.

Adding a loss is one factory and one ``@LOSSES.register`` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry


@dataclass(frozen=True)
class LossSpec:
    """What the rest of ltkit knows about a loss, beside its factory.

    ``equivalent_to_ce(counts, **params)``: is the loss plain softmax CE for these
    counts? It receives every factory parameter (defaults filled from the factory's
    signature, so no default is written twice). ``classifier``: the head the loss
    presumes (``cosine`` for LDAM, whose scale s = 30 presumes logits in [-1, 1],
    Cao et al.'s code). ``epoch_params``: parameters that are epoch numbers, set by
    default to the protocol's ``drw_frac`` of the run's length (DRW's switch epoch).
    """

    group: str
    paper: str
    equivalent_to_ce: Callable[..., bool]
    classifier: str = "linear"
    epoch_params: tuple[str, ...] = ()


LOSSES: Registry[LossSpec] = Registry("loss", LossSpec)


def _equal(counts: np.ndarray) -> bool:
    counts = np.asarray(counts)
    return bool((counts == counts[0]).all())


def _t(x: np.ndarray | list[float]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float32)


def class_balanced_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al. (2019), Eq. (4)-(5): w_j = (1 - beta) / (1 - beta^{n_j}), scaled so sum_j w_j = K.

    beta = 0 gives uniform weights; beta -> 1 approaches inverse frequency.
    """
    counts = np.asarray(counts, dtype=np.float64)
    eff = (1.0 - np.power(beta, counts)) / (1.0 - beta) if beta > 0 else np.ones_like(counts)
    w = 1.0 / eff
    return w * len(counts) / w.sum()


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """w_j proportional to 1 / n_j, scaled so sum_j w_j = K."""
    w = 1.0 / np.asarray(counts, dtype=np.float64)
    return w * len(w) / w.sum()


def _weighted_mean(per_sample: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_sample.mean()
    w = weight[target]
    return (w * per_sample).sum() / w.sum()


class LossBase(nn.Module):
    """Holds an optional class-weight buffer that deferred re-weighting can switch on."""

    def __init__(self, weight: np.ndarray | None = None) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # tracks the module's device
        self.register_buffer("weight", None if weight is None else _t(weight))

    def set_weight(self, weight: np.ndarray | None) -> None:
        self.weight = None if weight is None else _t(weight).to(self._anchor.device)

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called by the training loop at the start of every epoch."""


class SoftmaxCE(LossBase):
    """Softmax cross-entropy, L = -log softmax(z)_y, optionally class-weighted."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight)


class LogitAdjusted(LossBase):
    """L = -log softmax(z + tau * log pi)_y (Menon et al. 2021, Eq. 10).

    With tau = 1 this is Balanced Softmax (Ren et al. 2020, Eq. 4): the softmax
    of logits plus the log class prior, which makes the trained logits estimate
    the balanced posterior.
    """

    def __init__(self, counts: np.ndarray, tau: float = 1.0, weight: np.ndarray | None = None) -> None:
        super().__init__(weight)
        prior = np.asarray(counts, np.float64) / np.sum(counts)
        self.register_buffer("shift", _t(tau * np.log(prior)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.shift, target, weight=self.weight)


class Focal(LossBase):
    """L = -(1 - p_y)^gamma log p_y (Lin et al. 2017, Eq. 5); gamma = 0 is CE."""

    def __init__(self, gamma: float = 2.0, weight: np.ndarray | None = None) -> None:
        super().__init__(weight)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        mod = (1.0 - logp.exp()).clamp_min(0.0).pow(self.gamma) if self.gamma else 1.0
        return _weighted_mean(-mod * logp, target, self.weight)


class LDAM(LossBase):
    """Label-distribution-aware margin loss (Cao et al. 2019, Eq. 10).

    L = -log( e^{s(z_y - D_y)} / (e^{s(z_y - D_y)} + sum_{j != y} e^{s z_j}) ),
    D_j = C / n_j^{1/4}, C set so that max_j D_j = ``max_margin`` (0.5), scale
    s = 30 as in the authors' code, where z comes from a cosine classifier.
    """

    def __init__(self, counts: np.ndarray, max_margin: float = 0.5, s: float = 30.0,
                 weight: np.ndarray | None = None) -> None:
        super().__init__(weight)
        m = 1.0 / np.power(np.asarray(counts, np.float64), 0.25)
        m = m * (max_margin / m.max()) if max_margin > 0 else np.zeros_like(m)
        self.register_buffer("margins", _t(m))
        self.s = float(s)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        z = z - F.one_hot(target, z.shape[1]).to(z.dtype) * self.margins[target][:, None]
        return F.cross_entropy(self.s * z, target, weight=self.weight)


class SoftmaxEqualization(LossBase):
    """Softmax equalization loss (Tan et al. 2020, Eqs. 8-9, image-classification form).

    p~_y = e^{z_y} / sum_k w~_k e^{z_k},  w~_k = 1 - beta * T_lambda(f_k) * (1 - y_k),
    with f_k = n_k / N the class frequency, T_lambda(f) = 1 if f < lambda, and
    beta ~ Bernoulli(gamma) drawn per sample and class. Rare classes thus stop
    receiving discouraging gradients as negatives, most of the time.
    Defaults lambda = 3e-3, gamma = 0.9 are our choice, not tuned (Tan et al.
    ablate both in their Table 7); set them per grid entry.
    Computed in log space (log-sum-exp over the kept classes), so extreme
    logits stay finite; the target class is always kept.
    """

    def __init__(self, counts: np.ndarray, lam: float = 3e-3, gamma: float = 0.9,
                 weight: np.ndarray | None = None) -> None:
        super().__init__(weight)
        freq = np.asarray(counts, np.float64) / np.sum(counts)
        self.register_buffer("rare", torch.as_tensor(freq < lam))
        self.gamma = float(gamma)
        self.gen: torch.Generator | None = None  # None: the global stream (a packed run gets its own, same seed)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        onehot = F.one_hot(target, z.shape[1]).bool()
        beta = torch.rand(z.shape, device=z.device, generator=self.gen) < self.gamma
        drop = beta & self.rare[None, :] & ~onehot
        lse = torch.logsumexp(z.masked_fill(drop, float("-inf")), dim=1)
        nll = lse - z.gather(1, target[:, None]).squeeze(1)
        return _weighted_mean(nll, target, self.weight)


class DeferredReweighting(nn.Module):
    """DRW (Cao et al. 2019, Alg. 1): train with ``base`` unweighted, then from
    epoch ``start_epoch`` on with class-balanced weights (beta = 0.9999)."""

    def __init__(self, base: LossBase, counts: np.ndarray, start_epoch: int, beta: float = 0.9999) -> None:
        super().__init__()
        self.base, self.start_epoch = base, int(start_epoch)
        self._weights = class_balanced_weights(counts, beta)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_weight(self._weights if epoch >= self.start_epoch else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(logits, target)


# --------------------------------------------------------------------------- registry


def _reg(name: str, equivalent_to_ce: Callable[..., bool], group: str, paper: str, **spec: object):
    return LOSSES.register(name, equivalent_to_ce=equivalent_to_ce, group=group, paper=paper, **spec)


@_reg("ce", lambda counts, **p: True, "baseline", "softmax cross-entropy")
def ce(counts: np.ndarray, **_: object) -> nn.Module:
    return SoftmaxCE()


@_reg("wce", lambda counts, **p: _equal(counts), "re-weighting", "inverse-frequency weighted CE")
def wce(counts: np.ndarray, **_: object) -> nn.Module:
    return SoftmaxCE(inverse_frequency_weights(counts))


@_reg("focal", lambda counts, gamma, **p: gamma == 0, "re-weighting", "Lin et al. 2017")
def focal(counts: np.ndarray, gamma: float = 2.0, **_: object) -> nn.Module:
    return Focal(gamma)


@_reg("cb", lambda counts, beta, **p: beta == 0 or _equal(counts), "re-weighting", "Cui et al. 2019")
def cb(counts: np.ndarray, beta: float = 0.9999, **_: object) -> nn.Module:
    return SoftmaxCE(class_balanced_weights(counts, beta))


@_reg("bs", lambda counts, **p: _equal(counts), "logit adjustment", "Ren et al. 2020")
def bs(counts: np.ndarray, **_: object) -> nn.Module:
    return LogitAdjusted(counts, tau=1.0)


@_reg("la", lambda counts, tau, **p: tau == 0 or _equal(counts), "logit adjustment", "Menon et al. 2021")
def la(counts: np.ndarray, tau: float = 1.0, **_: object) -> nn.Module:
    return LogitAdjusted(counts, tau=tau)


@_reg("ldam", lambda counts, max_margin, s, **p: max_margin == 0 and s == 1, "re-margining",
      "Cao et al. 2019", classifier="cosine")
def ldam(counts: np.ndarray, max_margin: float = 0.5, s: float = 30.0, **_: object) -> nn.Module:
    return LDAM(counts, max_margin, s)


def _seql_equiv(counts: np.ndarray, lam: float, gamma: float, **_: object) -> bool:
    freq = np.asarray(counts, np.float64) / np.sum(counts)
    return gamma == 0 or bool((freq >= lam).all())


@_reg("seql", _seql_equiv, "re-weighting", "Tan et al. 2020")
def seql(counts: np.ndarray, lam: float = 3e-3, gamma: float = 0.9, **_: object) -> nn.Module:
    return SoftmaxEqualization(counts, lam, gamma)


@_reg("ce_drw", lambda counts, **p: _equal(counts), "re-weighting", "Cao et al. 2019 (DRW)",
      epoch_params=("drw_epoch",))
def ce_drw(counts: np.ndarray, drw_epoch: int = 160, beta: float = 0.9999, **_: object) -> nn.Module:
    return DeferredReweighting(SoftmaxCE(), counts, drw_epoch, beta)


@_reg("ldam_drw", lambda counts, **p: False, "re-margining", "Cao et al. 2019 (LDAM-DRW)", classifier="cosine",
      epoch_params=("drw_epoch",))
def ldam_drw(counts: np.ndarray, drw_epoch: int = 160, beta: float = 0.9999, max_margin: float = 0.5,
             s: float = 30.0, **_: object) -> nn.Module:
    return DeferredReweighting(LDAM(counts, max_margin, s), counts, drw_epoch, beta)


def create_loss(name: str, counts: np.ndarray, **params: object) -> nn.Module:
    """Build a registered loss for the given per-class training counts."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 1).any():
        raise ValueError(f"counts must be a 1-D array of >= 2 positive class sizes, got {counts!r}")
    return LOSSES.get(name)(counts, **params)


def reduces_to_ce(name: str, counts: np.ndarray, **params: object) -> bool:
    """What the loss itself says: is it plain CE for these counts and parameters (defaults filled in)?"""
    return bool(LOSSES.info(name).equivalent_to_ce(np.asarray(counts), **{**factory_defaults(name), **params}))


def factory_defaults(name: str) -> dict[str, object]:
    """The loss factory's own parameter defaults: the one place they are written."""
    sig = inspect.signature(LOSSES.get(name))
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def check_ce_equivalence(name: str, counts: np.ndarray, params: dict | None = None, trials: int = 3,
                         atol: float = 1e-5) -> bool:
    """Numerically confirm that ``name`` gives the same loss and logit gradients as CE.

    Run before the grid aliases a run to its CE twin, so a wrong
    ``equivalent_to_ce`` claim can never silently drop a training.
    """
    params = dict(params or {})
    k = len(counts)
    gen = torch.Generator().manual_seed(0)
    for _ in range(trials):
        logits = (torch.randn(64, k, generator=gen) * 5).requires_grad_(True)
        target = torch.randint(0, k, (64,), generator=gen)
        outs = []
        for loss_name, p in ((name, params), ("ce", {})):
            fn = create_loss(loss_name, counts, **p)
            for e in (0, 10**6):  # before and after any deferred switch
                if hasattr(fn, "set_epoch"):
                    fn.set_epoch(e)
                lval = fn(logits, target)
                (g,) = torch.autograd.grad(lval, logits)
                outs.append((lval.detach(), g))
        half = len(outs) // 2
        for (la_, ga), (lb, gb) in zip(outs[:half], outs[half:], strict=True):
            if not (torch.allclose(la_, lb, atol=atol) and torch.allclose(ga, gb, atol=atol)):
                return False
    return True
