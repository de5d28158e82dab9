"""Datasets, long-tailed splits and class groups.

Two layers:

* a *source* gives the raw, balanced pool of a dataset: uint8 train/test images
  (N, H, W, 3) with labels and class names (``SOURCES`` registry: ``cifar100``,
  ``cifar10``, ``synthetic``, and ``folder`` for one's own images, in :mod:`ltkit.folder`);
* a *protocol* cuts that pool into the splits of a study (``PROTOCOLS``
  registry: ``thesis``, ``cao2019``, and ``natural`` for data whose imbalance is its own).

Both CIFAR sources read either the npz pair of the offline copy (checked
against its ``SHA256SUMS``) or torchvision's download. The splits only depend
on the order of images *within* a class, which both sources share, so a split
is identical whichever source provided the pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .folder import by_count, decode_folder
from .io import atomic_write_json, sha256_file
from .layout import default_data_root
from .registry import Registry, choice_error
from .splits import (
    IMBALANCE_TYPES,
    THESIS_TEST_FRACTION,
    DataError,
    cao2019_indices,
    cao2019_subset_table,
    check_counts,
    class_groups,
    holdout_indices,
    natural_indices,
    thesis_indices,
)


@dataclass(frozen=True)
class SourceSpec:
    """A source's fixed shape where it has one (CIFAR): lets the grid plan counts without loading images."""

    num_classes: int | None = None
    train_per_class: int | None = None


SOURCES: Registry[SourceSpec] = Registry("dataset", SourceSpec)
PROTOCOLS = Registry("protocol")

# Published per-channel statistics of the CIFAR training sets (used for normalisation).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


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
class Pool:
    """A raw balanced dataset: train/test images (N, H, W, 3) uint8 and labels."""

    name: str
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # For a packed subset of a pool (see ``pack_subset``): which images are present.
    train_present: np.ndarray | None = None
    test_present: np.ndarray | None = None
    origin: str = ""


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


def _verify_sums(folder: Path, names: list[str]) -> None:
    sums_file = folder / "SHA256SUMS"
    if not sums_file.exists():
        raise DataError(f"{folder}: no SHA256SUMS beside the npz files; cannot check them")
    expected = {}
    for line in sums_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0]
    for name in names:
        if name not in expected:
            raise DataError(f"{folder / name}: not listed in {sums_file}")
        got = sha256_file(folder / name)
        if got != expected[name]:
            raise DataError(
                f"{folder / name}: SHA256 {got[:12]}... does not match {sums_file} "
                f"({expected[name][:12]}...); the file is corrupt or truncated, copy it again"
            )


def _npz_candidates(root: Path, name: str) -> list[Path]:
    return [root / name, root]


def _check_arrays(path: Path, d: dict, num_classes: int) -> None:
    """One clear error for an npz that does not hold (N, H, W, 3) uint8 images and N labels in [0, K)."""
    missing = [k for k in ("images", "labels") if k not in d]
    if missing:
        raise DataError(f"{path}: no {' / '.join(map(repr, missing))} array (found: {', '.join(sorted(d)) or 'none'}; "
                        "accepted: 'images' uint8 (N, H, W, 3) and 'labels' integers (N,))")
    x, y = d["images"], d["labels"]
    if x.dtype != np.uint8:
        raise DataError(f"{path}: images are {x.dtype}, not uint8 (accepted: uint8 0-255 pixels; float images would be "
                        "divided by 255 a second time)")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{path}: images have shape {tuple(x.shape)} (accepted: (N, H, W, 3), RGB, channels last; "
                        "convert CHW or grayscale images first)")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{path}: labels are {y.dtype} with shape {tuple(y.shape)} (accepted: a 1-D integer array)")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels (accepted: one label per image)")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(f"{path}: label {bad} is outside 0..{num_classes - 1} (this dataset has {num_classes} classes)")


