"""Report helpers: read ``results/`` into tables and draw the figures of the notebook and the book.

Every number the book shows goes through :func:`collect`, which reads the
run folders (following CE aliases) and never anything typed by hand.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_write_text, read_json, stat_digest
from .layout import ALIAS, EXECUTED_NOTEBOOK, METRICS, PROVENANCE, REPO, default_results_root, parse_run_dir, root_of
from .metrics import BEST_EPOCH_ON_TEST, HEADLINE, key, relative_accuracy
from .results import Status, load_metrics
from .stats import adjust_pvalues, bootstrap_difference, paired_difference, t_interval

THESIS_LOSS_ORDER = ["ce", "focal", "wce", "cb", "bs", "seql", "ldam"]
# The thesis's five categories (Table 4.x columns) and the shot groups of the CIFAR-LT literature
CATEGORIES = {key("balanced"): "Balanced", key("lt"): "Long-tailed", key("lt", "head"): "Head",
              key("lt", "middle"): "Middle", key("lt", "tail"): "Tail"}
SHOT = {key("balanced"): "All", key("balanced", "many"): "Many", key("balanced", "medium"): "Medium",
        key("balanced", "few"): "Few"}


# --------------------------------------------------------------------------- collecting runs


def _run_dirs(root: Path):
    for p in sorted(root.rglob("seed*")):
        if p.is_dir() and ((p / METRICS).exists() or (p / ALIAS).exists()
                           or (p / PROVENANCE).exists()):
            yield p


def resolve_alias(run_dir: str | Path) -> Path:
    """The folder that holds a run's files: itself, or for a CE alias the CE run it points to.

    ``alias.json`` stores the target relative to the results root (:func:`ltkit.layout.root_of`).
    """
    p = Path(run_dir)
    if (p / ALIAS).exists() and not (p / METRICS).exists():
        return root_of(p) / read_json(p / ALIAS)["alias_of"]
    return p


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
        src = resolve_alias(d)
        metrics = load_metrics(src)
        if src != d:
            row["identical_to_ce"] = True
            row["status"] = Status.ALIAS if metrics is not None else Status.ALIAS_PENDING
        elif metrics is not None:
            row["status"] = Status.DONE
        else:
            prov = _safe_json(d / PROVENANCE)
            row["status"] = prov.get("status", Status.MISSING) if prov else Status.MISSING
            row["error"] = prov.get("error") if prov else None
        if metrics:
            row.update(metrics)
            prov = _safe_json(src / PROVENANCE)
            if prov:
                row["wall_seconds"] = prov.get("wall_seconds")
                extra = prov.get("procedure_extra") or prov.get("method_extra") or {}  # (the latter: older runs)
                row["train_seconds"] = extra.get("train_seconds_total")
                row["device_name"] = prov.get("device_name")
                row["git_commit"] = (prov.get("git") or {}).get("commit")
                row["end"] = prov.get("end")
                ds = prov.get("dataset") or {}
                row["normalization"] = (ds.get("normalization") or {}).get("kind", "dataset")
                row["legacy"] = "; ".join(legacy_reasons(prov))
        rows.append(row)
    return pd.DataFrame(rows)


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


def _safe_json(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError):
        return None


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


# --------------------------------------------------------------------------- tables


def mean_std_table(df: pd.DataFrame, index: list[str], metrics: dict[str, str], scale: float = 100.0,
                   digits: int = 2, best_within: list[str] | None = None) -> pd.DataFrame:
    """'mean ± std' over seeds per group; for a single seed, 'value [low, high]' with the run's own
    95% interval over its test images (:func:`ltkit.stats.accuracy_ci`) (``<key>_ci_low/high`` in metrics.json), so a
    one-seed table still shows how wide a 38-image tail column is.

    ``best_within`` (index levels, ``[]`` for the whole column) bolds the highest mean of each column
    within each such block (Markdown ``**``, for :func:`md_table`): the best loss per backbone, say.
    """
    out, means = {}, {}
    for col, name in metrics.items():
        if col not in df:
            continue
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
    table["seeds"] = df.groupby(index).size().loc[table.index].values
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
    cell["dataset"] = cell["data"].str.rsplit("_", n=1).str[0]
    bal = cell[cell["data"].str.endswith("_balanced")].set_index(["dataset", "model", "method"])
    rows = []
    for _, r in cell[~cell["data"].str.endswith("_balanced")].iterrows():
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
    from the runs' saved predictions (:func:`ltkit.stats.bootstrap_difference`).
    The table is one family of tests: ``p_adj`` are Benjamini-Hochberg adjusted
    p-values over all its rows, and ``significant`` means ``p_adj`` < 0.05 (the
    intervals themselves are per comparison, unadjusted).
    """

    rows = []
    for grp, g in df.groupby(by):
        base = g[g["method"] == baseline].set_index("seed")
        for method, gm in g.groupby("method"):
            if method == baseline or base.empty:
                continue
            gm = gm.set_index("seed")
            seeds = sorted(set(base.index) & set(gm.index))
            if len(seeds) >= 2:
                r = paired_difference(gm.loc[seeds, key].to_numpy() * scale, base.loc[seeds, key].to_numpy() * scale)
                r["how"] = f"paired t over {len(seeds)} seeds"
            elif len(seeds) == 1:
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
            rows.append({**dict(zip(by, grp if isinstance(grp, tuple) else (grp,), strict=True)), "method": method, **r})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_adj"] = adjust_pvalues(out["p"].to_numpy())
        out["significant"] = out["p_adj"] < 0.05
    return out


