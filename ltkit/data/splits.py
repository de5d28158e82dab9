"""The split arithmetic: which images of a pool each split of each protocol takes, in one place.

Pure NumPy on labels and class sizes (no pixels), so the datasets
(:mod:`ltkit.data`), one's own folders (:mod:`ltkit.data.folder`), the packed GPU
subsets and the grid runner's counts-only planning all call the same
functions and cannot drift apart.

* long-tailed counts (:func:`lt_counts`) and class groups (index thirds, shot groups);
* ``thesis``: Midtgaard (2025), section 3.2.3 (:func:`thesis_indices`);
* ``cao2019``: Cao et al. (2019), their own draw (:func:`cao2019_ranks`, :func:`cao2019_indices`);
* ``natural`` and ``folder``: a data set's own imbalance (:func:`natural_indices`, :func:`holdout_indices`).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from ..core.registry import choice_error

IMBALANCE_TYPES = ("exp", "step")


class DataError(RuntimeError):
    """Missing, corrupt or unusable data; the message says where and what to do."""


def lt_counts(n_max: int, num_classes: int, imb_factor: float, imb_type: str = "exp", min_count: int = 0) -> np.ndarray:
    """Per-class counts of a long-tailed split.

    ``exp`` (Cui et al. 2019; Cao et al. 2019): n_i = floor(n_max * IF^(-i/(K-1))).
    ``step`` (Buda et al. 2018; Cao et al. 2019): the first half of the classes keep
    n_max, the rest get floor(n_max / IF). ``min_count`` floors every class (the
    thesis's LT test set keeps at least one image per class). IF = 1 is balanced.
    """
    if imb_type not in IMBALANCE_TYPES:
        raise choice_error("imbalance type", imb_type, IMBALANCE_TYPES)
    if not (isinstance(imb_factor, (int, float)) and math.isfinite(imb_factor) and imb_factor >= 1):
        raise ValueError(f"imbalance factor must be a number >= 1, got {imb_factor!r}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    i = np.arange(num_classes)
    if imb_type == "exp":
        counts = np.floor(n_max * np.power(float(imb_factor), -i / (num_classes - 1)) + 1e-9).astype(int)
    else:
        counts = np.where(i < num_classes // 2, n_max, int(n_max // imb_factor))
    counts = np.maximum(counts, min_count)
    if (counts < 1).any():
        bad = int(np.argmax(counts < 1))
        raise ValueError(
            f"imbalance factor {imb_factor} with n_max {n_max} leaves class {bad} with zero images; "
            f"use an imbalance factor <= {n_max}"
        )
    return counts


def thirds(num_classes: int) -> dict[str, np.ndarray]:
    """Head / middle / tail by class index: 0-32 / 33-65 / 66-99 for K = 100 (thesis 3.2.3)."""
    a, b = num_classes // 3, (2 * num_classes) // 3
    idx = np.arange(num_classes)
    return {"head": idx < a, "middle": (idx >= a) & (idx < b), "tail": idx >= b}


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Many (>100) / medium (20-100) / few (<20) training images (Liu et al. 2019, OLTR)."""
    c = np.asarray(train_counts)
    return {"many": c > 100, "medium": (c >= 20) & (c <= 100), "few": c < 20}


def class_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    return {**thirds(len(train_counts)), **shot_groups(train_counts)}


def per_class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Indices of each class in source order (CIFAR's official order within a class)."""
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def check_counts(counts: np.ndarray, what: str) -> None:
    if (counts < 1).any():
        raise ValueError(f"{what}: class {int(np.argmin(counts))} would have zero images")


THESIS_TEST_FRACTION = 0.1  # 450 / 50 of CIFAR-100's 500 training images per class (thesis 3.2.3)


def _thesis_n_test(class_size: int, test_fraction: float) -> int:
    return int(round(class_size * test_fraction))


def thesis_counts(class_sizes: list[int] | np.ndarray, imb_factor: float = 100, imb_type: str = "exp",
                  test_fraction: float = THESIS_TEST_FRACTION) -> np.ndarray:
    """The thesis's LT training counts: n_max = class 0's train part (450 for CIFAR-100), then :func:`lt_counts`."""
    n0 = int(class_sizes[0])
    return lt_counts(n0 - _thesis_n_test(n0, test_fraction), len(class_sizes), imb_factor, imb_type)


def thesis_indices(labels: np.ndarray, k: int, imb_factor: float = 100, imb_type: str = "exp", seed: int = 42,
                   test_fraction: float = THESIS_TEST_FRACTION, test_imb_factor: float = 100) -> dict[str, np.ndarray]:
    """Which training-pool images each split of the thesis protocol takes (Midtgaard 2025, section 3.2.3).

    Each class's images are split, seeded and stratified, into (1 - f) train / f test;
    the LT train set takes the first n_i of each class's train part, the LT test set the
    first max(1, floor(n_test * IF_test^(-i/(K-1)))) of its test part.
    """
    rng = np.random.default_rng(seed)
    per_class = per_class_indices(labels, k)
    train_parts, test_parts = [], []
    for idx in per_class:
        perm = idx[rng.permutation(len(idx))]
        n_test = _thesis_n_test(len(idx), test_fraction)
        test_parts.append(perm[:n_test])
        train_parts.append(perm[n_test:])
    train_counts = thesis_counts([len(p) for p in per_class], imb_factor, imb_type, test_fraction)
    lt_test_counts = lt_counts(len(test_parts[0]), k, test_imb_factor, "exp", min_count=1)
    return {"train": np.concatenate([p[:n] for p, n in zip(train_parts, train_counts, strict=True)]),
            "balanced": np.concatenate(test_parts),
            "lt": np.concatenate([p[:n] for p, n in zip(test_parts, lt_test_counts, strict=True)]),
            "train_counts": train_counts}


CAO2019_SEED = 0  # ``IMBALANCECIFAR10(rand_number=0)`` in Cao et al.'s imbalance_cifar.py


def cao2019_ranks(class_sizes: list[int] | np.ndarray, seed: int = CAO2019_SEED) -> list[np.ndarray]:
    """Each class's images in the order Cao et al.'s ``gen_imbalanced_data`` draws them.

    Their code seeds NumPy's legacy global generator (``np.random.seed(0)``), then,
    class by class in label order, ``np.random.shuffle``s the positions of the
    class's images and keeps the first n_i. A shuffle's permutation depends only
    on the generator state and the array's length, so the ranks drawn here (rank
    r = the class's r-th image in the official order) pick the same images from
    torchvision's files or from an npz that keeps each class's official order.
    Returns the full permutation of every class: the first n_i ranks are the
    training subset, the next ones are unused images (our validation split).
    """
    rs = np.random.RandomState(seed)
    out = []
    for size in class_sizes:
        perm = np.arange(int(size), dtype=np.int64)
        rs.shuffle(perm)
        out.append(perm)
    return out


def cao2019_counts(class_sizes: list[int] | np.ndarray, imb_factor: float = 100, imb_type: str = "exp") -> np.ndarray:
    """Cao et al.'s training counts: n_max = every image of a class (500 for CIFAR-100), then :func:`lt_counts`."""
    return lt_counts(int(min(class_sizes)), len(class_sizes), imb_factor, imb_type)


def cao2019_indices(labels: np.ndarray, k: int, imb_factor: float = 100, imb_type: str = "exp",
                    val_per_class: int = 20, seed: int = CAO2019_SEED) -> dict[str, np.ndarray]:
    """Which training-pool images the cao2019 protocol trains on (Cao et al.'s exact subset for ``seed`` 0,
    another draw of the same counts for another seed) and validates on."""
    per_class = per_class_indices(labels, k)
    n_max = min(len(p) for p in per_class)
    counts = cao2019_counts([len(p) for p in per_class], imb_factor, imb_type)
    ranks = cao2019_ranks([len(p) for p in per_class], seed)
    return {"train": np.concatenate([p[r[:n]] for p, r, n in zip(per_class, ranks, counts, strict=True)]),
            "val": np.concatenate([p[r[n:n + val_per_class]] for p, r, n in zip(per_class, ranks, counts, strict=True)]),
            "train_counts": counts, "n_max": np.asarray(n_max)}


def cao2019_subset_table(class_sizes: list[int], imb_factor: float, imb_type: str = "exp",
                         seed: int = CAO2019_SEED) -> dict:
    """The selected (class, within-class rank) list of one cao2019 setting, with its SHA256.

    The digest is over the text lines ``"<class>,<rank>"``, classes in label order and ranks ascending,
    joined by newlines: anyone can recompute it from their own subset.
    """
    counts = cao2019_counts(class_sizes, imb_factor, imb_type)
    chosen = [np.sort(r[:n]).tolist() for r, n in zip(cao2019_ranks(class_sizes, seed), counts, strict=True)]
    return {"imb_factor": imb_factor, "imb_type": imb_type, "total": int(counts.sum()), "counts": counts.tolist(),
            "sha256": ranks_digest(chosen), "ranks": chosen}


def ranks_digest(ranks: list[list[int]]) -> str:
    """SHA256 of a subset as the text lines ``"<class>,<rank>"`` (classes in label order, each class's
    within-class ranks ascending, joined by newlines): anyone can recompute it from their own subset."""
    text = "\n".join(f"{c},{r}" for c, rs in enumerate(ranks) for r in sorted(int(x) for x in rs))
    return hashlib.sha256(text.encode()).hexdigest()


def index_digest(labels: np.ndarray, idx: np.ndarray, k: int) -> str:
    """:func:`ranks_digest` of the images ``idx`` of a pool with ``labels`` (rank = position within its class
    in the pool's order), so a run's subset digest does not depend on how the pool interleaves classes."""
    chosen = set(np.asarray(idx).tolist())
    return ranks_digest([[r for r, i in enumerate(p) if int(i) in chosen] for p in per_class_indices(labels, k)])


def holdout_indices(labels: np.ndarray, k: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a seeded, stratified split of every class; each class gives
    ``max(1, round(test_fraction * n))`` images to the test part and keeps at least one."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for idx in per_class_indices(labels, k):
        perm = idx[rng.permutation(len(idx))]
        n_test = min(max(1, int(round(test_fraction * len(idx)))), len(idx) - 1)
        test_idx.append(perm[:n_test])
        train_idx.append(perm[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def natural_indices(train_labels: np.ndarray, test_labels: np.ndarray, k: int,
                    val_per_class: int = 20) -> dict[str, np.ndarray]:
    """The ``natural`` protocol's splits: the data's own imbalance, kept.

    Validation: up to ``val_per_class`` images of each class's training part, never
    more than a fifth of it. Tests: ``lt`` = the whole test part, ``balanced`` = the
    first m test images of every class, m = the smallest class's test count.
    """
    tr_parts, val_parts = [], []
    for idx in per_class_indices(train_labels, k):
        n_val = min(val_per_class, len(idx) // 5)
        val_parts.append(idx[:n_val])
        tr_parts.append(idx[n_val:])
    test_parts = per_class_indices(test_labels, k)
    m = min(len(p) for p in test_parts)
    return {"train": np.concatenate(tr_parts), "val": np.concatenate(val_parts),
            "balanced": np.concatenate([p[:m] for p in test_parts]), "lt": np.arange(len(test_labels)),
            "balanced_per_class": np.asarray(m)}


# Counts-only planning (the grid runner's CE-equivalence check): a protocol's training counts from
# the class sizes alone; ``natural`` has none (they are the data's own).
TRAIN_COUNTS = {"thesis": thesis_counts, "cao2019": cao2019_counts}


def expected_train_counts(protocol: str, class_sizes: list[int], imb_factor: float, imb_type: str) -> np.ndarray | None:
    """A run's training counts without loading an image (None for a protocol whose counts are the data's)."""
    fn = TRAIN_COUNTS.get(protocol)
    return None if fn is None else fn(class_sizes, imb_factor, imb_type)
