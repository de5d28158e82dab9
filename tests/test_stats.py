"""Intervals that hold on tiny groups: coverage and false positives checked by simulation.

The design is the thesis's: a balanced test set of 50 images per class, and a
long-tailed test set of max(1, floor(50 * 100^(-i/99))) images (1,051; head /
middle / tail 844 / 169 / 38, most tail classes with one image). A "model" has
a true accuracy p_c per class falling from head to tail; each simulated test
draws every image's correctness from its class's p_c. The estimand is the
expected accuracy of the group, sum_c n_c p_c / n.
"""

import numpy as np
import pytest

from ltkit.core.stats import accuracy_ci, adjust_pvalues, bootstrap_difference, paired_difference, strata, t_interval
from ltkit.data.splits import lt_counts, thirds

K = 100
LT = lt_counts(50, K, 100, min_count=1)
BAL = np.full(K, 50)
G = thirds(K)
SETS = {"balanced": (BAL, np.ones(K, bool)), "lt": (LT, np.ones(K, bool)),
        "lt.head": (LT, G["head"]), "lt.middle": (LT, G["middle"]), "lt.tail": (LT, G["tail"])}
P_CLASS = 0.85 - 0.7 * np.arange(K) / (K - 1)  # 0.85 on the head ... 0.15 on the last class


def _design(name):
    counts, keep = SETS[name]
    labels = np.repeat(np.arange(K)[keep], counts[keep])
    return labels, P_CLASS[labels]


def test_old_stratified_bootstrap_fails_on_one_image_classes():
    """Why the strata changed: within-class resampling of one-image classes has no variance at all."""
    labels, _ = _design("lt.tail")
    assert (strata(labels) == -1).all()  # every tail class has < 10 images: one pooled stratum
    labels_bal, _ = _design("balanced")
    assert (strata(labels_bal) == labels_bal).all()  # every balanced class is its own stratum


@pytest.mark.parametrize("name", list(SETS))
def test_interval_coverage(name):
    labels, p = _design(name)
    truth = p.mean()
    rng = np.random.default_rng(2024)
    sims = 1000
    draws = rng.random((sims, len(labels))) < p
    hits = 0
    for correct in draws:
        lo, hi = accuracy_ci(correct, labels)
        hits += lo <= truth <= hi
    coverage = hits / sims
    print(f"{name}: n={len(labels)}, coverage {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97


@pytest.mark.parametrize("name", ["balanced", "lt", "lt.tail"])
def test_paired_bootstrap_false_positives(name):
    """Two models of equal skill (each image has its own difficulty q_i, both models draw from it)."""
    labels, p = _design(name)
    rng = np.random.default_rng(7)
    sims, fp = 600, 0
    for i in range(sims):
        q = np.clip(p + rng.normal(0, 0.2, len(labels)), 0, 1)
        a, b = rng.random(len(labels)) < q, rng.random(len(labels)) < q
        fp += bootstrap_difference(a, b, labels, n_boot=1000, seed=i)["significant"]
    rate = fp / sims
    print(f"{name}: false-positive rate {rate:.3f}")
    assert rate <= 0.07


def test_paired_bootstrap_finds_a_real_difference():
    labels, p = _design("balanced")
    rng = np.random.default_rng(3)
    a = rng.random(len(labels)) < np.clip(p + 0.05, 0, 1)
    b = rng.random(len(labels)) < p
    r = bootstrap_difference(a, b, labels)
    assert r["significant"] and r["low"] > 0 and r["p"] < 0.05


def test_wilson_at_the_edges():
    lo, hi = accuracy_ci(np.zeros(38), np.arange(38))  # 0 of 38 correct: not the degenerate [0, 0]
    assert lo == 0.0 and 0.05 < hi < 0.12
    lo, hi = accuracy_ci(np.ones(38), np.arange(38))
    assert np.isclose(hi, 1.0) and 0.88 < lo < 0.95


def test_scipy_t_and_paired():
    from scipy import stats

    v = np.array([0.41, 0.39, 0.44])
    m, lo, hi = t_interval(v)
    ci = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
    assert np.allclose([lo, hi], ci)
    r = paired_difference([3.0, 1.0, 5.0], [1.0, 2.0, 3.0])
    assert np.isclose(r["p"], stats.ttest_rel([3, 1, 5], [1, 2, 3]).pvalue) and not r["significant"]


def test_benjamini_hochberg():
    p = np.array([0.01, 0.04, 0.03, 0.20, np.nan])
    adj = adjust_pvalues(p)
    # BH by hand: sorted 0.01, 0.03, 0.04, 0.20 -> min over k>=i of p_(k) m / k with m = 4
    assert np.allclose(adj[:4], [0.04, 0.0533333, 0.0533333, 0.20]) and np.isnan(adj[4])
