"""Statistics tables: mean ± std over seeds, differences with intervals and adjusted p-values, the
thesis's categories and the shot groups, best values in bold within their blocks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config.fields import parse_data_tag
from ..core.stats import adjust_pvalues, bootstrap_difference, paired_difference, t_interval
from ..metrics import HEADLINE, key, relative_accuracy
from ..runs.status import resolve_alias
from .names import method_order

CATEGORIES = {key("balanced"): "Balanced", key("lt"): "Long-tailed", key("lt", "head"): "Head",
              key("lt", "middle"): "Middle", key("lt", "tail"): "Tail"}
SHOT = {key("balanced"): "All", key("balanced", "many"): "Many", key("balanced", "medium"): "Medium",
        key("balanced", "few"): "Few"}


# --------------------------------------------------------------------------- tables


def mean_std_table(df: pd.DataFrame, index: list[str], metrics: dict[str, str], scale: float = 100.0,
                   digits: int = 2, best_within: list[str] | None = None) -> pd.DataFrame:
    """'mean ± std' over seeds per group; for a single seed, 'value [low, high]' with the run's own
    95% interval over its test images (:func:`ltkit.core.stats.accuracy_ci`) (``<key>_ci_low/high`` in metrics.json), so a
    one-seed table still shows how wide a 38-image tail column is.

    ``best_within`` (index levels, ``[]`` for the whole column) bolds the highest mean of each column
    within each such block (Markdown ``**``, for :func:`md_table`): the best loss per backbone, say.
    """
    present = [col for col in metrics if col in df]
    if not present:
        have = sorted(c for c in df.columns if "." in c and not c.endswith(("_low", "_high", "_n")))
        raise ValueError(f"none of the metrics {sorted(metrics)} is a column of these runs; they have: {', '.join(have)}")
    out, means = {}, {}
    for col in present:
        name = metrics[col]
        g = df.groupby(index)[col]
        m, s, n = g.mean() * scale, g.std(ddof=1) * scale, g.count()
        lo = df.groupby(index)[f"{col}_ci_low"].first() * scale if f"{col}_ci_low" in df else None
        hi = df.groupby(index)[f"{col}_ci_high"].first() * scale if f"{col}_ci_high" in df else None
        cells = []
        for grp, a, b, c in zip(m.index, m, s, n, strict=True):
            if not (c > 1 and np.isfinite(b)) and lo is not None and hi is not None \
                    and np.isfinite(lo.loc[grp]) and np.isfinite(hi.loc[grp]):
                cells.append(f"{a:.{digits}f} [{lo.loc[grp]:.{digits}f}, {hi.loc[grp]:.{digits}f}]")
            else:
                cells.append(mean_std(a, b, c, digits))
        out[name], means[name] = cells, m
        idx = m.index
    table = pd.DataFrame(out, index=idx)
    if best_within is not None:
        table = bold_best(table, pd.DataFrame(means, index=idx), best_within)
    # a seed is a run with a number in the table: one still training or failed (NaN throughout) is none
    counted = df[present].notna().any(axis=1)
    table["seeds"] = counted.groupby([df[i] for i in index]).sum().loc[table.index].values
    return table


def mean_std(mean: float, std: float, n: int, digits: int = 2) -> str:
    """'mean ± std', or just the mean when there is no spread to show (one value); '–' for no value."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 and np.isfinite(std) else "")


def bold_best(table: pd.DataFrame, values: pd.DataFrame, within: list[str], higher: bool = True) -> pd.DataFrame:
    """Bold (Markdown ``**``) each column's best cell of ``table`` by ``values`` (same index and columns),
    per block of equal ``within`` index levels; ties are all bold; a block with one finite value has no best."""
    out = table.copy()
    blocks = values.groupby(level=within) if within else [(None, values)]
    for _, v in blocks:
        for col in v.columns:
            x = pd.to_numeric(v[col], errors="coerce")
            if x.notna().sum() < 2:
                continue
            best = x.max() if higher else x.min()
            for row in x.index[np.isclose(x.to_numpy(dtype=float), best, rtol=0, atol=1e-9)]:
                out.loc[row, col] = f"**{out.loc[row, col]}**"
    return out


def seed_means(df: pd.DataFrame, keys: list[str], scale: float = 100.0) -> pd.DataFrame:
    """Mean over seeds per (data, model, method): the one number per cell the thesis tables show."""
    return df.groupby(["data", "model", "method"])[keys].mean() * scale


def _across_groups(df: pd.DataFrame, over: str, metrics: dict[str, str]):
    """Per-cell seed means grouped by (data, the axis that is not ``over``), and the metric keys present."""
    keys = [k for k in metrics if k in df]
    cell = seed_means(df, keys).reset_index()
    return cell.groupby(["data", "model" if over == "method" else "method"])[keys], keys


