"""People's own long-tailed data: reading one folder per class (the ``folder`` source of :mod:`ltkit.data`).

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
loader of :mod:`ltkit.data.loader` applies unchanged. Unreadable files are skipped
with a warning that counts and names them; a class left with no image is an
error that names the class.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..core.io import atomic_write_bytes, stat_digest
from ..core.layout import default_data_root
from .splits import DataError

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


def warn_skipped(paths: list[str]) -> None:
    if paths:
        warnings.warn(f"skipped {len(paths)} unreadable image(s): {', '.join(paths[:10])}"
                      + (" ..." if len(paths) > 10 else ""), stacklevel=2)
