"""Writing a run's files (results, a failure, a CE alias) and reading a finished run back.

Every file is written atomically, ``metrics.json`` last among a run's own files; ``complete.json``
(:func:`ltkit.runs.status.mark_complete`) comes after them, from the grid runner.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, read_json
from ..core.layout import ALIAS, METRICS, PROVENANCE
from .provenance import now, provenance
from .status import load_metrics, validate_metrics

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
    prov = provenance(result.config, start, wall)
    if "packed_with" in result.extra:  # trained as one packed model with these runs (ltkit.training.packed)
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
