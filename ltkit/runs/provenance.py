"""Provenance: what made a run, recorded beside its numbers (command, commit, versions, lock, device).

Torch is imported only when a record is written (for its version and the device), so reading
results and planning grids stay light.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.envlock import lock_status
from ..core.hardware import cores, cpu_bf16_units, cpu_model
from ..core.layout import REPO


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(cwd: str | Path | None = None) -> dict[str, Any]:
    """The checkout's commit SHA and whether ``ltkit/`` has uncommitted changes.

    ``LTKIT_GIT_COMMIT`` wins (set where the tree travels without its ``.git``); without either,
    the commit is ``"unknown"``, never a guess (``git rev-parse HEAD`` outside a repository
    prints ``HEAD``).
    """
    env_sha = os.environ.get("LTKIT_GIT_COMMIT")
    if env_sha:
        return {"commit": env_sha, "dirty": None}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--verify", "HEAD")
        sha = head.stdout.strip()
        if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
            return {"commit": "unknown", "dirty": None}
        return {"commit": sha, "dirty": bool(git("status", "--porcelain", "--", "ltkit").stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def packages_digest() -> dict[str, Any]:
    """SHA256 of the sorted ``name==version`` list of installed distributions (what ``pip freeze`` shows)."""
    from importlib import metadata

    pins = sorted({f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"]})
    return {"packages_sha256": hashlib.sha256("\n".join(pins).encode()).hexdigest(), "packages": len(pins)}


def environment() -> dict[str, Any]:
    """Where and with what a run was made: versions, commit, the package lock, the device (its model name,
    threads or GPU count, native bf16 units), host and scheduler ids."""
    import torch

    cuda = torch.cuda.is_available()
    commit = git_commit(REPO)
    return {**packages_digest(), **lock_status(),
        "ltkit_version": __version__, "git": commit, "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None, "device_name": torch.cuda.get_device_name(0) if cuda else
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "cpu_model": cpu_model(), "cpu_bf16_units": list(cpu_bf16_units()), "threads": torch.get_num_threads(),
        "cores": cores(), "gpu_count": torch.cuda.device_count() if cuda else 0,
        "hostname": socket.gethostname(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_log": os.environ.get("LTKIT_SLURM_LOG"),
    }


def provenance(cfg, start: str, wall: float, status: str = "finished", error: str | None = None,
               dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """What made a run, with portable paths (:func:`ltkit.runs.portable.portable_provenance`: relative to the
    checkout, or named by ``$LTKIT_DATA`` / ``$LTKIT_CHECKPOINTS``): a committed record names no folder of
    the machine that made it."""
    from ..core.layout import checkpoints_root
    from .portable import portable_provenance

    out = _provenance(cfg, start, wall, status, error)
    if dataset is not None:
        out["dataset"] = dataset
    return portable_provenance(out, ckpt_root=checkpoints_root())


def _provenance(cfg, start: str, wall: float, status: str = "finished", error: str | None = None) -> dict[str, Any]:
    # what the run is, in the study's words: its method (name), loss, procedure and stage
    run = {"method": cfg.method, "loss": cfg.loss, "procedure": cfg.procedure, "stage": cfg.stage, "stage1": cfg.stage1}
    return {"run": run, "parameters": cfg.to_dict(), "run_path": cfg.run_path(), "fingerprint": cfg.fingerprint(),
            "command": os.environ.get("LTKIT_COMMAND") or " ".join(sys.argv), "start": start, "end": now(),
            "wall_seconds": round(wall, 2), "status": status, "error": error,
            "deterministic": cfg.deterministic, **environment()}
