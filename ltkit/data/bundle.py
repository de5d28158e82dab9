"""Bundles: the images a set of runs needs, packed to travel (a lent GPU), and Cao et al.'s subset lists.

``pack_subset`` writes only the training subsets, validation images and (optionally) the test set
of the given protocols into a compressed npz pair that :mod:`ltkit.data.sources` reads like the
full data set; ``write_cao2019_subsets`` writes the (class, rank) lists of Cao et al.'s CIFAR-LT
subsets with their SHA256 for the book.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.io import atomic_write_json, sha256_file
from ..core.registry import choice_error
from .protocols import CAO2019_PUBLISHED
from .sources import _encode, load_pool
from .splits import THESIS_TEST_FRACTION, cao2019_indices, cao2019_subset_table, thesis_indices


def write_cao2019_subsets(path: str | Path) -> dict:
    """Write every published cao2019 subset as (class, within-class rank) lists with their SHA256."""
    settings = {}
    for name, k, n, imb, typ in CAO2019_PUBLISHED:
        settings[f"{name}_{typ}{imb:g}"] = {"dataset": name, "num_classes": k, "n_max": n,
                                            **cao2019_subset_table([n] * k, imb, typ)}
    doc = {"about": "Cao et al. (2019) CIFAR-LT training subsets: for each class (label order), the within-class "
                    "ranks (0 = the class's first image in the official order) of the images their "
                    "IMBALANCECIFAR draws with np.random.seed(0). sha256 is over the lines '<class>,<rank>' "
                    "(ranks ascending) joined by newlines. Written by: ltkit data subsets",
           "settings": settings}
    atomic_write_json(path, doc, indent=None)  # ~55,000 ranks: one line keeps it small
    return doc


def pack_subset(src_root: str | Path, dataset: str, out_dir: str | Path, protocols: list[dict],
                test: bool = True) -> dict:
    """Write the images that the given protocol settings use as a smaller npz pair.

    The lent GPU machine receives at most 64 MiB per call; this keeps only the
    images a study touches (with their original indices, so every split comes
    out identical) plus a ``SHA256SUMS`` of its own. A cao2019 setting's ``subset_seed`` (another draw
    of the same counts, the subsets grid) is honoured: each seed's images are packed.
    """
    pool = load_pool(dataset, root=src_root, download=False)
    need_tr = np.zeros(len(pool.train_labels), bool)
    need_te = np.zeros(len(pool.test_labels), bool)
    k = len(pool.classes)
    for spec in protocols:
        spec = dict(spec)
        name = spec.pop("protocol")
        if name == "cao2019":
            ix = cao2019_indices(pool.train_labels, k, spec.get("imb_factor", 100), spec.get("imb_type", "exp"),
                                 spec.get("val_per_class", 20), spec.get("subset_seed", 0))
            need_tr[ix["train"]] = need_tr[ix["val"]] = True
        elif name == "thesis":
            ix = thesis_indices(pool.train_labels, k, spec.get("imb_factor", 100), spec.get("imb_type", "exp"),
                                spec.get("seed", 42), spec.get("test_fraction", THESIS_TEST_FRACTION), spec.get("test_imb_factor", 100))
            need_tr[ix["train"]] = need_tr[ix["balanced"]] = True
        else:
            raise choice_error("protocol", name, ["cao2019", "thesis"])
        need_te[:] = test
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fname, imgs, labels, need in (("train.npz", pool.train_images, pool.train_labels, need_tr),
                                      ("test.npz", pool.test_images, pool.test_labels, need_te)):
        idx = np.flatnonzero(need)
        np.savez(out / fname, **_encode(imgs[idx]), labels=labels[idx].astype(np.uint8), index=idx,
                            full_size=len(labels), full_labels=labels.astype(np.uint8))
    (out / "classes.txt").write_text("\n".join(pool.classes) + "\n")
    sums = "".join(f"{sha256_file(out / f)}  {f}\n" for f in ("train.npz", "test.npz", "classes.txt"))
    (out / "SHA256SUMS").write_text(sums)
    return {"train": int(need_tr.sum()), "test": int(need_te.sum())}