def _load_npz_pool(folder: Path, name: str, mean, std) -> Pool:
    _verify_sums(folder, ["train.npz", "test.npz"])
    try:
        tr = np.load(folder / "train.npz")
        te = np.load(folder / "test.npz")
        arrays = _decode({k: tr[k] for k in tr.files}), _decode({k: te[k] for k in te.files})
    except Exception as exc:  # zipfile / zlib errors on a truncated archive, a pickled array
        raise DataError(f"{folder}: cannot read train.npz/test.npz ({type(exc).__name__}: {exc})") from exc
    (trd, ted) = arrays
    num_classes = SOURCES.info(name).num_classes
    classes_file = folder / "classes.txt"
    classes = classes_file.read_text(encoding="utf-8").split() if classes_file.exists() else None
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise DataError(f"{classes_file}: {len(classes)} class names (accepted: {num_classes}, one per line, for {name})")
    k = num_classes or (len(classes) if classes else None)
    if k is None:  # no class count known: take it from the labels (checked for type first)
        for fname, d in (("train.npz", trd), ("test.npz", ted)):
            _check_arrays(folder / fname, d, 2**31)
        k = int(max(trd["labels"].max(), ted["labels"].max())) + 1
    for fname, d in (("train.npz", trd), ("test.npz", ted)):
        _check_arrays(folder / fname, d, k)
    classes = classes or [str(i) for i in range(k)]
    pool = Pool(name, classes, trd["images"], trd["labels"].astype(np.int64), ted["images"],
                ted["labels"].astype(np.int64), mean, std, origin=str(folder))
    if "index" in trd:  # a packed subset: scatter into the full index space
        pool = _unpack(pool, trd, ted)
    return pool


def _encode(images: np.ndarray) -> dict[str, np.ndarray]:
    """Lossless and ~30% smaller than zlib: xz over the horizontal pixel differences."""
    import lzma

    delta = np.diff(images.astype(np.int16), axis=2, prepend=0).astype(np.uint8)
    return {"images_xz": np.frombuffer(lzma.compress(delta.tobytes(), preset=6), np.uint8),
            "images_shape": np.asarray(images.shape)}


def _decode(d: dict) -> dict:
    if "images_xz" in d:
        import lzma

        delta = np.frombuffer(lzma.decompress(d.pop("images_xz").tobytes()), np.uint8)
        delta = delta.reshape(tuple(d.pop("images_shape")))
        d["images"] = np.cumsum(delta, axis=2, dtype=np.uint8)
    return d


