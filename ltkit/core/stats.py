"""Uncertainty: intervals within a run, t-intervals across seeds, paired differences, multiplicity.

A single-seed comparison of losses on a 38-image tail group cannot tell
noise from effect; these helpers put a width on every number the book shows.

Within a run the test images are the sample. The thesis's long-tailed test set
gives most tail classes one image, so resampling *within each class* (a
stratified bootstrap) has no variance there and its intervals are far too
narrow (simulated coverage 0.39 for the tail). Here the strata are the classes
with at least ``MIN_STRATUM`` images in the evaluated set; the classes with
fewer are pooled into one stratum (their images resampled together). On a
balanced test set every class is its own stratum, as before; on a group of
one-image classes the scheme is a plain bootstrap of its images.

* One accuracy: Wilson's score interval (Wilson 1927) with the effective sample
  size of that stratified design, n_eff = p(1 - p) / Var(p) (Korn & Graubard
  1998); it stays sensible at 0 or 1 correct, where percentile intervals collapse.
* A paired difference of two models on the same images: a percentile bootstrap
  over the same strata, each stratum's deviations rescaled by sqrt(n_s/(n_s-1))
  (Rao & Wu 1988) so small strata are not over-confident.

``tests/test_stats.py`` checks both by simulation (coverage 0.93-0.97 on the
balanced test, the LT test and its head / middle / tail; false positives
<= 0.07 for paired comparisons under no difference).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

MIN_STRATUM = 10  # a class with fewer test images than this is pooled with the other small classes


def strata(labels: np.ndarray, min_stratum: int = MIN_STRATUM) -> np.ndarray:
    """Stratum of every image: its class if the class has >= ``min_stratum`` images here, else -1 (pooled)."""
    labels = np.asarray(labels)
    _, inv, cnt = np.unique(labels, return_inverse=True, return_counts=True)
    return np.where(cnt[inv] >= min_stratum, labels, -1)


def _stratified_variance(values: np.ndarray, labels: np.ndarray | None, min_stratum: int) -> float:
    """Unbiased variance of the mean of ``values`` under the stratified design (sum_s n_s^2 s_s^2 / n_s / n^2)."""
    n = len(values)
    s = np.zeros(n, int) if labels is None else strata(labels, min_stratum)
    var = 0.0
    for c in np.unique(s):
        v = values[s == c]
        if len(v) > 1:
            var += len(v) * v.var(ddof=1)
    return var / n**2


def accuracy_ci(correct: np.ndarray, labels: np.ndarray | None = None, level: float = 0.95,
                min_stratum: int = MIN_STRATUM) -> tuple[float, float]:
    """Wilson score interval of an accuracy with the stratified design's effective sample size."""
    correct = np.asarray(correct, dtype=np.float64)
    n = len(correct)
    if n == 0:
        return float("nan"), float("nan")
    p = float(correct.mean())
    var = _stratified_variance(correct, labels, min_stratum)
    n_eff = p * (1 - p) / var if var > 0 and 0 < p < 1 else float(n)
    z = float(_st.norm.ppf(0.5 + level / 2))
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_replicates(values: np.ndarray, labels: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0,
                         min_stratum: int = MIN_STRATUM) -> np.ndarray:
    """Bootstrap replicates of the mean of ``values`` over the strata of :func:`strata`, rescaled per stratum."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    rep = np.full(n_boot, values.mean())
    s = np.zeros(n, int) if labels is None else strata(labels, min_stratum)
    for c in np.unique(s):
        v = values[s == c]
        m = len(v)
        if m < 2:
            continue
        draws = v[rng.integers(0, m, (n_boot, m))].sum(1)
        rep += math.sqrt(m / (m - 1)) * (draws - v.sum()) / n
    return rep


def bootstrap_accuracy_ci(correct: np.ndarray, labels: np.ndarray | None = None, n_boot: int = 1000,
                          level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval from :func:`bootstrap_replicates` (kept for comparison; metrics use :func:`accuracy_ci`)."""
    rep = bootstrap_replicates(correct, labels, n_boot, seed)
    a = (1 - level) / 2
    return float(np.quantile(rep, a)), float(np.quantile(rep, 1 - a))


def t_interval(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (scipy's one-sample t), NaN bounds below two values."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    if np.all(v == v[0]):  # scipy returns NaN for zero spread; the interval is the point
        return m, m, m
    ci = _st.ttest_1samp(v, 0.0).confidence_interval(level)
    return m, float(ci.low), float(ci.high)


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over paired seeds: scipy's paired t-test, its interval and p-value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m, lo, hi = t_interval(a - b, level)
    p = float(_st.ttest_rel(a, b).pvalue) if len(a) > 1 and np.any(a - b != (a - b)[0]) else float("nan")
    if len(a) > 1 and np.all(a - b == (a - b)[0]):
        p = 1.0 if m == 0 else 0.0
    return {"diff": m, "low": lo, "high": hi, "n": len(a), "p": p,
            "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0))}


def bootstrap_difference(correct_a: np.ndarray, correct_b: np.ndarray, labels: np.ndarray, n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of the accuracy difference of two models on the same test images.

    The two-sided p-value is twice the smaller tail of the replicates at 0 (a percentile test).
    """
    d = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)
    rep = bootstrap_replicates(d, labels, n_boot, seed)
    a = (1 - level) / 2
    lo, hi = float(np.quantile(rep, a)), float(np.quantile(rep, 1 - a))
    if np.all(rep == rep[0]):
        p = 1.0 if rep[0] == 0 else 0.0
    else:
        p = float(min(1.0, 2 * min((rep <= 0).mean(), (rep >= 0).mean())))
    return {"diff": float(d.mean()), "low": lo, "high": hi, "n": 1, "p": p, "significant": bool(lo > 0 or hi < 0)}


def adjust_pvalues(p: np.ndarray | list[float], method: str = "bh") -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy's ``false_discovery_control``); NaN stays NaN.

    A table compares about 17 losses with CE at once; controlling the false discovery rate at 5%
    keeps the expected share of spurious "significant" cells at 5% or less.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = _st.false_discovery_control(np.clip(p[ok], 0, 1), method=method)
    return out
