"""Protocols: how a study cuts a source's pool into its splits (``PROTOCOLS`` registry), and the result.

A protocol is one registry entry that owns everything about itself: its split function (which
images each split takes, computed by :mod:`ltkit.data.splits`), its training recipe (the defaults
:func:`ltkit.training.check.make_config` fills in: optimiser, schedule, epochs, image size,
normalisation constants, ...) and its paper. ``thesis`` (Midtgaard 2025), ``cao2019`` (Cao et al.
2019, their own images) and ``natural`` (one's own data, its own imbalance). The splits only depend
on the order of images *within* a class, which every CIFAR source shares, so a split is identical
whichever source provided the pixels. The images become torch tensors here, but torch is imported
only when a split is made (planning a grid reads the recipes without it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.registry import Registry, choice_error
from .sources import SOURCES, Pool, load_pool
from .splits import (
    IMBALANCE_TYPES,
    DataError,
    cao2019_indices,
    check_counts,
    class_groups,
    index_digest,
    natural_indices,
    thesis_indices,
)

if TYPE_CHECKING:
    import torch

# Both recipes normalise with these constants, for CIFAR-10 and CIFAR-100 alike: the thesis's Table A.1 and
# Cao et al.'s cifar_train.py. (They are CIFAR-10's mean with an often-copied std; CIFAR-100's own statistics
# are (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762): ``normalization: dataset`` uses the data's own.)
RECIPE_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@dataclass(frozen=True)
class ProtocolSpec:
    """What a protocol is besides its split function: its training recipe (the defaults a run's config
    takes: ``optimizer``, ``lr``, ``weight_decay``, ``epochs``, ``milestone_fracs``, ``lr_decay``,
    ``warmup_frac``, ``image_size``, ``select``, ``pretrained``, ``track_test``, ``drw_frac``,
    ``normalization`` and its constants ``norm``), the paper it follows, and that paper's own recipe as
    data (``published``: run configuration fields as the paper states them), against which a run card
    lists every difference (:func:`ltkit.report.cards.recipe_differences`)."""

    recipe: dict[str, Any]
    paper: str
    published: dict[str, Any] = field(default_factory=dict)


PROTOCOLS: Registry[ProtocolSpec] = Registry("protocol", ProtocolSpec)

# Midtgaard (2025), Table A.2 / section 3.3: Adam 1e-3, StepLR x0.1 every 30 of 90 epochs, 224 px.
THESIS_RECIPE = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=90, milestone_fracs=(1 / 3, 2 / 3),
                     lr_decay=0.1, warmup_frac=0.0, image_size=224, select="best_val", pretrained=True,
                     track_test=False, drw_frac=2 / 3, normalization="recipe", norm=RECIPE_NORM)
# Cao et al. (2019), appendix B: SGD 0.1, 5 warm-up epochs, x0.01 at 160 and 180 of 200, 32 px.
CAO2019_RECIPE = dict(optimizer="sgd", lr=0.1, weight_decay=2e-4, epochs=200, milestone_fracs=(0.8, 0.9),
                      lr_decay=0.01, warmup_frac=0.025, image_size=32, select="last", pretrained=False,
                      track_test=True, drw_frac=0.8, normalization="recipe", norm=RECIPE_NORM)
# The papers' recipes as they state them (the fields a run card compares; a run that differs in none is like-with-like).
# Cao et al. (2019), appendix B and their released code (github.com/kaidic/LDAM-DRW, cifar_train.py): ResNet-32,
# SGD momentum 0.9, lr 0.1, weight decay 2e-4, batch 128, 200 epochs, linear warm-up over 5, x0.01 at 160 and 180,
# 32 px with crop and flip, fp32, the last epoch, their subset (np.random.seed(0)).
CAO2019_PAPER_RECIPE = dict(model="resnet32", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=2e-4, batch_size=128,
                            epochs=200, milestones=[160, 180], lr_decay=0.01, warmup_epochs=5, image_size=32,
                            pretrained=False, sampler="instance", normalization="recipe", precision="fp32",
                            select="last", subset_seed=0)
# Midtgaard (2025), Table A.2 and section 3.3: Adam 1e-3, no weight decay, batch 128, 90 epochs, x0.1 every 30,
# 224 px, ImageNet weights, the best validation epoch.
THESIS_PAPER_RECIPE = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=90, milestones=[30, 60],
                           lr_decay=0.1, warmup_epochs=0, image_size=224, pretrained=True, sampler="instance",
                           normalization="recipe", select="best_val")
# One's own folder data (ltkit.data.folder): fine-tune as the thesis does, on the data's own imbalance and statistics.
NATURAL_RECIPE = dict(THESIS_RECIPE, normalization="dataset", norm=None)


def recipe(protocol: str) -> dict[str, Any]:
    """A protocol's training recipe (the defaults of its runs' configurations)."""
    return PROTOCOLS.info(protocol).recipe


@dataclass
class Split:
    """Images as a uint8 (N, 3, H, W) tensor plus int64 labels, ready to move to a GPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=num_classes)