def _unpack(pool: Pool, trd: dict, ted: dict) -> Pool:
    def scatter(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = int(d["full_size"])
        imgs = np.zeros((n, *d["images"].shape[1:]), np.uint8)
        labels = np.asarray(d["full_labels"], np.int64)
        present = np.zeros(n, bool)
        imgs[d["index"]] = d["images"]
        present[d["index"]] = True
        return imgs, labels, present

    pool.train_images, pool.train_labels, pool.train_present = scatter(trd)
    pool.test_images, pool.test_labels, pool.test_present = scatter(ted)
    return pool


def _torchvision_pool(name: str, root: Path, download: bool, mean, std) -> Pool:
    import torchvision

    cls = {"cifar100": torchvision.datasets.CIFAR100, "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except Exception as exc:
        raise DataError(
            f"{name}: no data under {root.resolve()} (looked for {root / name}/train.npz+test.npz+SHA256SUMS "
            f"and torchvision's files; download={'on' if download else 'off'}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Provide the files and point --data-root or "
            f"LTKIT_DATA at them, or allow the download on a machine with internet"
        ) from exc
    return Pool(name, list(tr.classes), np.asarray(tr.data), np.asarray(tr.targets, np.int64),
                np.asarray(te.data), np.asarray(te.targets, np.int64), mean, std, origin="torchvision")


def _cifar(name: str, mean, std):
    def load(root: str | Path | None = None, download: bool = True, **_: object) -> Pool:
        root = Path(root) if root else default_data_root()
        for folder in _npz_candidates(root, name):
            if (folder / "train.npz").exists() and (folder / "test.npz").exists():
                return _load_npz_pool(folder, name, mean, std)
        if download and os.environ.get("LTKIT_OFFLINE") == "1":
            download = False
        return _torchvision_pool(name, root, download, mean, std)

    return load


SOURCES.register("cifar100", num_classes=100, train_per_class=500)(_cifar("cifar100", CIFAR100_MEAN, CIFAR100_STD))
SOURCES.register("cifar10", num_classes=10, train_per_class=5000)(_cifar("cifar10", CIFAR10_MEAN, CIFAR10_STD))


@SOURCES.register("synthetic")
def synthetic_pool(num_classes: int = 10, train_per_class: int = 250, test_per_class: int = 50,
                   image_size: int = 32, seed: int = 0, noise: float = 1.2, **_: object) -> Pool:
    """A learnable, deterministic stand-in for CIFAR that needs no download.

    Each class has a prototype: a mean colour, an oriented sinusoidal grating and a
    bright blob at a class-specific place. An image is its class prototype,
    shifted by up to 3 pixels, with a random contrast and Gaussian pixel noise.
    A small CNN separates the classes well above chance in seconds, yet noise
    and shifts keep it from being trivial, so the tail classes (few images)
    visibly suffer, as on real long-tailed data.
    """
    rng = np.random.default_rng(10_007 + seed)
    s = image_size
    yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    protos = []
    for _c in range(num_classes):
        colour = rng.uniform(0.2, 0.8, 3)
        theta, freq = rng.uniform(0, np.pi), rng.uniform(1.5, 4.0)
        grating = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) / s + rng.uniform(0, 2 * np.pi))
        cy, cx = rng.uniform(0.2 * s, 0.8 * s, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.12 * s) ** 2))
        img = colour[None, None, :] + 0.25 * grating[..., None] * rng.choice([-1, 1], 3) + 0.4 * blob[..., None]
        protos.append(img)
    protos = np.stack(protos)  # K, s, s, 3

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes), per_class)
        shifts = rng.integers(-3, 4, size=(len(labels), 2))
        imgs = np.empty((len(labels), s, s, 3), np.float32)
        for j, (lab, (dy, dx)) in enumerate(zip(labels, shifts, strict=True)):
            imgs[j] = np.roll(protos[lab], (dy, dx), axis=(0, 1))
        contrast = rng.uniform(0.7, 1.3, (len(labels), 1, 1, 1))
        imgs = 0.5 + contrast * (imgs - 0.5) + rng.normal(0, noise, imgs.shape)
        return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8), labels

    tr_x, tr_y = draw(train_per_class)
    te_x, te_y = draw(test_per_class)
    classes = [f"class_{c:02d}" for c in range(num_classes)]
    mean = tuple(float(v) for v in tr_x.reshape(-1, 3).mean(0) / 255)
    std = tuple(float(v) for v in tr_x.reshape(-1, 3).std(0) / 255)
    return Pool("synthetic", classes, tr_x, tr_y, te_x, te_y, mean, std, origin=f"synthetic(seed={seed})")


# --------------------------------------------------------------------------- protocols


def take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, present: np.ndarray | None, what: str) -> Split:
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    if present is not None and not present[idx].all():
        missing = int((~present[idx]).sum())
        raise DataError(f"the packed data subset lacks {missing} images that the {what} split needs; "
                        "pack it again for this protocol (ltkit data pack)")
    x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.from_numpy(labels[idx].astype(np.int64)))


@PROTOCOLS.register("thesis")
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
              "origin": pool.origin},
    )


# The settings published in book/data/cao2019_subsets.json: (dataset, classes, images per class, IF, type).
CAO2019_PUBLISHED = (("cifar100", 100, 500, 100, "exp"), ("cifar100", 100, 500, 50, "exp"),
                     ("cifar100", 100, 500, 10, "exp"), ("cifar10", 10, 5000, 100, "exp"))


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


