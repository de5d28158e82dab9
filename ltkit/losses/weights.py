"""Class weights from per-class training counts (NumPy): inverse frequency and Cui et al.'s effective number."""

from __future__ import annotations

import numpy as np


def _equal(counts: np.ndarray) -> bool:
    counts = np.asarray(counts)
    return bool((counts == counts[0]).all())


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
