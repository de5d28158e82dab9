"""Published numbers (``../shared/reference``, each with its paper and table) and how our runs stand
beside them: the papers' own method names, their sources as footnotes and citations."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..config.fields import data_tag
from ..core.layout import REPO
from ..metrics import BEST_EPOCH_ON_TEST, HEADLINE
from ..training.procedures import is_stage_two
from .names import DATASET_NAMES, method_order

# our method label -> the name the published table uses for the same method
PUBLISHED_NAMES = {"la": "la_loss", "cb": "cb_reweighting", "ce_cbs": "cb_resampling", "las_mixup": "mislas"}


RECIPE_REASONS = {
    "cao2019": "same recipe as ours, but the paper reports one run's best epoch measured on the test set, and one "
               "run's number moves with its seed",
    "la_recipe": "Menon et al. train longer than the cao2019 recipe (and average 5 trials): their released code "
                 "(google-research/logit_adjustment, utils.py) trains CIFAR-100-LT for 1419 epochs (lr warm-up to "
                 "epoch 22, x0.1 at epochs 691, 1059 and 1290) against our 200",
    "cui_recipe": "Cui et al.'s schedule and augmentation differ from the cao2019 recipe",
    "mislas_recipe": "MiSLAS's stage one is ours with mixup (alpha 1; its released CIFAR-100 config: lr 0.1, batch "
                     "128, weight decay 2e-4, 200 epochs, no cosine schedule); it re-trains the classifier for 10 "
                     "epochs with class-balanced sampling, label-aware smoothing and shifted batch normalisation "
                     "(ours: las_mixup, the same stage two and optimiser settings) and reports the best of "
                     "those epochs on the test set",
}


PAPER_RECIPE = "the paper's recipe: "  # how differs_in names another paper's recipe after our runs' own differences


def differs_in(ours_differ: str, paper_recipe: str) -> str:
    """Table 5.3's one column: our runs' own differences, then another paper's recipe ('' when like-with-like)."""
    return "; ".join(x for x in (ours_differ, f"{PAPER_RECIPE}{paper_recipe}" if paper_recipe else "") if x)


INVESTIGATE_POINTS = 1.5  # a mean this far from a same-recipe published number is a finding (issue: honest numbers)


def _recipe_differences(runs: pd.DataFrame) -> str:
    """The fields in which these runs' recipe differs from their protocol's paper ('' when like-with-like), read
    from each run's recorded configuration (:func:`ltkit.report.cards.recipe_differences`)."""
    from ..core.io import read_json
    from ..core.layout import PROVENANCE
    from ..runs.status import resolve_alias
    from .cards import recipe_differences

    fields: dict[str, set[str]] = {}
    for path in runs.get("path", pd.Series(dtype=str)):
        try:
            params = read_json(resolve_alias(path) / PROVENANCE).get("parameters") or {}
        except (OSError, ValueError):
            continue
        for d in recipe_differences(params):
            fields.setdefault(d["field"], set()).add(str(d["run"]))
    return ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(fields.items()))


