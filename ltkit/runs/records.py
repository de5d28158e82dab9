"""Writing a run's files (results, a failure, a CE alias) and reading a finished run back.

Every file is written atomically, ``metrics.json`` last among a run's own files; ``complete.json``
(:func:`ltkit.runs.status.mark_complete`) comes after them, from the grid runner.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.io import aside_stamp, atomic_write_bytes, atomic_write_csv, atomic_write_json, read_json, read_json_or_empty
from ..core.layout import ALIAS, METRICS, PROVENANCE
from .provenance import now, provenance
from .status import load_metrics, validate_metrics

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from torch import nn

    from ..config.fields import RunConfig


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    history: pd.DataFrame
    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    dataset: dict[str, Any]
    model: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
    prov = provenance(result.config, start, wall, dataset=result.dataset | {"classes": None})
    if "packed_with" in result.extra:  # trained as one packed model with these runs (ltkit.training.packed)
        prov["run"]["packed"] = {"with": result.extra["packed_with"], "size": result.extra["pack_size"]}
    prov["procedure_extra"] = extra
    atomic_write_json(out / PROVENANCE, prov)
    atomic_write_json(out / METRICS, validate_metrics(result.metrics))
    return out


SPEND = "spend.json"


def record_spend(out_dir: str | Path, entry: dict[str, Any]) -> None:
    """Append one attempt (finished, failed or interrupted) to the run's ``spend.json``: what it cost is
    kept even when it produced nothing. A file that is not such a record (truncated, edited by hand) is
    kept aside as ``spend.json.unreadable-<time>``, not overwritten. A disk too full to write it loses
    only this record."""
    path = Path(out_dir) / SPEND
    try:
        doc = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        doc = None
    attempts = doc.get("attempts", []) if isinstance(doc, dict) else None
    try:
        if not isinstance(attempts, list):
            os.replace(path, path.with_name(f"{SPEND}.unreadable-{aside_stamp()}"))
            _log.warning(f"{path} was not a spend record: kept aside as {SPEND}.unreadable-*, a new one started")
            attempts = []
        atomic_write_json(path, {"attempts": [*attempts, entry]})
    except OSError:
        pass


def _valid_attempt(entry: Any) -> bool:
    """A spend entry the sums can use: an object whose ``seconds`` (absent: 0) is a finite number >= 0."""
    if not isinstance(entry, dict):
        return False
    try:
        seconds = float(entry.get("seconds") or 0)
    except (TypeError, ValueError):
        return False
    return math.isfinite(seconds) and seconds >= 0


def record_failure(out_dir: str | Path, cfg, start: str, wall: float, error: str) -> None:
    """Keep what a failed run says about itself; metrics.json is never written for it."""
    atomic_write_json(Path(out_dir) / PROVENANCE, provenance(cfg, start, wall, status="failed", error=error))


def write_alias(out_dir: str | Path, cfg, target_path: str, reason: str, target_fingerprint: str) -> None:
    atomic_write_json(Path(out_dir) / ALIAS, {"alias_of": target_path, "reason": reason,
                                                     "parameters": cfg.to_dict(), "fingerprint": cfg.fingerprint(),
                                                     "target_fingerprint": target_fingerprint, "written": now()})


def load_record(output_dir: str | Path, cfg: RunConfig) -> RunResult:
    """A finished run read back from its results folder, in the shape :func:`train_and_record` returns
    (no model): what the notebook shows for a run that a packed model trained and recorded."""
    out = Path(output_dir)
    with np.load(out / "predictions.npz") as npz:
        preds = {k.removeprefix("pred_"): npz[k].astype(np.int64) for k in npz.files if k.startswith("pred_")}
        labels = {k.removeprefix("label_"): npz[k].astype(np.int64) for k in npz.files if k.startswith("label_")}
    try:
        history = pd.read_csv(out / "history.csv")
    except pd.errors.EmptyDataError:
        history = pd.DataFrame()
    prov = read_json(out / PROVENANCE)
    return RunResult(cfg, load_metrics(out) or {}, pd.read_csv(out / "per_class.csv"), history, preds, labels,
                     prov.get("dataset") or {},
                     extra={**(prov.get("procedure_extra") or {}), "record_of_pack": prov["run"].get("packed")})


def attempts(run_dir: str | Path) -> list[dict[str, Any]]:
    """What a run's attempts spent: ``spend.json`` (one entry per launch the grid ran: finished, failed or
    interrupted), plus the launch its provenance records where the grid has not added it yet (the card in
    the run's own notebook, written before the grid records the launch; a run made before spend was
    recorded), plus the launches that ended before spend was recorded at all, from the epoch times of
    ``history.csv`` (a lower bound: epoch time only, no start-up or final evaluation)."""
    run_dir = Path(run_dir)
    raw = read_json_or_empty(run_dir / SPEND).get("attempts") or []
    raw = raw if isinstance(raw, list) else [raw]
    entries = [e for e in raw if _valid_attempt(e)]
    if len(entries) < len(raw):
        _log.warning(f"{run_dir / SPEND}: {len(raw) - len(entries)} attempt entr(ies) ignored (not an object with "
                     "seconds a number >= 0)")
    prov = read_json_or_empty(run_dir / PROVENANCE)
    end = _when(prov.get("end"))
    gpus = prov.get("gpu_count") or (1 if prov.get("cuda") else 0)
    # named as the grid names a CPU attempt (its model), so one machine is one device in the compute tables
    machine = {"device": prov.get("device_name") if gpus else (prov.get("cpu_model") or prov.get("device_name")),
               "threads": prov.get("threads"), "cores": prov.get("cores"), "gpus": gpus}
    if prov.get("wall_seconds") and not any((_when(e.get("end")) or end) >= end for e in entries if end):
        entries.append({"outcome": "done" if prov.get("status") == "finished" else prov.get("status", "unknown"),
                        "seconds": float(prov["wall_seconds"]), **machine, "end": prov.get("end"),
                        "recorded": "provenance"})
    per_launch = _launch_seconds(run_dir)
    unrecorded = sorted(per_launch)[: max(0, len(per_launch) - len(entries))]  # the earliest launches
    if unrecorded:
        entries.insert(0, {"outcome": "interrupted", "seconds": round(sum(per_launch[k] for k in unrecorded), 2),
                           **machine, "launches": len(unrecorded),
                           "recorded": "history.csv (epoch time of launches before spend was recorded)"})
    return entries


def training_seconds(run_dir: str | Path, entries: list[dict[str, Any]] | None = None) -> float | None:
    """Wall seconds the current result took to train: its finishing attempt's, or, where that attempt resumed
    from a checkpoint, the epoch seconds of ``history.csv`` (each epoch once, whichever launch trained it),
    whichever is larger. The finishing attempt alone of a run resumed at epoch 170 is a seventh of a training,
    and a projection from it was a seventh of the truth. None: the run has not finished. ``entries``: the run's
    :func:`attempts`, where the caller has read them already."""
    run_dir = Path(run_dir)
    done = [float(e.get("seconds") or 0) for e in (attempts(run_dir) if entries is None else entries)
            if e.get("outcome") == "done"]
    if not done:
        return None
    return max(done[-1], sum(_launch_seconds(run_dir).values()))


def _launch_seconds(run_dir: Path) -> dict[int, float]:
    """Epoch seconds per launch from ``history.csv`` (empty where it has no launch column)."""
    try:
        h = pd.read_csv(run_dir / "history.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return {}
    if "launch" not in h or "seconds" not in h:
        return {}
    return {int(k): float(v) for k, v in h.groupby("launch")["seconds"].sum().items()}


def _when(stamp: Any):
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(stamp))
    except ValueError:
        return None


def launches(entry: dict[str, Any]) -> int:
    """How many launches an attempt entry stands for: one, or those from ``history.csv`` that
    :func:`attempts` lumps into one entry (they ended before spend was recorded)."""
    return int(entry.get("launches") or 1)


def device_hours(entry: dict[str, Any]) -> float:
    """An attempt's device-hours: wall hours x GPUs on a GPU, x threads / cores of the CPU on a CPU (the share
    of the machine it held), so a 1-thread run on 2 cores costs half a machine-hour per hour."""
    hours = float(entry.get("seconds") or 0) / 3600
    if entry.get("gpus"):
        return hours * int(entry["gpus"])
    threads, cores = entry.get("threads") or 0, entry.get("cores") or 0
    return hours * (threads / cores if threads and cores else 1.0)
