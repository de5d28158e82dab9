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

Adding a loss is one factory and one ``@LOSSES.register`` line (its nn.Module, where it needs one of
its own, in :mod:`ltkit.losses.modules`). This module imports no torch: planning a grid reads the
registry without it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..core.registry import Registry
from .weights import _equal, class_balanced_weights, inverse_frequency_weights

if TYPE_CHECKING:
    from torch import nn


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
    label: str  # its name in tables, legends and sentences (the thesis's abbreviation, the paper's name)
    paper: str
    equivalent_to_ce: Callable[..., bool]
    classifier: str = "linear"
    epoch_params: tuple[str, ...] = ()


LOSSES: Registry[LossSpec] = Registry("loss", LossSpec)


# --------------------------------------------------------------------------- registry


def _reg(name: str, equivalent_to_ce: Callable[..., bool], group: str, label: str, paper: str, **spec: object):
    return LOSSES.register(name, equivalent_to_ce=equivalent_to_ce, group=group, label=label, paper=paper, **spec)


# Registration order is the reading order of tables: the thesis's losses (its Table 3.4), then the
# CIFAR-LT methods. The nn.Module of each loss is in :mod:`ltkit.losses.modules` (imported when one is built).


@_reg("ce", lambda counts, **p: True, "baseline", "CE", "softmax cross-entropy")
def ce(counts: np.ndarray, **_: object) -> nn.Module:
    from .modules import SoftmaxCE

    return SoftmaxCE()


@_reg("focal", lambda counts, gamma, **p: gamma == 0, "re-weighting", "Focal", "Lin et al. 2017")
def focal(counts: np.ndarray, gamma: float = 2.0, **_: object) -> nn.Module:
    from .modules import Focal

    return Focal(gamma)


@_reg("wce", lambda counts, **p: _equal(counts), "re-weighting", "WCE", "inverse-frequency weighted CE")
def wce(counts: np.ndarray, **_: object) -> nn.Module:
    from .modules import SoftmaxCE

    return SoftmaxCE(inverse_frequency_weights(counts))


@_reg("cb", lambda counts, beta, **p: beta == 0 or _equal(counts), "re-weighting", "CB", "Cui et al. 2019")
def cb(counts: np.ndarray, beta: float = 0.9999, **_: object) -> nn.Module:
    from .modules import SoftmaxCE

    return SoftmaxCE(class_balanced_weights(counts, beta))


@_reg("bs", lambda counts, **p: _equal(counts), "logit adjustment", "BS", "Ren et al. 2020")
def bs(counts: np.ndarray, **_: object) -> nn.Module:
    from .modules import LogitAdjusted

    return LogitAdjusted(counts, tau=1.0)


def _seql_equiv(counts: np.ndarray, lam: float, gamma: float, **_: object) -> bool:
    freq = np.asarray(counts, np.float64) / np.sum(counts)
    return gamma == 0 or bool((freq >= lam).all())


@_reg("seql", _seql_equiv, "re-weighting", "SEQL", "Tan et al. 2020")
def seql(counts: np.ndarray, lam: float = 3e-3, gamma: float = 0.9, **_: object) -> nn.Module:
    from .modules import SoftmaxEqualization

    return SoftmaxEqualization(counts, lam, gamma)


@_reg("ldam", lambda counts, max_margin, s, **p: max_margin == 0 and s == 1, "re-margining", "LDAM",
      "Cao et al. 2019", classifier="cosine")
def ldam(counts: np.ndarray, max_margin: float = 0.5, s: float = 30.0, **_: object) -> nn.Module:
    from .modules import LDAM

    return LDAM(counts, max_margin, s)


@_reg("ce_drw", lambda counts, **p: _equal(counts), "re-weighting", "CE-DRW", "Cao et al. 2019 (DRW)",
      epoch_params=("drw_epoch",))
def ce_drw(counts: np.ndarray, drw_epoch: int = 160, beta: float = 0.9999, **_: object) -> nn.Module:
    from .modules import DeferredReweighting, SoftmaxCE

    return DeferredReweighting(SoftmaxCE(), counts, drw_epoch, beta)


@_reg("ldam_drw", lambda counts, **p: False, "re-margining", "LDAM-DRW", "Cao et al. 2019 (LDAM-DRW)",
      classifier="cosine", epoch_params=("drw_epoch",))
def ldam_drw(counts: np.ndarray, drw_epoch: int = 160, beta: float = 0.9999, max_margin: float = 0.5,
             s: float = 30.0, **_: object) -> nn.Module:
    from .modules import LDAM, DeferredReweighting

    return DeferredReweighting(LDAM(counts, max_margin, s), counts, drw_epoch, beta)


@_reg("la", lambda counts, tau, **p: tau == 0 or _equal(counts), "logit adjustment", "LA loss", "Menon et al. 2021")
def la(counts: np.ndarray, tau: float = 1.0, **_: object) -> nn.Module:
    from .modules import LogitAdjusted

    return LogitAdjusted(counts, tau=tau)


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
    import torch

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
