"""Downloading a file so that an interrupted or wrong download is never used as if complete.

``ltkit fetch`` fills the caches a grid's runs read (pretrained weights, data) on a machine with internet,
for compute nodes without it. A file is streamed into ``<dest>.partial-<pid>`` beside its destination
(one file system: the final rename is atomic), hashed while it arrives, checked against the SHA256
prefix its name carries where it carries one (torchvision names every weight file ``<arch>-<first 8+ hex of
its SHA256>.pth``), fsynced, and only then renamed into place. A mismatch deletes the partial file: the
cache never holds it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")  # torch.hub's convention (check_hash)


class DownloadError(RuntimeError):
    """A download that failed or did not verify: nothing was cached."""


def hash_prefix(name: str) -> str | None:
    """The SHA256 prefix a file name carries (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``), else None."""
    m = HASH_IN_NAME.search(name)
    return m.group(1) if m else None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def reachable(url: str) -> bool:
    """Whether ``url``'s host resolves (a second at most; offline compute nodes fail at once)."""
    host = urlparse(url).hostname or ""
    try:
        socket.getaddrinfo(host, urlparse(url).port or 443)
        return True
    except OSError:
        return False


@dataclass
class Fetched:
    """What one item of a fetch came to: ``status`` cached (already there and verified), downloaded, refused
    (content did not verify; nothing kept), unreachable (nothing written) or failed."""

    what: str
    where: str
    status: str
    size: int = 0
    verified: str = ""
    detail: str = ""


def verify(path: Path, prefix: str | None) -> str:
    """'' when ``path`` verifies against ``prefix`` (or there is none to check), else what is wrong."""
    if prefix is None:
        return ""
    digest = sha256_of(path)
    return "" if digest.startswith(prefix) else f"its SHA256 {digest[:16]}... does not start with {prefix}, as its name says"


def download(url: str, dest: Path, what: str, timeout: float = 60.0) -> Fetched:
    """Fetch ``url`` into ``dest`` (see the module's docstring); idempotent: a ``dest`` that verifies is kept."""
    dest = Path(dest)
    prefix = hash_prefix(dest.name)
    how = f"SHA256 prefix {prefix} (in its name)" if prefix else "size only (its name carries no hash)"
    if dest.exists():
        problem = verify(dest, prefix)
        if not problem:
            return Fetched(what, str(dest), "cached", dest.stat().st_size, how)
        return Fetched(what, str(dest), "refused", dest.stat().st_size, "", f"the cached file is corrupt: {problem}; "
                       "delete it and fetch again")
    if not reachable(url):
        return Fetched(what, str(dest), "unreachable", 0, "", f"cannot reach {urlparse(url).hostname} (offline?): "
                       "nothing written; run `ltkit fetch` on a machine with internet, then copy the cache here")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:  # noqa: S310 - http(s) only
            expected = resp.headers.get("Content-Length")
            while block := resp.read(1 << 20):
                h.update(block)
                out.write(block)
                size += len(block)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and int(expected) != size:
            raise DownloadError(f"got {size} of {expected} bytes (the connection dropped)")
        if prefix and not h.hexdigest().startswith(prefix):
            raise DownloadError(f"its SHA256 {h.hexdigest()[:16]}... does not start with {prefix}, as its name says: "
                                "refused, not cached")
        os.replace(part, dest)
    except (OSError, urllib.error.URLError, DownloadError, ValueError) as exc:
        part.unlink(missing_ok=True)
        status = "refused" if isinstance(exc, DownloadError) and "SHA256" in str(exc) else "failed"
        return Fetched(what, str(dest), status, size, "", f"{type(exc).__name__}: {exc}")
    return Fetched(what, str(dest), "downloaded", size, how)
