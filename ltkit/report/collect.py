"""Collecting runs: one row per run folder under ``results/`` (following CE aliases), every metric and
the provenance figures the book shows. Whether a run counts as done is :mod:`ltkit.runs.status`'s
answer, the same one ``ltkit grid status`` gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..core.io import read_json_or_empty
from ..core.layout import ALIAS, METRICS, PROVENANCE, default_results_root, parse_run_dir
from ..runs.records import SPEND
from ..runs.status import Status, load_metrics, resolve_alias, run_status
from ..training.procedures import is_stage_two


def _run_dirs(root: Path):
    for p in sorted(root.rglob("seed*")):
        if p.is_dir() and ((p / METRICS).exists() or (p / ALIAS).exists()
                           or (p / PROVENANCE).exists() or (p / SPEND).exists()):
            yield p


def results_root(sub: str = "") -> Path:
    """``results/`` (or ``$LTKIT_RESULTS``, e.g. a scratch folder the tests fill) joined with ``sub``."""
    return default_results_root() / sub


def collect(root: str | Path) -> pd.DataFrame:
    """One row per run under ``root``: identity columns, status, every metric, provenance figures.

    An alias row carries its CE run's metrics and ``identical_to_ce = True``.
    """
    root = Path(root)
    rows: list[dict[str, Any]] = []
    if not root.exists():
        return pd.DataFrame()
    for d in _run_dirs(root):
        # root may be results/ or results/<protocol>: the identity is read from the run folder's own path
        row: dict[str, Any] = {**parse_run_dir(d), "path": str(d), "identical_to_ce": False}
        status = run_status(d)  # the grid's own judge: done needs complete.json, an alias a done CE run
        src = resolve_alias(d) if status in (Status.ALIAS, Status.ALIAS_PENDING) else d
        row["status"] = status
        row["identical_to_ce"] = src != d
        metrics = load_metrics(src) if status in (Status.DONE, Status.ALIAS) else None
        own = read_json_or_empty(d / PROVENANCE) or read_json_or_empty(d / ALIAS) or {}
        params = own.get("parameters") or {}
        row.update({k: params.get(k) for k in ("loss", "procedure", "sampler")})
        if status == Status.FAILED:
            row["error"] = own.get("error")
        if metrics:
            row.update(metrics)
            prov = read_json_or_empty(src / PROVENANCE)
            if prov:
                row["wall_seconds"] = prov.get("wall_seconds")
                extra = prov.get("procedure_extra") or prov.get("method_extra") or {}  # (the latter: older runs)
                row["train_seconds"] = _train_seconds(src, extra.get("train_seconds_total"))
                row["device_name"] = prov.get("device_name")
                row["git_commit"] = (prov.get("git") or {}).get("commit")
                row["end"] = prov.get("end")
                ds = prov.get("dataset") or {}
                row["normalization"] = (ds.get("normalization") or {}).get("kind", "dataset")
                row["legacy"] = "; ".join(legacy_reasons(prov))
        rows.append(row)
    return pd.DataFrame(rows)


def _train_seconds(run: Path, total: float | None) -> float | None:
    """The run's recorded training seconds; unknown (NaN), not 0, where it trained epochs whose time was not
    recorded (cRT / LWS runs made before their head-training epochs were timed), so a mean over seeds skips it."""
    if total == 0 and (run / "history.csv").exists():
        try:
            history = pd.read_csv(run / "history.csv")
        except pd.errors.EmptyDataError:  # no epochs at all (tau-norm, post-hoc LA): 0 s is the truth
            return total
        if len(history) and "seconds" not in history:
            return float("nan")
    return total


def curves(df: pd.DataFrame, column: str = "test_top1", by: tuple[str, ...] = ("data", "method", "seed"),
           scale: float = 100.0) -> pd.DataFrame:
    """Each run's per-epoch ``column`` from its ``history.csv`` in long form: ``by`` columns, ``epoch``, ``value``
    (x ``scale``), only the epochs that measured it. The test-set column is what the labelled "best epoch on
    test" is read from (tracked, never used to select); a stage-two run adds nothing (its few epochs re-train a
    classifier after the stage one's 200: its curve is on its own page, as is a two-expert run's, one row per expert
    and epoch)."""
    parts = []
    for _, row in df.iterrows():
        if is_stage_two(row.get("procedure")):
            continue
        try:
            h = pd.read_csv(resolve_alias(row["path"]) / "history.csv")
        except (OSError, pd.errors.EmptyDataError):
            continue
        if column not in h or "epoch" not in h or "expert" in h:
            continue
        h = h[["epoch", column]].dropna()
        parts.append(pd.DataFrame({**{k: row[k] for k in by}, "epoch": h["epoch"].astype(int),
                                   "value": h[column].astype(float) * scale}))
    if not parts:
        return pd.DataFrame(columns=[*by, "epoch", "value"])
    return pd.concat(parts, ignore_index=True)


def legacy_reasons(prov: dict) -> list[str]:
    """What makes a run's numbers not comparable with today's protocol (empty: nothing).

    Runs made before the recipes' own normalisation constants became the default (their provenance
    records no ``normalization``: they used the data set's statistics), and cao2019 runs made before
    the split drew Cao et al.'s images (no ``subset`` in their dataset record: the first n_i of each
    class), are kept as they are and labelled, never silently re-read as current.
    """
    ds = prov.get("dataset") or {}
    params = prov.get("parameters") or {}
    out = []
    if "normalization" not in ds:
        out.append("made before recipe normalisation (used the data's own mean/std)")
    if params.get("protocol") == "cao2019" and "subset" not in (ds.get("meta") or {}):
        out.append("made with the old cao2019 subset (first n_i images per class, not Cao et al.'s draw)")
    return out


def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin([Status.DONE, Status.ALIAS])] if len(df) else df


def split_legacy(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs comparable with today's protocol, runs labelled legacy by :func:`legacy_reasons`)."""
    if not len(df) or "legacy" not in df:
        return df, df.iloc[0:0]
    old = df["legacy"].fillna("").astype(bool)
    return df[~old], df[old]


def failed(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that failed, with the error their provenance recorded (an empty frame if none)."""
    cols = ["protocol", "data", "model", "method", "seed", "error"]
    if not len(df):
        return pd.DataFrame(columns=cols)
    return df[df["status"] == Status.FAILED].reindex(columns=cols)