@dataclass
class LTDataset:
    """Everything a run needs: splits, class names, training counts, class groups."""

    name: str
    protocol: str
    classes: list[str]
    train: Split
    val: Split | None
    tests: dict[str, Split]
    train_counts: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def groups(self) -> dict[str, np.ndarray]:
        return class_groups(self.train_counts)

    def sizes(self) -> dict[str, int]:
        out = {"train": len(self.train)}
        if self.val is not None:
            out["val"] = len(self.val)
        out.update({f"test_{k}": len(v) for k, v in self.tests.items()})
        return out


def restrict_classes(ds: LTDataset, keep: np.ndarray) -> LTDataset:
    """The dataset seen by a model of only the classes ``keep`` (labels renumbered 0..len(keep)-1).

    Used by the two-expert method: each expert trains and is validated on its own
    classes only. Splits that keep no image of these classes become empty.
    """
    keep = np.asarray(keep, dtype=np.int64)
    remap = np.full(ds.num_classes, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))

    def cut(split: Split | None) -> Split | None:
        if split is None:
            return None
        import torch

        lab = split.labels.numpy()
        sel = np.flatnonzero(remap[lab] >= 0)
        return Split(split.images[torch.from_numpy(sel)], torch.from_numpy(remap[lab[sel]]))

    val = cut(ds.val)
    return LTDataset(name=ds.name, protocol=ds.protocol, classes=[ds.classes[i] for i in keep], train=cut(ds.train),
                     val=val if val is not None and len(val) else None,
                     tests={k: cut(v) for k, v in ds.tests.items()}, train_counts=ds.train_counts[keep],
                     mean=ds.mean, std=ds.std, meta={**ds.meta, "classes_of_parent": keep.tolist()})


# --------------------------------------------------------------------------- counts and groups


# --------------------------------------------------------------------------- sources


# --------------------------------------------------------------------------- protocols


def take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, present: np.ndarray | None, what: str) -> Split:
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    if present is not None and not present[idx].all():
        missing = int((~present[idx]).sum())
        raise DataError(f"the packed data subset lacks {missing} images that the {what} split needs; "
                        "pack it again for this protocol (ltkit data pack)")
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.from_numpy(labels[idx].astype(np.int64)))


@PROTOCOLS.register("thesis", recipe=THESIS_RECIPE, paper="Midtgaard (2025), section 3.2.3 and Table A.2",
                    published=THESIS_PAPER_RECIPE)
def thesis_split(pool: Pool, imb_factor: float = 100, imb_type: str = "exp", seed: int = 42,
                 test_imb_factor: float = 100, test_fraction: float = 0.1, **_: object) -> LTDataset:
    """Midtgaard (2025), section 3.2.3.

    Each class's training images are split, seeded and stratified, into
    (1 - f) train / f test (450 / 50 for CIFAR-100); the official test set is the
    validation set. The LT train set takes the first n_i = floor(450 * IF^(-i/(K-1)))
    images of each class's train part, the LT test set the first
    max(1, floor(50 * IF_test^(-i/(K-1)))) of its test part. IF = 1 trains on the
    balanced 45,000.
    """
    ix = thesis_indices(pool.train_labels, len(pool.classes), imb_factor, imb_type, seed, test_fraction,
                        test_imb_factor)
    p_tr = pool.train_present
    return LTDataset(
        name=pool.name, protocol="thesis", classes=pool.classes,
        train=take(pool.train_images, pool.train_labels, ix["train"], p_tr, "train"),
        val=take(pool.test_images, pool.test_labels, np.arange(len(pool.test_labels)), pool.test_present, "val"),
        tests={"balanced": take(pool.train_images, pool.train_labels, ix["balanced"], p_tr, "balanced test"),
               "lt": take(pool.train_images, pool.train_labels, ix["lt"], p_tr, "long-tailed test")},
        train_counts=ix["train_counts"], mean=pool.mean, std=pool.std,
        meta={"imb_factor": imb_factor, "imb_type": imb_type, "split_seed": seed, "test_imb_factor": test_imb_factor,
              "origin": pool.origin, "subset_sha256": index_digest(pool.train_labels, ix["train"], len(pool.classes))},
    )


# The settings published in book/data/cao2019_subsets.json: (dataset, classes, images per class, IF, type).
CAO2019_PUBLISHED = (("cifar100", 100, 500, 100, "exp"), ("cifar100", 100, 500, 50, "exp"),
                     ("cifar100", 100, 500, 10, "exp"), ("cifar10", 10, 5000, 100, "exp"))