def across(df: pd.DataFrame, over: str, metrics: dict[str, str] | None = None, digits: int = 2,
           mark_best: bool = False) -> pd.DataFrame:
    """Mean ± std *across* ``over`` ('method' or 'model') of the per-cell seed means.

    ``over='method'`` gives each backbone's mean ± std across losses (thesis Table 4.10 /
    Fig 4.1); ``over='model'`` each loss's mean ± std across backbones (Table 4.11 /
    Fig 4.6). The std here measures how much the choice of ``over`` matters, not
    seed noise (that is in the per-model tables). ``mark_best`` bolds each column's best per data set.
    """
    metrics = metrics or CATEGORIES
    g, keys = _across_groups(df, over, metrics)
    m, s, n = g.mean(), g.std(ddof=1), g.count()
    out = pd.DataFrame(index=m.index)
    for k in keys:
        out[metrics[k]] = [mean_std(a, b, c, digits) for a, b, c in zip(m[k], s[k], n[k], strict=True)]
    if mark_best:
        out = bold_best(out, m[keys].rename(columns=metrics), ["data"])
    out[f"n {over}s"] = n[keys[0]].to_numpy()
    return out


def across_long(df: pd.DataFrame, over: str, metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """The per-cell seed means behind :func:`across` in long form (see :func:`tidy`), for :func:`bars`."""
    metrics = metrics or CATEGORIES
    keys = [k for k in metrics if k in df]
    cell = seed_means(df, keys, scale=1.0).reset_index()
    return tidy(cell, metrics, ["data", "model", "method"])


def relative_accuracy_table(df: pd.DataFrame, metrics: dict[str, str] | None = None) -> pd.DataFrame:
    """Accuracy after long-tailed training divided by accuracy after balanced training, same backbone
    and loss, per category (Zhang et al. 2023's relative accuracy, :func:`ltkit.metrics.relative_accuracy`).

    1.0 means the imbalance cost nothing; the tail column shows where it costs most.
    Needs both ``<dataset>_balanced`` and a long-tailed data tag of the same dataset.
    """

    metrics = metrics or CATEGORIES
    keys = [k for k in metrics if k in df]
    cell = seed_means(df, keys, scale=1.0).reset_index()
    tags = cell["data"].map(parse_data_tag)
    cell["dataset"] = tags.map(lambda t: t["dataset"])
    balanced = tags.map(lambda t: t["imb_factor"] == 1).astype(bool)
    bal = cell[balanced].set_index(["dataset", "model", "method"])
    rows = []
    for _, r in cell[~balanced].iterrows():
        key = (r["dataset"], r["model"], r["method"])
        if key not in bal.index:
            continue
        b = bal.loc[key]
        rows.append({"data": r["data"], "model": r["model"], "method": r["method"],
                     **{metrics[k]: relative_accuracy(r[k], b[k]) for k in keys}})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["data", "model", "method"]).round(3)


