"""Sources: the raw, balanced pool of a data set (``SOURCES`` registry).

A source gives uint8 train/test images (N, H, W, 3) with labels and class names: ``cifar100`` and
``cifar10`` (the npz pair of an offline copy, checked against its ``SHA256SUMS``, or torchvision's
download), ``synthetic`` (CIFAR-shaped, offline, for tests and the demo) and ``folder`` (one's own
images, one sub-folder per class: :mod:`ltkit.data.folder`). NumPy only: no torch at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.io import sha256_file
from ..core.layout import default_data_root
from ..core.registry import Registry
from .folder import by_count, decode_folder
from .splits import DataError, holdout_indices


@dataclass(frozen=True)
class SourceSpec:
    """A source's fixed shape where it has one (CIFAR): lets the grid plan counts without loading images."""

    num_classes: int | None = None
    train_per_class: int | None = None


SOURCES: Registry[SourceSpec] = Registry("dataset", SourceSpec)


# Published per-channel statistics of the CIFAR training sets (used for normalisation).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)


CIFAR100_STD = (0.2673, 0.2564, 0.2762)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)


CIFAR10_STD = (0.2470, 0.2435, 0.2616)


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
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Provide the files and point the run's data_root (a grid's "
            f"data_root, or `ltkit grid run ... --set data_root=PATH`) or LTKIT_DATA at them, or allow the download "
            f"on a machine with internet"
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


def source_defaults(name: str) -> dict[str, object]:
    """A source's own parameter defaults (e.g. the synthetic source's ``num_classes``): the one place they are written."""
    import inspect

    sig = inspect.signature(SOURCES.get(name))
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def load_pool(dataset: str, root: str | Path | None = None, download: bool = True, **kw: object) -> Pool:
    return SOURCES.get(dataset)(root=root, download=download, **kw)


# torchvision's download addresses of the data sets it can fetch (its own MD5 checks the archive)
DOWNLOADABLE = {"cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"}


def fetch_data(dataset: str, root: str | Path | None = None):
    """``ltkit fetch`` for a data set: already under ``root`` (``LTKIT_DATA``) and verified (the npz pair against its
    ``SHA256SUMS``, or torchvision's files), else downloaded by torchvision (its MD5), else why not. Returns a
    :class:`ltkit.core.download.Fetched`; a source that cannot be downloaded (synthetic, one's own folder) says so."""
    from ..core.download import Fetched, reachable

    root = Path(root) if root else default_data_root()
    what = f"{dataset} data"
    if dataset not in DOWNLOADABLE:
        return Fetched(what, str(root), "cached", 0, "", "nothing to fetch (generated, or your own folder)")
    try:
        pool = load_pool(dataset, root=root, download=False)
        where = pool.origin if pool.origin != "torchvision" else str(root / dataset)
        how = "SHA256SUMS" if pool.origin != "torchvision" else "torchvision's files (MD5 checked at download)"
        size = sum(f.stat().st_size for f in Path(where).rglob("*") if f.is_file()) if Path(where).is_dir() else 0
        return Fetched(what, where, "cached", size, how)
    except DataError as exc:
        if "no data under" not in str(exc):  # there, but damaged or unchecked: never used as if complete
            return Fetched(what, str(root), "refused", 0, "", str(exc).splitlines()[0])
    url = DOWNLOADABLE[dataset]
    if not reachable(url):
        return Fetched(what, str(root), "unreachable", 0, "", "cannot reach www.cs.toronto.edu (offline?): nothing "
                       "written; fetch on a machine with internet (or copy an npz pair into LTKIT_DATA)")
    try:
        load_pool(dataset, root=root, download=True)
    except DataError as exc:
        return Fetched(what, str(root), "failed", 0, "", str(exc).splitlines()[0])
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return Fetched(what, str(root), "downloaded", size, "torchvision's MD5")