def findings(df: pd.DataFrame, key: str = HEADLINE, scale: float = 100.0) -> list[str]:
    """The study's headline findings as sentences, computed from finished runs (the landing page).

    Per protocol and data set: the best (backbone, method) by the mean of ``key`` over seeds,
    with its spread, beside plain CE on the same backbone and its paired difference
    (:func:`compare_to_baseline`: BH-adjusted over the whole comparison). Empty without runs.
    """
    if not len(df) or key not in df:
        return []
    out = []
    cmp = compare_to_baseline(df, key, ["protocol", "data", "model"])
    for (protocol, data), g in df.groupby(["protocol", "data"]):
        s = seed_summary(g, ["model", "method"], key, scale)
        if not len(s):
            continue
        best = s.loc[s["mean"].idxmax()]
        ce = s[(s["model"] == best["model"]) & (s["method"] == "ce")]
        if len(ce) and float(ce["mean"].iloc[0]) >= best["mean"]:  # a tie with CE (an alias, say) is CE's
            best = ce.iloc[0]
        spread = (f"± {best['std']:.2f} over {int(best['n'])} seeds" if best["n"] > 1 else "1 seed")
        text = (f"**{protocol}, {data}**: best is {method_label(best['method'])} on {best['model']}, {best['mean']:.2f} % "
                f"balanced top-1 ({spread})")
        if best["method"] != "ce" and len(ce):
            row = cmp[(cmp["protocol"] == protocol) & (cmp["data"] == data) & (cmp["model"] == best["model"])
                      & (cmp["method"] == best["method"])] if len(cmp) else cmp
            verdict = ""
            if len(row):
                r0 = row.iloc[0]
                verdict = (f"; difference {r0['diff']:+.2f} points [{r0['low']:+.2f}, {r0['high']:+.2f}], "
                           + ("significant" if r0["significant"] else "not significant") + " after BH adjustment")
            text += f", against CE's {float(ce['mean'].iloc[0]):.2f} %{verdict}"
        elif best["method"] == "ce":
            text += "; no method beats plain CE here"
        out.append(text + ".")
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

