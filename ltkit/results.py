"""The ``results/`` layout: writing a run's files, provenance, validation and status.

A run directory ``results/<protocol>/<dataset tag>/<model>/<method>/seed<k>/`` holds

* ``train.ipynb``: the executed notebook (kept on failure, with its traceback);
* ``metrics.json``: the flat metrics dict (the run counts as finished only when
  this exists and passes :func:`validate_metrics`);
* ``per_class.csv``, ``history.csv``, ``predictions.npz``;
* ``provenance.json``: parameters, command, git commit, versions, device,
  start / end time, wall seconds, status;
* ``complete.json``: written last, by the grid runner, once every file above is
  in place (the notebook included); it records the configuration fingerprint;
* or ``alias.json`` instead: the run is identical to CE by construction and
  points at the CE run that stands for it (and records that run's fingerprint).

Every file is written atomically. A run is *done* only with a valid
``metrics.json`` and a ``complete.json`` whose fingerprint is the run's
configuration's; with another fingerprint it is *stale* (the grid was edited
after it ran) and is never reused silently.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .envlock import lock_status
from .hardware import cores, cpu_bf16_units, cpu_model
from .io import atomic_write_bytes, atomic_write_csv, atomic_write_json, read_json
from .layout import ALIAS, COMPLETE, METRICS, PROVENANCE, REPO, root_of
from .metrics import EPOCHS, HEADLINE, SELECTED_EPOCH

REQUIRED_METRICS = {HEADLINE: float, SELECTED_EPOCH: int, EPOCHS: int}


class Status(StrEnum):
    """What a run is, as ``ltkit grid status`` shows it (strings, so they print and serialise as such).

    Read from the results folder (:func:`run_status`): DONE, STALE, ALIAS, ALIAS_PENDING,
    FAILED, MISSING; the grid adds from the checkpoint folder: RUNNING (a lock is held)
    and PARTIAL (a checkpoint to resume from).
    """

    DONE = "done"
    STALE = "stale"  # finished, but with another configuration than the grid's
    ALIAS = "alias"  # identical to a finished CE run by construction
    ALIAS_PENDING = "alias-pending"  # an alias whose CE run is not (or not validly) done
    FAILED = "failed"
    MISSING = "missing"
    RUNNING = "running"
    PARTIAL = "partial"



class InvalidMetrics(ValueError):
    pass


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def validate_metrics(d: Any) -> dict:
    """A small schema: a flat dict of finite-or-NaN numbers with the required keys, accuracies in [0, 1]."""
    if not isinstance(d, dict):
        raise InvalidMetrics(f"metrics must be a JSON object, got {type(d).__name__}")
    for key, typ in REQUIRED_METRICS.items():
        if key not in d:
            raise InvalidMetrics(f"metrics lack {key!r}")
        if typ is int and (isinstance(d[key], bool) or not isinstance(d[key], int)):
            raise InvalidMetrics(f"metrics {key!r} must be an integer, got {d[key]!r}")
    for key, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidMetrics(f"metrics {key!r} must be a number, got {v!r}")
        if key.endswith(("top1", ".head", ".middle", ".tail", ".many", ".medium", ".few")) and np.isfinite(v) \
                and not 0 <= v <= 1:
            raise InvalidMetrics(f"metrics {key!r} = {v} is not an accuracy in [0, 1]")
    return d


def load_metrics(run_dir: str | Path) -> dict | None:
    """The run's metrics if it finished and they validate, else None."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return None
    try:
        return validate_metrics(read_json(path))
    except (json.JSONDecodeError, InvalidMetrics, OSError):
        return None


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


def provenance(cfg, start: str, wall: float, status: str = "finished", error: str | None = None) -> dict[str, Any]:
    # what the run is, in the study's words: its method (name), loss, procedure and stage
    run = {"method": cfg.method, "loss": cfg.loss, "procedure": cfg.procedure, "stage": cfg.stage, "stage1": cfg.stage1}
    return {"run": run, "parameters": cfg.to_dict(), "run_path": cfg.run_path(), "fingerprint": cfg.fingerprint(),
            "command": os.environ.get("LTKIT_COMMAND") or " ".join(sys.argv), "start": start, "end": now(),
            "wall_seconds": round(wall, 2), "status": status, "error": error,
            "deterministic": cfg.deterministic, **environment()}