@PROTOCOLS.register("cao2019")
def cao2019_split(pool: Pool, imb_factor: float = 100, imb_type: str = "exp", val_per_class: int = 20,
                  **_: object) -> LTDataset:
    """Cao et al. (2019), LDAM-DRW, the standard CIFAR-LT benchmark, on *their* images.

    Train: n_i images of each class (n_max = all of a class, 500 for CIFAR-100, n_i
    from :func:`lt_counts`), drawn as their ``IMBALANCECIFAR`` draws them
    (:func:`cao2019_ranks`), so the subset is theirs image for image, not only in
    its counts. Test: the official balanced test set. Validation (ours, not the
    paper's): the next ``val_per_class`` images of each class's drawn order, all
    unused by training, for choosing post-hoc hyper-parameters without touching
    the test set; classes with no unused images (class 0) are absent.
    """
    ix = cao2019_indices(pool.train_labels, len(pool.classes), imb_factor, imb_type, val_per_class)
    test_idx = np.arange(len(pool.test_labels))
    val_idx = ix["val"]
    return LTDataset(
        name=pool.name, protocol="cao2019", classes=pool.classes,
        train=take(pool.train_images, pool.train_labels, ix["train"], pool.train_present, "train"),
        val=take(pool.train_images, pool.train_labels, val_idx, pool.train_present, "val") if len(val_idx) else None,
        tests={"balanced": take(pool.test_images, pool.test_labels, test_idx, pool.test_present, "test")},
        train_counts=ix["train_counts"], mean=pool.mean, std=pool.std,
        meta={"imb_factor": imb_factor, "imb_type": imb_type, "n_max": int(ix["n_max"]), "origin": pool.origin,
              "subset": "cao2019 (np.random.seed(0), per-class shuffle)"},
    )


@SOURCES.register("folder")
def folder_pool(root: str | Path | None = None, image_size: int = 64, test_fraction: float = 0.2, seed: int = 0,
                cache_dir: str | Path | None = None, **_: object) -> Pool:
    """A per-class folder dataset as a pool: a seeded, stratified train / test split of each class.

    Each class gives ``max(1, round(test_fraction * n))`` images to the test part
    and keeps at least one for training (a class of one image is an error).
    Classes are re-indexed by descending count (ties by name).
    """
    if root is None:
        raise DataError("folder dataset: set data_root to the folder that holds one sub-folder per class")
    if not 0 < test_fraction < 1:
        raise DataError(f"folder dataset: bad value for 'test_fraction': {test_fraction} (accepted: a number in (0, 1))")
    images, labels, names, _ = decode_folder(root, image_size, cache_dir)
    counts = np.bincount(labels, minlength=len(names))
    tiny = [names[i] for i in np.flatnonzero(counts < 2)]
    if tiny:
        raise DataError(f"folder dataset: class(es) {', '.join(map(repr, tiny))} have fewer than 2 readable images; "
                        "a class needs one to train on and one to test on")
    order = by_count(counts, names)
    new_label = np.empty(len(names), np.int64)
    new_label[order] = np.arange(len(names))
    labels = new_label[labels]
    names = [names[i] for i in order]
    tr, te = holdout_indices(labels, len(names), test_fraction, seed)
    x = images[tr].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in x.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in x.std(axis=(0, 1, 2)).clip(1e-3))
    return Pool(Path(root).name, names, images[tr], labels[tr], images[te], labels[te], mean, std,
                origin=f"folder {root}")


@PROTOCOLS.register("natural")
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
              "imb_factor_found": float(counts.max() / max(counts.min(), 1))},
    )


def load_pool(dataset: str, root: str | Path | None = None, download: bool = True, **kw: object) -> Pool:
    return SOURCES.get(dataset)(root=root, download=download, **kw)


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


def pack_subset(src_root: str | Path, dataset: str, out_dir: str | Path, protocols: list[dict],
                test: bool = True) -> dict:
    """Write the images that the given protocol settings use as a smaller npz pair.

    The lent GPU machine receives at most 64 MiB per call; this keeps only the
    images a study touches (with their original indices, so every split comes
    out identical) plus a ``SHA256SUMS`` of its own.
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
                                 spec.get("val_per_class", 20))
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