# our method label -> the name the published table uses for the same method
PUBLISHED_NAMES = {"la": "la_loss", "cb": "cb_reweighting", "ce_cbs": "cb_resampling"}
RECIPE_REASONS = {
    "cao2019": "same recipe as ours, but the paper reports one run's best epoch measured on the test set, "
               "ours is a mean over seeds",
    "la_recipe": "Menon et al. train longer than the cao2019 recipe (and average 5 trials)",
    "cui_recipe": "Cui et al.'s schedule and augmentation differ from the cao2019 recipe",
}
INVESTIGATE_POINTS = 1.5  # a mean this far from a same-recipe published number is a finding (issue: honest numbers)


def against_published(df: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """Our CIFAR-LT means beside the published numbers for the same dataset, IF and method.

    Ours: last epoch (primary) and best epoch on the test set (what the cao2019 code
    logs), mean and std over seeds. ``beyond_spread``: |best-on-test - published| is
    larger than our seed std (or than 0.5 points with a single seed); ``investigate``:
    larger than 1.5 points for a same-recipe (cao2019) number.
    """
    best = BEST_EPOCH_ON_TEST
    rows = []
    for (data, method), g in df.groupby(["data", "method"]):
        name = PUBLISHED_NAMES.get(method, method)
        for _, p in pub[pub["method"] == name].iterrows():
            tag = f"{p['dataset'].removesuffix('_lt')}_exp{int(p['imbalance_factor'])}"
            if tag != data:
                continue
            last, bot = g[HEADLINE] * 100, (g[best] * 100 if best in g else pd.Series(dtype=float))
            spread = float(bot.std(ddof=1)) if len(bot) > 1 else float("nan")
            diff = float(bot.mean() - p["top1_percent"]) if len(bot) else float("nan")
            recipe = str(p["recipe_note"]).split()[0]
            rows.append({"data": data, "method": method, "seeds": len(g), "ours_last": float(last.mean()),
                         "ours_last_std": float(last.std(ddof=1)) if len(g) > 1 else float("nan"),
                         "ours_best_on_test": float(bot.mean()) if len(bot) else float("nan"),
                         "seed_std": spread, "published": float(p["top1_percent"]), "source": p["source"],
                         "recipe": recipe, "diff": diff,
                         "beyond_spread": bool(abs(diff) > (spread if np.isfinite(spread) else 0.5)),
                         "investigate": bool(recipe == "cao2019" and abs(diff) > INVESTIGATE_POINTS)})
    return pd.DataFrame(rows)


# Reading order of methods in tables: the thesis's losses first, then the CIFAR-LT methods by family
METHOD_ORDER = ["ce", "focal", "wce", "cb", "cb_reweighting", "cb_focal", "cb_best", "bs", "seql", "eql", "ldam",
                "ce_drw", "ce_drs", "ldam_drw", "la", "la_loss", "la_posthoc", "ce_cbs", "cb_resampling", "ce_sqrt",
                "ce_progressive", "crt", "tau_norm", "lws", "two_expert"]
DATASET_NAMES = {"cifar100_lt": "CIFAR-100-LT", "cifar10_lt": "CIFAR-10-LT"}
# What tables and legends call a method (the thesis's abbreviations, the papers' names); a method
# not listed keeps its grid name. The grids, paths and provenance keep the names of the configs.
METHOD_LABELS = {"ce": "CE", "focal": "Focal", "wce": "WCE", "cb": "CB", "cb_reweighting": "CB re-weighting",
                 "cb_focal": "CB focal", "cb_best": "CB (best)", "bs": "BS", "seql": "SEQL", "eql": "EQL",
                 "ldam": "LDAM", "ce_drw": "CE-DRW", "ce_drs": "CE-DRS", "ldam_drw": "LDAM-DRW", "la": "LA loss",
                 "la_loss": "LA loss", "la_posthoc": "post-hoc LA", "ce_cbs": "CE + CB sampling",
                 "cb_resampling": "CB re-sampling", "ce_sqrt": "CE + sqrt sampling",
                 "ce_progressive": "CE + progressive sampling", "crt": "cRT", "tau_norm": "τ-norm", "lws": "LWS",
                 "two_expert": "two experts"}


def method_label(method: str) -> str:
    """A method's name in tables, legends and sentences (:data:`METHOD_LABELS`), its grid name otherwise."""
    return METHOD_LABELS.get(method, method)


def method_order(methods) -> list[str]:
    """``methods`` in :data:`METHOD_ORDER`, unknown ones after, alphabetically."""
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


CITE_KEYS = {"Cao et al. 2019": "cao2019ldam", "Cui et al. 2019": "cui2019cb", "Menon et al. 2021": "menon2021la"}


def source_note(source: str) -> str:
    """A published row's source as one footnote: '{cite:t}`key`, Table n' plus what qualifies the number
    ('re-run', 'tuned tau'); the paper's title or arXiv id in the CSV's spelling is dropped, so one
    paper's table is one footnote however the CSV spells it."""
    m = re.match(r"(?P<paper>.+? et al\. \d{4})\s*(?:\([^)]*\)\s*)?(?P<table>Table \d+)(?P<rest>.*)", source)
    if not m:
        return source
    rest = re.sub(r"^,.*", "", m["rest"]).strip()  # ', mean of 5 trials' is said in the chapter's text
    paper = f"{{cite:t}}`{CITE_KEYS[m['paper']]}`" if m["paper"] in CITE_KEYS else m["paper"]
    return f"{paper}, {m['table']}" + (f" {rest}" if rest else "")


def published_pivot(pub: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Published top-1 (%) as method x (data set, imbalance factor), each value with its source's
    footnote number, the best value of each column in bold (MyST Markdown, for :func:`md_table`);
    returns (table, footnotes).

    A cell with two published values (a paper's re-run of another's number) shows both.
    """
    pub = pub.copy()
    pub["setting"] = (pub["dataset"].map(DATASET_NAMES).fillna(pub["dataset"]) + " IF "
                      + pub["imbalance_factor"].astype(int).astype(str))
    pub["note"] = pub["source"].map(source_note)
    sources = list(dict.fromkeys(pub["note"]))
    settings = sorted(pub["setting"].unique(), key=lambda s: (not s.startswith("CIFAR-100"), -int(s.split()[-1])))
    best = pub.groupby("setting")["top1_percent"].max()
    cells: dict[tuple[str, str], list[str]] = {}
    for _, row in pub.iterrows():
        v = f"{row['top1_percent']:.2f}"
        if row["top1_percent"] == best[row["setting"]]:
            v = f"**{v}**"
        cells.setdefault((row["method"], row["setting"]), []).append(f"{v}{{sup}}`{sources.index(row['note']) + 1}`")
    methods = method_order(pub["method"].unique())
    table = pd.DataFrame([{"method": m, **{s: " / ".join(cells.get((m, s), ["–"])) for s in settings}} for m in methods])
    return table, [f"{i + 1}. {s}" for i, s in enumerate(sources)]


def published_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per comparison, written from the numbers (no hand-typed figures)."""
    out = []
    for _, r in table.iterrows():
        ours = f"{r['ours_best_on_test']:.2f}" + (f" ± {r['seed_std']:.2f}" if np.isfinite(r["seed_std"]) else "")
        head = (f"**{method_label(r['method'])}** ({r['data']}, {r['seeds']} seed{'s' if r['seeds'] != 1 else ''}): ours {ours} "
                f"(best epoch on test; last epoch {r['ours_last']:.2f}) vs {r['published']:.2f} in {r['source']}")
        if not r["beyond_spread"]:
            out.append(f"{head}: within our seed spread.")
            continue
        why = RECIPE_REASONS.get(r["recipe"], "the recipes differ")
        flag = f" More than {INVESTIGATE_POINTS} points from a same-recipe number: a finding to investigate." \
            if r["investigate"] else ""
        out.append(f"{head}: {r['diff']:+.2f} points, more than our seed spread. Likely reason: {why}.{flag}")
    return out


# --------------------------------------------------------------------------- numbered tables for the book


_NUMBER = re.compile(r"^\**[+\-−]?\d")  # a cell that reads as a number ('84.20 ± 3.11', '**+1.20** [..]')


def _cell(v: Any, digits: int) -> str:
    """One table cell as Markdown: floats to ``digits`` decimals, missing as '–', booleans yes/no, '|' escaped."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if v is None or v is pd.NA or v is pd.NaT:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
    if v is None or (isinstance(v, str) and not v):
        return "–"
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text.replace(" ", "\u00a0") if _NUMBER.match(text) else text  # '84.20 ± 3.11' never wraps


def _numeric_column(col: pd.Series) -> bool:
    """Numbers, or cells that read as numbers ('84.20 ± 3.11', '**+1.20** [..]', '38.32{sup}`1`'): right-aligned."""
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    cells = [str(v) for v in col if isinstance(v, str) and v not in ("", "–")]
    return bool(cells) and all(_NUMBER.match(v) for v in cells)


def md_table(table: pd.DataFrame, caption: str, name: str, empty: str = "no runs yet", digits: int = 2) -> str:
    """A numbered, captioned MyST table (the ``{table}`` directive, labelled ``name`` for ``{numref}``) from a frame.

    A named index becomes ordinary leading columns (no pandas row numbers); floats get ``digits``
    decimals, numeric columns are right-aligned. An empty frame gives a one-cell table saying
    ``empty``, so the label, its number and the text's references exist before any run does.
    A page glues the string (``glue(key, Markdown(...), display=False)``) and shows it with a
    ``{glue:md}`` directive in ``:format: myst`` (myst-nb), which numbers it like any other table.
    """
    t = table.reset_index(drop=all(n is None for n in table.index.names))
    if "method" in t:
        t = t.assign(method=t["method"].map(lambda m: method_label(m) if isinstance(m, str) else m))
    if t.empty:
        t = pd.DataFrame({"": [empty]})
    numeric = [_numeric_column(t[c]) for c in t.columns]
    head = "| " + " | ".join(_cell(str(c), digits) if str(c) else " " for c in t.columns) + " |"
    rule = "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"
    rows = ["| " + " | ".join(_cell(v, digits) for v in r) + " |" for r in t.itertuples(index=False)]
    caption = " ".join(caption.split())
    return "\n".join([f"~~~{{table}} {caption}", f":name: {name}", ":align: left", "", head, rule, *rows, "~~~"])


def glue_table(key: str, table: pd.DataFrame, caption: str, name: str, empty: str = "no runs yet", digits: int = 2,
               after: str = "") -> None:
    """In a book page: :func:`md_table`'s numbered table (and ``after``, Markdown shown below it, such as
    footnotes) glued under ``key`` for a ``{glue:md}`` directive with ``:format: myst`` (myst-nb)."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(key, Markdown(md_table(table, caption, name, empty=empty, digits=digits) + (f"\n\n{after}" if after else "")),
         display=False)