def write_run(out_dir: str | Path, result, start: str, wall: float) -> Path:
    """Write every file of a finished run; metrics.json goes last, so its presence means 'done'."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "per_class.csv", result.per_class)
    atomic_write_csv(out / "history.csv", result.history)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"pred_{k}": v.astype(np.int16) for k, v in result.predictions.items()},
                        **{f"label_{k}": v.astype(np.int16) for k, v in result.labels.items()})
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    extra = {k: (v.to_dict(orient="list") if hasattr(v, "to_dict") else v) for k, v in result.extra.items()}
    prov = provenance(result.config, start, wall)
    if "packed_with" in result.extra:  # trained as one packed model with these runs (ltkit.packed)
        prov["run"]["packed"] = {"with": result.extra["packed_with"], "size": result.extra["pack_size"]}
    prov["dataset"] = result.dataset | {"classes": None}
    prov["procedure_extra"] = extra
    atomic_write_json(out / PROVENANCE, prov)
    atomic_write_json(out / METRICS, validate_metrics(result.metrics))
    return out


def record_failure(out_dir: str | Path, cfg, start: str, wall: float, error: str) -> None:
    """Keep what a failed run says about itself; metrics.json is never written for it."""
    atomic_write_json(Path(out_dir) / PROVENANCE, provenance(cfg, start, wall, status="failed", error=error))


def write_alias(out_dir: str | Path, cfg, target_path: str, reason: str, target_fingerprint: str) -> None:
    atomic_write_json(Path(out_dir) / ALIAS, {"alias_of": target_path, "reason": reason,
                                                     "parameters": cfg.to_dict(), "fingerprint": cfg.fingerprint(),
                                                     "target_fingerprint": target_fingerprint, "written": now()})


def mark_complete(run_dir: str | Path, fingerprint: str) -> None:
    """The last write of a finished run: every other file is in place."""
    atomic_write_json(Path(run_dir) / COMPLETE, {"fingerprint": fingerprint, "completed": now()})


def _fingerprint_of(path: Path) -> str | None:
    try:
        return read_json(path).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def run_status(run_dir: str | Path, fingerprint: str | None = None) -> Status:
    """done / stale / alias / failed / missing (locks and checkpoints are checked by the grid).

    *done* needs a valid ``metrics.json`` and ``complete.json``; with ``fingerprint`` given, a
    finished run (or alias) made with another configuration is *stale*. An alias is *alias* only
    while the CE run it points to is done with the fingerprint the alias recorded.
    """
    run_dir = Path(run_dir)
    if (run_dir / COMPLETE).exists() and load_metrics(run_dir) is not None:
        done_fp = _fingerprint_of(run_dir / COMPLETE)
        return Status.STALE if fingerprint is not None and done_fp != fingerprint else Status.DONE
    alias = run_dir / ALIAS
    if alias.exists():
        try:
            a = read_json(alias)
        except (OSError, json.JSONDecodeError):
            return Status.MISSING
        if fingerprint is not None and a.get("fingerprint") != fingerprint:
            return Status.STALE
        target = root_of(run_dir) / a.get("alias_of", "")
        return Status.ALIAS if run_status(target, a.get("target_fingerprint")) == Status.DONE else Status.ALIAS_PENDING
    prov = run_dir / PROVENANCE
    if prov.exists():
        try:
            if read_json(prov).get("status") == "failed":
                return Status.FAILED
        except (json.JSONDecodeError, OSError):
            pass
    return Status.MISSING


def read_notebook(nb_path: str | Path):
    """The notebook as an nbformat v4 node, or None when it is missing or not a notebook."""
    import nbformat

    try:
        return nbformat.read(str(nb_path), as_version=4)
    except (OSError, ValueError, nbformat.reader.NotJSONError):
        return None


def notebook_error(nb_path: str | Path) -> str | None:
    """The error a papermill-executed notebook recorded, if any (ename: evalue)."""
    nb = read_notebook(nb_path)
    if nb is None:
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return None
