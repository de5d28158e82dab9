"""Uncertainty: bootstrap intervals within a run, t-intervals across seeds, paired differences.

A single-seed comparison of losses on a 38-image tail group cannot tell
noise from effect; these helpers put a width on every number the book shows.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


def bootstrap_accuracy_ci(correct: np.ndarray, labels: np.ndarray | None = None, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy over test images (Efron & Tibshirani 1993).

    With ``labels`` the resampling is stratified by class (each class's images
    resampled within the class), which keeps a balanced test set balanced.
    """
    correct = np.asarray(correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if labels is None:
        idx = rng.integers(0, len(correct), (n_boot, len(correct)))
        accs = correct[idx].mean(1)
    else:
        labels = np.asarray(labels)
        sums = np.zeros(n_boot)
        for c in np.unique(labels):
            cc = correct[labels == c]
            sums += cc[rng.integers(0, len(cc), (n_boot, len(cc)))].sum(1)
        accs = sums / len(correct)
    a = (1 - level) / 2
    return float(np.quantile(accs, a)), float(np.quantile(accs, 1 - a))


def t_interval(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean: mean ± t_{n-1, 1-a/2} · s / sqrt(n)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    m = float(v.mean())
    if n < 2:
        return m, float("nan"), float("nan")
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over paired seeds with its t-interval; ``significant`` if it excludes 0."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    m, lo, hi = t_interval(d, level)
    return {"diff": m, "low": lo, "high": hi, "n": len(d),
            "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0))}


def bootstrap_difference(correct_a: np.ndarray, correct_b: np.ndarray, labels: np.ndarray, n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of the accuracy difference of two models on the same test images."""
    d = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)
    lo, hi = bootstrap_accuracy_ci(d, labels, n_boot=n_boot, level=level, seed=seed)
    return {"diff": float(d.mean()), "low": lo, "high": hi, "n": 1, "significant": bool(lo > 0 or hi < 0)}
