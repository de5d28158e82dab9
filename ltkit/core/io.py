"""Atomic file writes, checksums and per-run locks.

Every file under ``results/`` and every checkpoint is written to a temporary
file in the same folder and then renamed over the target (``os.replace`` is
atomic on POSIX), so a crash or a kill never leaves a half-written file where a
finished one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the mode a plain ``open`` would give (0666 less the umask):
    ``mkstemp`` creates 0600 files, which a shared results folder on a cluster could not show to colleagues."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=_json_default) + "\n")


def atomic_write_csv(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return atomic_write_text(path, buf.getvalue())


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that reads ``1e-3`` as a number (YAML 1.1, which PyYAML follows, wants ``1.0e-3``).

    Learning rates are written ``1e-3`` in every paper and config; a string there would be refused
    by the config check although the user meant a valid number. ``!!python`` tags stay refused.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_json_or_empty(path: str | Path) -> dict:
    """A JSON object file's content, or ``{}`` when it is missing, unreadable or not an object: for reading
    records back where an absent or damaged file means "nothing recorded", never an error."""
    try:
        out = read_json(path)
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def aside_stamp() -> str:
    """The suffix of a file or folder set aside (``*.replaced-<stamp>``, ``*.unreadable-<stamp>``): UTC time
    plus microseconds, so two set asides never take one name and the later overwrite the earlier."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{time.time_ns() % 1_000_000:06d}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stat_digest(files: list[Path], salt: str = "", relative_to: Path | None = None) -> str:
    """SHA-256 over the names, sizes and modification times of ``files`` (not their bytes):
    a cheap "has anything changed" key for caches over many files."""
    h = hashlib.sha256(salt.encode())
    for f in files:
        st = f.stat()
        name = f.relative_to(relative_to) if relative_to else f
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class LockHeld(RuntimeError):
    """Another process holds the lock of this run."""


def _open_lock(path: Path, create: bool) -> int:
    """A lock file's descriptor, never through a symbolic link (a planted link must not be overwritten)."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o666 & ~_umask())
    except OSError as exc:
        if path.is_symlink():
            raise LockHeld(f"{path} is a symbolic link; refusing to use it as a lock (remove it)") from exc
        raise


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[Path]:
    """Exclusive, non-blocking lock on ``path`` (``fcntl.flock``).

    Two grid commands on the same results folder never execute the same run:
    the second one gets :class:`LockHeld` and skips it. The kernel releases the
    lock when the holder dies, so a killed run does not leave a stale lock. The
    holder's pid is written into the file for people reading it.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path, create=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockHeld(f"run is locked by another process: {path}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        os.close(fd)


def is_locked(path: str | Path) -> bool:
    """Whether some process holds the lock at ``path``; read-only: creates and writes nothing."""
    import fcntl

    path = Path(path)
    if not path.exists() or path.is_symlink():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