def against_published(df: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """Our CIFAR-LT means beside the published numbers for the same dataset, IF and method.

    Ours: last epoch (primary) and best epoch on the test set (what the cao2019 code logs; for a stage two,
    the best of its head's epochs, ``epochs_on_test``, where every seed tracked them; one without epochs,
    its one number), mean and std over seeds. ``beyond_spread``:
    |that - published| is larger than ``tolerance``, which is our seed std with several seeds and, with
    one, the half-width of that run's 95% interval over the test images (``tolerance_kind`` says which;
    0.5 points where a run recorded no interval); ``investigate``: larger than 1.5 points for a
    same-recipe (cao2019) number. ``ours_differ``: the fields in which our runs' recipe differs from the
    paper's as its protocol states it (e.g. ``precision bf16``); ``paper_recipe``: how the paper's own recipe
    differs from Cao et al.'s, which our runs follow ('' for a cao2019 number); ``differs_in``: the two joined
    (:func:`differs_in`; '' when like-with-like).
    """
    best = BEST_EPOCH_ON_TEST
    rows = []
    for (data, method), g in df[df[HEADLINE].notna()].groupby(["data", "method"]):  # a run without a number: no seed
        name = PUBLISHED_NAMES.get(method, method)
        for _, p in pub[pub["method"] == name].iterrows():
            if data_tag(p["dataset"].removesuffix("_lt"), float(p["imbalance_factor"])) != data:
                continue
            last = g[HEADLINE] * 100
            # a stage two without epochs (post-hoc LA, tau-norm) has one number, which stands beside a paper's (Menon
            # et al. tune tau, they pick no epoch); one that trains a head for a few epochs (cRT, LWS, MiSLAS's LAS)
            # counts as the paper does, the best of those epochs on test, once every seed of it tracked them
            stage_two = "procedure" in g and bool(g["procedure"].map(is_stage_two).all())
            tracked = stage_two and best in g and bool(g[best].notna().all())
            if stage_two:
                bot = g[best] * 100 if tracked else last
            else:
                bot = g[best] * 100 if best in g else pd.Series(dtype=float)
            spread = float(bot.std(ddof=1)) if len(bot) > 1 else float("nan")
            diff = float(bot.mean() - p["top1_percent"]) if len(bot) else float("nan")
            tolerance, kind = _tolerance(g, spread)
            recipe = str(p["recipe_note"]).split()[0]
            ours_differ = _recipe_differences(g)
            # our runs follow Cao et al.'s recipe: another paper's differs in its own ways too
            paper_recipe = RECIPE_REASONS.get(recipe, recipe) if recipe != "cao2019" else ""
            rows.append({"data": data, "method": method, "seeds": len(g), "ours_last": float(last.mean()),
                         "ours_last_std": float(last.std(ddof=1)) if len(g) > 1 else float("nan"),
                         "ours_best_on_test": float(bot.mean()) if len(bot) else float("nan"),
                         "seed_std": spread, "published": float(p["top1_percent"]), "source": p["source"],
                         "recipe": recipe, "diff": diff, "ours_differ": ours_differ, "paper_recipe": paper_recipe,
                         "differs_in": differs_in(ours_differ, paper_recipe), "tolerance": tolerance,
                         "tolerance_kind": kind, "beyond_spread": bool(abs(diff) > tolerance), "stage_two": stage_two,
                         "epochs_on_test": tracked,
                         "investigate": bool(recipe == "cao2019" and abs(diff) > INVESTIGATE_POINTS)})
    return pd.DataFrame(rows)


def published_summary(df: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """The landing page's short form of :func:`against_published`: per method and published number, our
    last epoch with its uncertainty (mean ± std over seeds; one seed: its 95% interval over the test
    images), ours as the paper counts (best epoch on the test set; a stage two: the same where it tracked its
    epochs, else its one number), the
    paper's number with its source, the difference and whether it lies within our uncertainty."""
    from .tables import mean_std_table

    cmp = against_published(df, pub)
    if cmp.empty:
        return pd.DataFrame()
    ours = mean_std_table(df, ["data", "method"], {HEADLINE: "ours"})["ours"]
    return pd.DataFrame({
        "data": cmp["data"], "method": cmp["method"], "seeds": cmp["seeds"],
        "ours, last epoch": [ours.loc[(d, m)] for d, m in zip(cmp["data"], cmp["method"], strict=True)],
        "ours as the paper counts": cmp["ours_best_on_test"].round(2),
        "published": cmp["published"].map(lambda v: f"{v:.2f}"),
        "source": cmp["source"].map(source_note),
        "difference": cmp["diff"].map(lambda d: f"{d:+.2f}"),
        "within our uncertainty": ~cmp["beyond_spread"]}).reset_index(drop=True)


def _tolerance(runs: pd.DataFrame, seed_std: float) -> tuple[float, str]:
    """How far from a published number ours may lie and still agree with it, in points, and what that is: the
    seed std over several seeds; with one seed its run's own 95% interval over the test images (half its
    width: the uncertainty one seed does measure), else 0.5 points."""
    if np.isfinite(seed_std):
        return seed_std, "our seed spread"
    lo, hi = f"{HEADLINE}_ci_low", f"{HEADLINE}_ci_high"
    if len(runs) == 1 and lo in runs and hi in runs and np.isfinite(runs[hi].iloc[0] - runs[lo].iloc[0]):
        return float(runs[hi].iloc[0] - runs[lo].iloc[0]) * 50, "our run's 95% interval over the test images (one seed)"
    return 0.5, "0.5 points (one seed, no interval recorded)"


CITE_KEYS = {"Cao et al. 2019": "cao2019ldam", "Cui et al. 2019": "cui2019cb", "Menon et al. 2021": "menon2021la",
             "Zhong et al. 2021": "zhong2021mislas"}


def source_note(source: str) -> str:
    """A published row's source as one footnote: '{cite:t}`key`, Table n' plus what qualifies the number
    ('re-run', 'tuned tau'); the paper's title or arXiv id in the CSV's spelling is dropped, so one
    paper's table is one footnote however the CSV spells it."""
    m = re.match(r"(?P<paper>.+? et al\. \d{4})\s*(?:\([^)]*\)\s*)?(?P<table>Table \d+)(?P<rest>.*)", source)
    if not m:  # a paper's result quoted without its table number: the paper alone (or its released code's README)
        p = re.match(r"(?P<paper>.+? et al\. \d{4})\b", source)
        if not (p and p["paper"] in CITE_KEYS):
            return source
        readme = re.search(r"repository README \((?P<repo>[^)]+)\)", source)
        return f"{{cite:t}}`{CITE_KEYS[p['paper']]}`" + (f", its repository's README ({readme['repo']})" if readme else "")
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


def published(name: str) -> pd.DataFrame:
    """A published reference table shipped in ``book/data/`` (copied from ../shared/reference with its source)."""
    return pd.read_csv(REPO / "book" / "data" / name)
