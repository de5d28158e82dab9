"""The locked environment: ``requirements.lock`` written from pip's resolver, its digest for provenance.

``make lock`` asks pip to resolve ``pyproject.toml`` (with the dev extra and the pinned torch) without
installing anything (``pip install --dry-run --report``) and writes every resolved distribution as
``name==version``; ``make setup`` installs exactly those with ``--no-deps``. Each run's provenance
records the lock's SHA256 and whether the installed packages match it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

from .layout import REPO

LOCK = REPO / "requirements.lock"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_text(report: dict) -> str:
    """``requirements.lock`` from a ``pip install --dry-run --report`` JSON (the project itself left out)."""
    pins = sorted({(_norm(i["metadata"]["name"]), i["metadata"]["version"]) for i in report["install"]
                   if _norm(i["metadata"]["name"]) != "ltkit"})
    head = [f"# Locked by `make lock` (pip's resolver) for Python {sys.version_info.major}.{sys.version_info.minor}, "
            f"{platform.system()} {platform.machine()}; `make setup` installs exactly these (--no-deps).",
            "# torch 2.14.1 here is PyPI's default Linux build (CUDA 13 libraries included), which also runs on CPU.",
            "# On a CUDA box with another driver: edit TORCH in the Makefile, run `make lock`, commit the new lock."]
    return "\n".join(head + [f"{n}=={v}" for n, v in pins]) + "\n"


def read_lock(path: Path = LOCK) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name)] = version.strip()
    return out


def lock_status(path: Path = LOCK) -> dict:
    """The lock's SHA256 and the installed distributions that differ from it (empty: the exact lock)."""
    from importlib import metadata

    if not path.exists():
        return {"lock_sha256": None, "lock_mismatches": None}
    pins = read_lock(path)
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    off = sorted(f"{n}: locked {v}, installed {installed.get(n, 'none')}" for n, v in pins.items()
                 if installed.get(n) != v)
    return {"lock_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "lock_mismatches": off}


def main(argv: list[str] | None = None) -> int:
    """``python -m ltkit.core.envlock REPORT.json``: print the lock for a pip report."""
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.write(lock_text(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
