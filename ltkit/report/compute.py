"""Compute, honestly: what every attempt of every run spent (finished, failed and interrupted alike), by
method and in total, and what the rest of each grid would cost on the device that measured it (the
NeurIPS checklist's item 8 asks for the compute per run and in total, failed runs included)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.layout import REPO, parse_run_dir
from ..runs.records import attempts, device_hours, launches
from .collect import _run_dirs

OUTCOMES = ("done", "failed", "interrupted")


def attempts_table(root: str | Path) -> pd.DataFrame:
    """One row per attempt of every run under ``root``: identity, outcome, wall seconds, device-hours, device."""
    rows = []
    root = Path(root)
    for d in (_run_dirs(root) if root.exists() else ()):
        for e in attempts(d):
            rows.append({**parse_run_dir(d), "outcome": e.get("outcome"), "forced": bool(e.get("forced")),
                         "seconds": float(e.get("seconds") or 0), "device_hours": device_hours(e),
                         "device": e.get("device"), "recorded": e.get("recorded", "spend.json"),
                         "launches": launches(e)})
    return pd.DataFrame(rows)


def compute_table(att: pd.DataFrame) -> pd.DataFrame:
    """Device-hours by (protocol, data, method) and outcome, with attempts and a total row."""
    if att.empty:
        return pd.DataFrame()
    t = att.pivot_table(index=["protocol", "data", "method"], columns="outcome", values="device_hours", aggfunc="sum",
                        fill_value=0.0)
    t = t.reindex(columns=[c for c in (*OUTCOMES, *sorted(set(t.columns) - set(OUTCOMES))) if c in t.columns or
                           c in OUTCOMES], fill_value=0.0)
    t["attempts"] = att.groupby(["protocol", "data", "method"])["launches"].sum()
    t["total"] = t[[c for c in t.columns if c != "attempts"]].sum(axis=1)
    total = t.sum(numeric_only=True).to_frame().T
    total.index = pd.MultiIndex.from_tuples([("all", "", "")], names=t.index.names)
    out = pd.concat([t, total]).round(3)
    out["attempts"] = out["attempts"].astype(int)  # a count, not device-hours
    return out


def projections(grids: list[str] | None = None) -> pd.DataFrame:
    """Per grid: runs, finished, device-hours spent, runs left and their projected device-hours here."""
    from ..grid.plan import spend_summary
    from ..grid.spec import load_grid

    rows = []
    for g in grids or ["configs/cao2019-cifar100-if100.yaml", "configs/thesis.yaml"]:
        grid = load_grid(REPO / g)
        s = spend_summary(grid)
        rows.append({"grid": Path(g).stem, "runs": len(grid.runs), "left": s["left"], "spent (device-h)": s["total"],
                     "per training (device-h)": s["per_training"], "projected for the rest (device-h)": s["projected_left"]})
    return pd.DataFrame(rows)
