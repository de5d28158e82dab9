"""The losses as torch modules: each ``forward(logits, target)``, logits cast to float32 first.

Built by the factories of :mod:`ltkit.losses.factories`; the formulas and their papers are in each
class's docstring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import class_balanced_weights


def _t(x: np.ndarray | list[float]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float32)


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