@PROTOCOLS.register("cao2019", recipe=CAO2019_RECIPE, paper="Cao et al. (2019), section 4.1 and appendix B",
                    published=CAO2019_PAPER_RECIPE)
def cao2019_split(pool: Pool, imb_factor: float = 100, imb_type: str = "exp", val_per_class: int = 20,
                  subset_seed: int = 0, **_: object) -> LTDataset:
    """Cao et al. (2019), LDAM-DRW, the standard CIFAR-LT benchmark, on *their* images.

    Train: n_i images of each class (n_max = all of a class, 500 for CIFAR-100, n_i
    from :func:`lt_counts`), drawn as their ``IMBALANCECIFAR`` draws them
    (:func:`cao2019_ranks`), so the subset is theirs image for image, not only in
    its counts. Test: the official balanced test set. Validation (ours, not the
    paper's): the next ``val_per_class`` images of each class's drawn order, all
    unused by training, for choosing post-hoc hyper-parameters without touching
    the test set; classes with no unused images (class 0) are absent. ``subset_seed`` draws another
    subset of the same counts (0: theirs), so subset variance can be measured apart from the seed's.
    """
    ix = cao2019_indices(pool.train_labels, len(pool.classes), imb_factor, imb_type, val_per_class, subset_seed)
    test_idx = np.arange(len(pool.test_labels))
    val_idx = ix["val"]
    return LTDataset(
        name=pool.name, protocol="cao2019", classes=pool.classes,
        train=take(pool.train_images, pool.train_labels, ix["train"], pool.train_present, "train"),
        val=take(pool.train_images, pool.train_labels, val_idx, pool.train_present, "val") if len(val_idx) else None,
        tests={"balanced": take(pool.test_images, pool.test_labels, test_idx, pool.test_present, "test")},
        train_counts=ix["train_counts"], mean=pool.mean, std=pool.std,
        meta={"imb_factor": imb_factor, "imb_type": imb_type, "n_max": int(ix["n_max"]), "origin": pool.origin,
              "subset": f"cao2019 (np.random.seed({subset_seed}), per-class shuffle)",
              "subset_sha256": index_digest(pool.train_labels, ix["train"], len(pool.classes))},
    )


@PROTOCOLS.register("natural", recipe=NATURAL_RECIPE, paper="one's own data: the thesis's recipe, the data's own imbalance")
def natural_split(pool: Pool, val_per_class: int = 20, **_: object) -> LTDataset:
    """The data's own imbalance: train on the pool's training part as it is.

    Validation: up to ``val_per_class`` images of each class's training part, never
    more than a fifth of it (classes with fewer than 5 training images give none).
    Tests: ``lt`` = the whole test part (the data's own distribution) and
    ``balanced`` = the first m test images of every class, m = the smallest class's
    test count, so the headline number weighs every class alike.
    """
    k = len(pool.classes)
    ix = natural_indices(pool.train_labels, pool.test_labels, k, val_per_class)
    tr_idx, val_idx, bal_idx, m = ix["train"], ix["val"], ix["balanced"], int(ix["balanced_per_class"])
    train = take(pool.train_images, pool.train_labels, tr_idx, None, "train")
    counts = train.counts(k)
    return LTDataset(
        name=pool.name, protocol="natural", classes=pool.classes, train=train,
        val=take(pool.train_images, pool.train_labels, val_idx, None, "val") if len(val_idx) else None,
        tests={"balanced": take(pool.test_images, pool.test_labels, bal_idx, None, "balanced test"),
               "lt": take(pool.test_images, pool.test_labels, ix["lt"], None, "test")},
        train_counts=counts, mean=pool.mean, std=pool.std,
        meta={"origin": pool.origin, "balanced_test_per_class": m,
              "imb_factor_found": float(counts.max() / max(counts.min(), 1)),
              "subset_sha256": index_digest(pool.train_labels, tr_idx, k)},
    )


def load_dataset(dataset: str, protocol: str, *, imb_factor: float = 100, imb_type: str = "exp",
                 root: str | Path | None = None, download: bool = True, split_seed: int = 42,
                 source_kwargs: dict | None = None, **protocol_kwargs: object) -> LTDataset:
    """Load a source and cut it with a protocol: the one entry point for every run.

    ``split_seed`` seeds the thesis protocol's train/test split (the thesis uses 42 for
    every run); the synthetic source has its own ``source_kwargs['seed']``.
    """
    split_fn = PROTOCOLS.get(protocol)
    SOURCES.get(dataset)
    if imb_type not in IMBALANCE_TYPES:
        raise choice_error("imbalance type", imb_type, IMBALANCE_TYPES)
    pool = load_pool(dataset, root=root, download=download, **(source_kwargs or {}))
    ds = split_fn(pool, imb_factor=imb_factor, imb_type=imb_type, seed=split_seed, **protocol_kwargs)
    check_counts(ds.train_counts, f"{protocol} train split")
    return ds
