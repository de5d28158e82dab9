"""A run's folder under ``results/``: what it holds and what state it is in (the one judge of *done*).

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

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_write_json, read_json
from ..core.layout import ALIAS, COMPLETE, METRICS, PROVENANCE, root_of
from ..metrics import EPOCHS, HEADLINE, SELECTED_EPOCH
from .provenance import now

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


def mark_complete(run_dir: str | Path, fingerprint: str) -> None:
    """The last write of a finished run: every other file is in place."""
    atomic_write_json(Path(run_dir) / COMPLETE, {"fingerprint": fingerprint, "completed": now()})


def adopt_legacy_run(run_dir: str | Path) -> bool:
    """Mark a run made before ``complete.json`` existed as complete, from its own record: only when its
    ``metrics.json`` is valid and its provenance says it finished (``complete.json`` then says it was
    adopted, with the provenance's fingerprint and end). Returns whether it did; never overwrites."""
    run_dir = Path(run_dir)
    prov = run_dir / PROVENANCE
    if (run_dir / COMPLETE).exists() or load_metrics(run_dir) is None or not prov.exists():
        return False
    p = read_json(prov)
    if p.get("status") != "finished" or not p.get("fingerprint"):
        return False
    atomic_write_json(run_dir / COMPLETE, {"fingerprint": p["fingerprint"], "completed": p.get("end"),
                                           "adopted": "made before complete.json existed; marked from its provenance"})
    return True


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


def resolve_alias(run_dir: str | Path) -> Path:
    """The folder that holds a run's files: itself, or for a CE alias the CE run it points to.

    ``alias.json`` stores the target relative to the results root (:func:`ltkit.core.layout.root_of`).
    """
    p = Path(run_dir)
    if (p / ALIAS).exists() and not (p / METRICS).exists():
        return root_of(p) / read_json(p / ALIAS)["alias_of"]
    return p