def seed_summary(df: pd.DataFrame, index: list[str], key: str, scale: float = 100.0) -> pd.DataFrame:
    """Mean, std, n and the 95% t-interval over seeds, per group."""
    rows = []
    for name, g in df.groupby(index):
        vals = g[key].dropna().to_numpy() * scale
        if not len(vals):
            continue
        m, lo, hi = t_interval(vals)
        rows.append({**dict(zip(index, name if isinstance(name, tuple) else (name,), strict=True)), "mean": m,
                     "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else np.nan, "n": len(vals),
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def compare_to_baseline(df: pd.DataFrame, key: str, by: list[str], baseline: str = "ce",
                        scale: float = 100.0) -> pd.DataFrame:
    """Each method minus the baseline, paired across seeds, with its 95% t-interval.

    With a single seed, falls back to a paired bootstrap over the test images
    from the runs' saved predictions (:func:`ltkit.core.stats.bootstrap_difference`).
    The table is one family of tests: ``p_adj`` are Benjamini-Hochberg adjusted
    p-values over all its rows, and ``significant`` means ``p_adj`` < 0.05 (the
    intervals themselves are per comparison, unadjusted).

    Only the seeds both runs have are paired, so a method with one seed is held against CE's run of that
    seed, not CE's mean over three: ``seeds`` names them ('0, 1, 2'), ``baseline_mean`` / ``method_mean``
    are the two sides' means on exactly those seeds, the numbers ``diff`` is the difference of. A seed
    without the number (a run still training or failed, as :func:`ltkit.report.collect` lists it) has
    nothing to pair: it is left out, not counted as a seed.
    """

    rows = []
    for grp, g in df[df[key].notna()].groupby(by):
        base = g[g["method"] == baseline].set_index("seed")
        for method, gm in g.groupby("method"):
            if method == baseline or base.empty:
                continue
            gm = gm.set_index("seed")
            seeds = sorted(set(base.index) & set(gm.index))
            if len(seeds) >= 2:
                r = paired_difference(gm.loc[seeds, key].to_numpy() * scale, base.loc[seeds, key].to_numpy() * scale)
                r["how"] = f"paired t over {len(seeds)} seeds"
            elif len(seeds) == 1 and "path" in gm:  # no saved predictions to resample: no interval to give
                split = key.split(".")[0]
                pa, pb = _predictions(gm.loc[seeds[0], "path"], split), _predictions(base.loc[seeds[0], "path"], split)
                if pa is None or pb is None:
                    continue
                mask = _group_mask(gm.loc[seeds[0], "path"], key, pa[1])
                r = bootstrap_difference((pa[0] == pa[1])[mask], (pb[0] == pb[1])[mask], pa[1][mask])
                r = {k: (v * scale if k in ("diff", "low", "high") else v) for k, v in r.items()}
                r["how"] = "paired bootstrap over test images (1 seed)"
            else:
                continue
            rows.append({**dict(zip(by, grp if isinstance(grp, tuple) else (grp,), strict=True)), "method": method, **r,
                         "seeds": ", ".join(str(s) for s in seeds), "n_seeds": len(seeds),
                         "baseline_mean": float(base.loc[seeds, key].mean()) * scale,
                         "method_mean": float(gm.loc[seeds, key].mean()) * scale})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_adj"] = adjust_pvalues(out["p"].to_numpy())
        out["significant"] = out["p_adj"] < 0.05
    return out


def _predictions(path: str, split: str):
    f = resolve_alias(path) / "predictions.npz"
    if not f.exists():
        return None
    z = np.load(f)
    if f"pred_{split}" not in z:
        return None
    return z[f"pred_{split}"].astype(int), z[f"label_{split}"].astype(int)


def _group_mask(path: str, key: str, labels: np.ndarray) -> np.ndarray:
    group = key.split(".", 1)[1]
    if group == "top1":
        return np.ones(len(labels), bool)
    pc = pd.read_csv(resolve_alias(path) / "per_class.csv")
    return pc[f"group_{group}"].to_numpy()[labels]


# --------------------------------------------------------------------------- beside the papers


# --------------------------------------------------------------------------- numbered tables for the book


def comparison_table(cmp: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """:func:`compare_to_baseline`'s rows as a reader scans them: the difference with its 95% interval
    in one cell ('+1.23 [−0.41, +2.87]'), BH-adjusted p, a yes/no verdict, and how it was computed."""
    if not len(cmp):
        return pd.DataFrame()
    out = cmp[by + ["method"]].copy()
    out["difference [95% CI]"] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in
                                  zip(cmp["diff"], cmp["low"], cmp["high"], strict=True)]
    out["p (BH)"] = [f"{p:.3f}" for p in cmp["p_adj"]]
    out["significant"] = cmp["significant"].to_numpy()
    out["how"] = cmp["how"].to_numpy()
    if "seeds" in cmp:  # which seeds were paired: a one-seed method meets CE's run of that seed only
        out["seeds"] = cmp["seeds"].to_numpy()
    out["method"] = pd.Categorical(out["method"], method_order(out["method"].unique()), ordered=True)
    return out.sort_values(by + ["method"]).assign(method=lambda t: t["method"].astype(str))


# --------------------------------------------------------------------------- figures


def tidy(df: pd.DataFrame, metrics: dict[str, str], by: list[str], scale: float = 100.0) -> pd.DataFrame:
    """One row per (run, metric): ``by`` columns, ``category`` (the metric's display name), ``value`` and the
    run's own 95% interval over the test images (``ci_low``, ``ci_high``; NaN where the run has none).

    The long form seaborn plots from, so error bars and per-seed points come from the runs themselves.
    """
    parts = []
    for k in (k for k in metrics if k in df):
        part = df[by].assign(key=k, value=df[k] * scale)
        for end in ("low", "high"):
            part[f"ci_{end}"] = df[f"{k}_ci_{end}"] * scale if f"{k}_ci_{end}" in df else np.nan
        parts.append(part.assign(category=metrics[k]))
    if not parts:
        return pd.DataFrame(columns=[*by, "key", "value", "ci_low", "ci_high", "category"])
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def variance_sources(df: pd.DataFrame, key: str = HEADLINE, method: str = "ce", scale: float = 100.0) -> pd.DataFrame:
    """How much a number moves with each source of variation, from finished runs of one recipe: the
    initialisation seed (seeds on Cao et al.'s subset, subset seed 0) and the subset (subset seeds at
    initialisation seed 0), as the std over runs in points, per data set (data tags without the subset)."""
    from .collect import finished

    done = finished(df)
    if done.empty or key not in done:
        return pd.DataFrame()
    done = done[done["method"] == method].copy()
    if done.empty:
        return pd.DataFrame()
    tags = done["data"].map(parse_data_tag)
    done["subset_seed"] = tags.map(lambda t: t["subset_seed"])
    done["setting"] = [d.rsplit("_subset", 1)[0] for d in done["data"]]
    rows = []
    for (protocol, setting, model), g in done.groupby(["protocol", "setting", "model"]):
        for source, part in (("initialisation seed", g[g["subset_seed"] == 0]),
                             ("training subset", g[g["seed"] == g["seed"].min()])):
            vals = part[key] * scale
            rows.append({"protocol": protocol, "data": setting, "model": model, "source": source, "runs": len(vals),
                         "values": ", ".join(f"{v:.2f}" for v in vals),
                         "std (points)": round(float(vals.std(ddof=1)), 2) if len(vals) > 1 else float("nan")})
    return pd.DataFrame(rows)
