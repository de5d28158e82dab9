"""Index samplers (``SAMPLERS`` registry): which training images an epoch visits, in which order.

Kang et al. (2020), Eq. 1: class j is drawn with probability p_j ∝ n_j^q (instance q = 1,
square-root q = 1/2, class-balanced q = 0), the progressive schedule of their Eq. 2, and random
over-sampling. NumPy only; every draw is seeded by (seed, epoch) so a resumed run repeats an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.registry import Registry


@dataclass(frozen=True)
class SamplerSpec:
    """``label``: its name in tables ("CE + <label>"); ``short``: the suffix of a method that is a loss with
    this sampler (``ce_cbs``); ``paper``: where it comes from."""

    label: str
    short: str
    paper: str


SAMPLERS: Registry[SamplerSpec] = Registry("sampler", SamplerSpec)


def _class_power(labels: np.ndarray, counts: np.ndarray, q: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` indices: class j with probability p_j ∝ n_j^q, then an instance uniformly."""
    p = np.power(counts.astype(np.float64), q)
    p = p / p.sum()
    return _draw(labels, counts, p, n, rng)


def _draw(labels: np.ndarray, counts: np.ndarray, p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    by_class = [np.flatnonzero(labels == c) for c in range(len(counts))]
    classes = rng.choice(len(counts), size=n, p=p)
    out = np.empty(n, np.int64)
    for c in np.unique(classes):
        where = np.flatnonzero(classes == c)
        out[where] = by_class[c][rng.integers(0, len(by_class[c]), len(where))]
    return out


@SAMPLERS.register("instance", label="instance sampling", short="is", paper="every image once per epoch")
def instance_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """Every image once per epoch in random order (q = 1, plain training)."""
    return rng.permutation(len(labels))


@SAMPLERS.register("class_balanced", label="CB sampling", short="cbs", paper="Kang et al. 2020, Eq. 1 (q = 0)")
def class_balanced_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """q = 0: every class equally likely (Kang et al. 2020, cRT's sampler)."""
    return _class_power(labels, counts, 0.0, len(labels), rng)


@SAMPLERS.register("sqrt", label="sqrt sampling", short="sqrt", paper="Mahajan et al. 2018 (q = 1/2)")
def sqrt_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """q = 1/2: square-root sampling (Mahajan et al. 2018)."""
    return _class_power(labels, counts, 0.5, len(labels), rng)


@SAMPLERS.register("progressive", label="progressive sampling", short="progressive", paper="Kang et al. 2020, Eq. 2")
def progressive_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """p(t) = (1 - t/T) p_instance + (t/T) p_class_balanced (Kang et al. 2020, Eq. 2)."""
    t = epoch / max(1, epochs - 1)
    p_ib = counts / counts.sum()
    p_cb = np.full(len(counts), 1.0 / len(counts))
    return _draw(labels, counts, (1 - t) * p_ib + t * p_cb, len(labels), rng)


@SAMPLERS.register("oversample", label="over-sampling", short="os", paper="random over-sampling")
def oversample_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """Random over-sampling: each class topped up with repeats to the largest class size."""
    n_max = int(counts.max())
    parts = []
    for c in range(len(counts)):
        idx = np.flatnonzero(labels == c)
        parts.append(np.concatenate([idx, rng.choice(idx, n_max - len(idx), replace=True)]))
    return rng.permutation(np.concatenate(parts))


def epoch_indices(name: str, labels: np.ndarray, counts: np.ndarray, epoch: int, epochs: int, seed: int) -> np.ndarray:
    """Indices for one epoch; seeded by (seed, epoch) so a resumed run draws the same."""
    rng = np.random.default_rng([seed, epoch, 7])
    return SAMPLERS.get(name)(labels, np.asarray(counts), epoch, epochs, rng)
