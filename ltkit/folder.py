"""People's own long-tailed data: one folder per class (``folder`` source, ``natural`` protocol).

    my_data/
      noctua_pronuba/   img001.jpg img002.jpg ...     (a folder per class; any depth below it)
      catocala_nupta/   ...

``dataset: folder``, ``data_root: my_data``, ``protocol: natural`` in a grid or
the notebook. The class counts are read from the folders and kept as they are
(the imbalance is the data's own); classes are ordered by descending image
count, so the index-based head / middle / tail thirds mean what they say.

Images are decoded once, resized to ``image_size`` (square, bilinear) and cached
as uint8 beside the data (``<root>/.ltkit-cache/``, keyed by the file list, sizes
and modification times), so later runs load one array and the GPU-resident
loader of :mod:`ltkit.loader` applies unchanged. Unreadable files are skipped
with a warning that counts and names them; a class left with no image is an
error that names the class.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .data import PROTOCOLS, SOURCES, DataError, LTDataset, Pool, default_data_root, per_class_indices, take, warn_skipped
from .io import atomic_write_bytes, stat_digest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1


def scan(root: Path) -> dict[str, list[Path]]:
    """Class name -> image files (sorted), from the sub-folders of ``root``."""
    if not root.is_dir():
        raise DataError(f"folder dataset: {root} is not a directory (expected one sub-folder per class)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    real_root = root.resolve()
    for c in classes:  # a class folder linking back into the data (e.g. to the root) would count images twice
        target = c.resolve()
        if c.is_symlink() and (target == real_root or real_root.is_relative_to(target)
                               or any(target == o.resolve() for o in classes if o != c)
                               or target.is_relative_to(real_root)):
            raise DataError(f"folder dataset: class folder {c} is a symbolic link to {target}, inside this dataset; "
                            "its images would be counted twice (accepted: links to folders outside the dataset)")
    if not classes:
        raise DataError(f"folder dataset: {root} has no class sub-folders (expected one sub-folder per class)")
    out = {c.name: sorted(f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
           for c in classes}
    empty = [name for name, files in out.items() if not files]
    if empty:
        raise DataError(f"folder dataset: class folder(s) {', '.join(map(repr, empty))} under {root} hold no image "
                        f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return out


def _decode(path: Path, size: int) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # unreadable, truncated, or a decompression bomb (PIL's pixel limit): skipped and named


def _cache_key(files: dict[str, list[Path]], root: Path, size: int) -> str:
    """Changes when a file is added, removed, replaced or touched, or the size changes."""
    paths = [f for fs in files.values() for f in fs]  # the class is the first part of each relative path
    return stat_digest(paths, f"v{CACHE_VERSION} size{size}", relative_to=root)[:20]


def by_count(counts: np.ndarray, names: list[str]) -> list[int]:
    """Class indices ordered by descending image count, ties by name: the order ltkit numbers classes in."""
    return sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))


def decode_folder(root: str | Path, image_size: int = 64, cache_dir: str | Path | None = None,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(images (N, s, s, 3) uint8, labels, class names, skipped files), through the cache."""
    from tqdm.auto import tqdm

    root = Path(root)
    files = scan(root)
    key = _cache_key(files, root, image_size)
    caches = [Path(cache_dir)] if cache_dir else [root / ".ltkit-cache", default_data_root() / "folder-cache"]
    for c in caches:
        f = c / f"{key}.npz"
        if f.exists():
            try:
                z = np.load(f)
                meta = json.loads(str(z["meta"]))
                cached = z["images"], z["labels"], meta["classes"], meta["skipped"]
            except Exception as exc:  # noqa: BLE001 - truncated or corrupt cache: decode again
                warnings.warn(f"folder cache {f} is unreadable ({type(exc).__name__}); decoding the images again",
                              stacklevel=2)
                continue
            warn_skipped(meta["skipped"])
            return cached
    images, labels, skipped = [], [], []
    names = list(files)
    todo = [(i, f) for i, name in enumerate(names) for f in files[name]]
    for i, f in tqdm(todo, desc=f"decoding {root.name}", unit="img", disable=not progress):
        arr = _decode(f, image_size)
        if arr is None:
            skipped.append(str(f.relative_to(root)))
            continue
        images.append(arr)
        labels.append(i)
    labels_np = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels_np, minlength=len(names))
    if (counts == 0).any():
        bad = [names[i] for i in np.flatnonzero(counts == 0)]
        raise DataError(f"folder dataset: class(es) {', '.join(map(repr, bad))} have no readable image "
                        f"({len(skipped)} file(s) skipped: {', '.join(skipped[:10])})")
    images_np = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    warn_skipped(skipped)
    import io

    buf = io.BytesIO()
    np.savez(buf, images=images_np, labels=labels_np,
             meta=json.dumps({"classes": names, "skipped": skipped, "root": str(root), "image_size": image_size}))
    for c in caches:
        try:
            atomic_write_bytes(c / f"{key}.npz", buf.getvalue())
            break
        except OSError:
            continue
    return images_np, labels_np, names, skipped


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
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for idx in per_class_indices(labels, len(names)):
        perm = idx[rng.permutation(len(idx))]
        n_test = min(max(1, int(round(test_fraction * len(idx)))), len(idx) - 1)
        test_idx.append(perm[:n_test])
        train_idx.append(perm[n_test:])
    tr, te = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
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
    tr_parts, val_parts = [], []
    for idx in per_class_indices(pool.train_labels, k):
        n_val = min(val_per_class, len(idx) // 5)
        val_parts.append(idx[:n_val])
        tr_parts.append(idx[n_val:])
    tr_idx, val_idx = np.concatenate(tr_parts), np.concatenate(val_parts)
    test_parts = per_class_indices(pool.test_labels, k)
    m = min(len(p) for p in test_parts)
    bal_idx = np.concatenate([p[:m] for p in test_parts])
    train = take(pool.train_images, pool.train_labels, tr_idx, None, "train")
    counts = train.counts(k)
    return LTDataset(
        name=pool.name, protocol="natural", classes=pool.classes, train=train,
        val=take(pool.train_images, pool.train_labels, val_idx, None, "val") if len(val_idx) else None,
        tests={"balanced": take(pool.test_images, pool.test_labels, bal_idx, None, "balanced test"),
               "lt": take(pool.test_images, pool.test_labels, np.arange(len(pool.test_labels)), None, "test")},
        train_counts=counts, mean=pool.mean, std=pool.std,
        meta={"origin": pool.origin, "balanced_test_per_class": m,
              "imb_factor_found": float(counts.max() / max(counts.min(), 1))},
    )