def glue_figure(key: str, fig) -> None:
    """In a book page: a figure glued under ``key`` for a ``{glue:figure}`` directive (which numbers and
    captions it), then closed so the page does not show it a second time."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(key, fig, display=False)
    plt.close(fig)


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
    out["method"] = pd.Categorical(out["method"], method_order(out["method"].unique()), ordered=True)
    return out.sort_values(by + ["method"]).assign(method=lambda t: t["method"].astype(str))


def ordered(table: pd.DataFrame, level: str = "method") -> pd.DataFrame:
    """Rows in :data:`METHOD_ORDER` within each block of the other index levels (the thesis's loss order first)."""
    if level not in (table.index.names or []):
        return table
    rank = {m: i for i, m in enumerate(method_order(table.index.get_level_values(level).unique()))}
    keys = [table.index.get_level_values(n) if n != level else table.index.get_level_values(n).map(rank)
            for n in table.index.names]
    return table.iloc[np.lexsort(list(reversed([np.asarray(k) for k in keys])))]


# --------------------------------------------------------------------------- figures


def plot_class_distribution(counts_by_split: dict[str, np.ndarray], ax=None, log: bool = True):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    for name, c in counts_by_split.items():
        ax.bar(np.arange(len(c)), c, width=1.0, alpha=0.6, label=f"{name} ({int(np.sum(c)):,} images)")
    ax.set_xlabel("class index (sorted by training frequency)")
    ax.set_ylabel("images per class")
    if log:
        ax.set_yscale("log")
    ax.legend(frameon=False)
    return ax


def plot_history(history: pd.DataFrame, axes=None):
    """Loss and accuracy per epoch; one line per expert for the two-expert model."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3))
    parts = history.groupby("expert", sort=False) if "expert" in history else [(None, history)]
    for expert, h in parts:
        tag = f" ({expert} expert)" if expert else ""
        if "train_loss" in h:
            axes[0].plot(h["epoch"], h["train_loss"], label="train loss" + tag)
        for col, lab in (("train_acc", "train"), ("val_top1", "validation"), ("test_top1", "test (reference only)"),
                         ("expert_val_top1", "validation, own classes")):
            if col in h:
                axes[1].plot(h["epoch"], h[col], label=lab + tag)
    axes[0].set_xlabel("epoch")
    axes[0].legend(frameon=False)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("top-1")
    axes[1].legend(frameon=False, fontsize=8)
    return axes


def plot_per_class(per_class: pd.DataFrame, split: str = "balanced", ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    ax.bar(per_class["class"], per_class[f"{split}_acc"], width=1.0, color="tab:blue", alpha=0.7)
    ax2 = ax.twinx()
    ax2.plot(per_class["class"], per_class["train_count"], color="tab:red", lw=1.5)
    ax2.set_ylabel("training images", color="tab:red")
    ax.set_xlabel("class index")
    ax.set_ylabel(f"accuracy ({split} test)")
    return ax


def tidy(df: pd.DataFrame, metrics: dict[str, str], by: list[str], scale: float = 100.0) -> pd.DataFrame:
    """One row per (run, metric): ``by`` columns, ``category`` (the metric's display name) and ``value``.

    The long form seaborn plots from, so error bars and per-seed points come from the runs themselves.
    """
    keys = [k for k in metrics if k in df]
    long = df[by + keys].melt(id_vars=by, value_vars=keys, var_name="key", value_name="value")
    long["category"] = long["key"].map(metrics)
    long["value"] = long["value"] * scale
    return long.dropna(subset=["value"])


def bars(long: pd.DataFrame, hue: str, order: list[str] | None = None, ax=None, ylabel: str = "top-1 (%)",
         errorbar: str | tuple | None = "sd"):
    """seaborn bars of the mean per (category, ``hue``) with error bars computed from the rows (std over
    the rows by default: seeds for per-run data, backbones or losses for per-cell means) and every row
    drawn as a point on its bar."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.2))
    hue_order = order or list(dict.fromkeys(long[hue]))
    cats = list(dict.fromkeys(long["category"]))
    multi = long.groupby(["category", hue]).size().max() > 1
    sns.barplot(data=long, x="category", y="value", hue=hue, order=cats, hue_order=hue_order, ax=ax,
                errorbar=errorbar if multi else None, capsize=0.1, err_kws={"linewidth": 1}, alpha=0.85)
    if multi:
        sns.stripplot(data=long, x="category", y="value", hue=hue, order=cats, hue_order=hue_order, ax=ax,
                      dodge=True, size=2.5, palette="dark:black", legend=False, jitter=False)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if hue == "method":
        labels = [method_label(x) for x in labels]
    ax.legend(handles, labels, frameon=False, ncol=min(len(hue_order), 7), fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    return ax


def facet_bars(long: pd.DataFrame, by: list[str], hue: str, order: list[str] | None = None,
               ylabel: str = "top-1 (%)", width: float = 9.0, height: float = 2.6):
    """One :func:`bars` panel per block of equal ``by`` columns, stacked in one figure (one numbered
    figure in the book instead of a row of untitled ones); each panel titled by its block."""
    import matplotlib.pyplot as plt

    blocks = list(long.groupby(by, sort=True))
    fig, axes = plt.subplots(len(blocks), 1, figsize=(width, height * len(blocks) + 0.6), squeeze=False,
                             layout="constrained")
    for ax, (name, g) in zip(axes[:, 0], blocks, strict=True):
        bars(g, hue=hue, order=[h for h in (order or list(dict.fromkeys(long[hue]))) if h in set(g[hue])],
             ax=ax, ylabel=ylabel)
        ax.set_title(", ".join(str(v) for v in (name if isinstance(name, tuple) else (name,))), fontsize=10)
    return fig


def no_runs_figure(text: str = "no runs yet"):
    """A small placeholder figure, so a numbered figure and the text's reference to it exist before any run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.0))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig


def published(name: str) -> pd.DataFrame:
    """A published reference table shipped in ``book/data/`` (copied from ../shared/reference with its source)."""
    return pd.read_csv(REPO / "book" / "data" / name)


def refresh_book_cache(build_dir: str | Path | None = None, roots: list[str | Path] | None = None,
                       code: list[str | Path] | None = None) -> bool:
    """Drop the book's execution cache when anything under ``results/`` (or the benchmark figures,
    the published tables in ``book/data``) or the library the pages call (``ltkit/*.py``) changed
    since the last build.

    jupyter-book's cache is keyed on a page's code, and Sphinx re-reads only pages
    whose source changed, so without this a rebuilt book would show the tables of
    the previous results, or of the previous version of :mod:`ltkit.report`.
    Returns True when the cache was dropped.
    """
    import shutil

    build = Path(build_dir or REPO / "book" / "_build")
    roots = [Path(r) for r in (roots or [results_root(), REPO / "benchmarks" / "results", REPO / "book" / "data"])]
    files = [f for root in roots if root.exists() for f in sorted(root.rglob("*")) if f.is_file()]
    files += [Path(f) for f in (code if code is not None else sorted((REPO / "ltkit").glob("*.py")))]
    env = "\n".join(os.environ.get(k, "") for k in ("LTKIT_RESULTS", "LTKIT_DEMO_RESULTS"))
    stamp, digest = build / ".results-stamp", stat_digest(files, env)
    if stamp.exists() and stamp.read_text() == digest:
        return False
    for stale in (".jupyter_cache", ".doctrees", "jupyter_execute"):  # Sphinx skips unchanged pages too
        shutil.rmtree(build / stale, ignore_errors=True)
    build.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return True


RUNS_DIR = REPO / "book" / "runs"  # staged copies of the executed notebooks (git-ignored)
RUNS_STATIC = REPO / "book" / "_static" / "runs"  # their metrics.json and history.csv, served as files


def run_slug(row: dict | pd.Series) -> str:
    """A run's flat page name: ``<protocol>__<data>__<model>__<method>__seed<k>``."""
    return "__".join([str(row["protocol"]), str(row["data"]), str(row["model"]), str(row["method"]),
                      f"seed{row['seed']}"])


def stage_runs(root: str | Path | None = None, dest: Path = RUNS_DIR, static: Path = RUNS_STATIC) -> pd.DataFrame:
    """Copy every run's executed notebook into the book (one page per run, titled by the run) and its
    ``metrics.json`` / ``history.csv`` beside the HTML; write ``index.json``, what the Runs appendix lists.

    The notebooks live in ``results/``, outside the book's source: this is the staging step that
    ``make book`` runs before building. Earlier staged copies are removed first, so a deleted run
    disappears from the book.
    """
    import shutil

    import nbformat

    df = collect(root or results_root())
    for d in (dest, static):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    rows = []
    for _, row in (df.iterrows() if len(df) else iter(())):
        slug, src = run_slug(row), resolve_alias(row["path"])
        commit = row.get("git_commit")
        entry = {k: row.get(k) for k in ("protocol", "data", "model", "method", "seed", "status")}
        entry.update({"slug": slug, "balanced_top1": row.get(HEADLINE), "device": row.get("device_name"),
                      "wall_seconds": row.get("wall_seconds"), "commit": commit[:10] if isinstance(commit, str) else "",
                      "page": None, "files": []})
        if src != Path(row["path"]):  # an alias: its CE run's page and files stand for it
            entry["page"] = entry["files_of"] = run_slug(parse_run_dir(src))
            entry["files"] = [n for n in (METRICS, "history.csv") if (src / n).exists()]
            rows.append(entry)
            continue
        entry["files_of"] = slug
        nb = src / EXECUTED_NOTEBOOK
        if nb.exists():
            book_nb = nbformat.read(str(nb), as_version=4)
            title = f"# Run {row['protocol']} / {row['data']} / {row['model']} / {row['method']} / seed {row['seed']}"
            first = next((c for c in book_nb.cells if c.cell_type == "markdown"), None)
            if first is not None:  # every run's notebook starts "# One training run": give its page its name
                lines = first.source.splitlines()
                first.source = "\n".join([title, *lines[1:]] if lines and lines[0].startswith("# ") else [title, *lines])
            nbformat.write(book_nb, str(dest / f"{slug}.ipynb"))
            entry["page"] = slug
        for name in (METRICS, "history.csv"):
            if (src / name).exists():
                (static / slug).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, static / slug / name)
                entry["files"].append(name)
        rows.append(entry)
    index = pd.DataFrame(rows)
    (dest / "index.json").write_text(index.to_json(orient="records"))
    if not any(dest.glob("*.ipynb")):  # the appendix's toctree globs runs/*: give it a page to find
        (dest / "no-runs.md").write_text("# No run notebooks yet\n\n`make demo` (CPU) or `make run-all` (GPU) writes "
                                         "them; `make book` copies them here.\n")
    return index


BOOK_CONFIG = REPO / "book" / "_config.yml"
REPOSITORY_CONFIG = REPO / "book" / "_build" / "_config.repository.yml"  # `make book` passes it when it exists


def repository_url(cwd: str | Path = REPO) -> str | None:
    """Where the repository lives, for the book's buttons: ``LTKIT_REPOSITORY_URL``, else git's ``origin``
    as an https address (``git@github.com:o/r.git`` -> ``https://github.com/o/r``); None without one."""
    import subprocess

    url = os.environ.get("LTKIT_REPOSITORY_URL")
    if not url:
        try:
            out = subprocess.run(["git", "remote", "get-url", "origin"], cwd=cwd, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        url = out.stdout.strip() if out.returncode == 0 else ""
    url = re.sub(r"^git@([^:]+):", r"https://\1/", url.strip()).removesuffix(".git")
    return url if url.startswith(("https://", "http://")) else None


def repository_config(url: str | None, src: Path = BOOK_CONFIG, dest: Path = REPOSITORY_CONFIG) -> Path | None:
    """The book's config with the repository, issues and edit-this-page buttons pointing at ``url``
    (written to ``dest``, returned); without a URL, ``dest`` is removed and the book has no such buttons
    (a made-up address would be worse than none)."""
    import yaml

    if not url:
        dest.unlink(missing_ok=True)
        return None
    cfg = yaml.safe_load(src.read_text())
    cfg["repository"] = {"url": url, "path_to_book": "book", "branch": "main"}
    cfg.setdefault("html", {}).update(use_repository_button=True, use_issues_button=True, use_edit_page_button=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, yaml.safe_dump(cfg, sort_keys=False))
    return dest


def prepare_book() -> bool:
    """Before ``jupyter-book build``: stage the runs' notebooks, write the repository buttons' config
    (when the checkout has a remote), then drop a stale execution cache."""
    stage_runs()
    repository_config(repository_url())
    return refresh_book_cache()
