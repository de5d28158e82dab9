"""Sentences generated from the results (the landing page's findings, what the published tables say):
every number in them comes from a table, never typed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics import HEADLINE
from .names import method_label
from .published import INVESTIGATE_POINTS, PAPER_RECIPE, RECIPE_REASONS
from .tables import compare_to_baseline, seed_summary


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
            ce0, verdict = ce.iloc[0], ""
            if len(row):
                r0 = row.iloc[0]
                verdict = (f"difference {r0['diff']:+.2f} points [{r0['low']:+.2f}, {r0['high']:+.2f}], "
                           + ("significant" if r0["significant"] else "not significant") + " after BH adjustment")
                if "n_seeds" in r0 and not int(r0["n_seeds"]) == int(ce0["n"]) == int(best["n"]):
                    # the means above are over unequal seed sets: say which runs the difference is of
                    verdict = (f"paired on the seed{'s' if r0['n_seeds'] > 1 else ''} both have ({r0['seeds']}; CE "
                               f"{r0['baseline_mean']:.2f} % there), {verdict}")
                verdict = "; " + verdict
            ce_spread = f" (± {ce0['std']:.2f} over {int(ce0['n'])} seeds)" if ce0["n"] > 1 else ""
            text += f", against CE's {float(ce0['mean']):.2f} %{ce_spread}{verdict}"
        elif best["method"] == "ce":
            text += "; no method beats plain CE here"
        out.append(text + ".")
    return out


def published_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per comparison, written from the numbers (no hand-typed figures)."""
    out = []
    for _, r in table.iterrows():
        ours = f"{r['ours_best_on_test']:.2f}" + (f" ± {r['seed_std']:.2f}" if np.isfinite(r["seed_std"]) else "")
        if not r["stage_two"]:
            which = f"best epoch on test; last epoch {r['ours_last']:.2f}"
        elif r.get("epochs_on_test", False):
            which = f"best of its stage-two epochs on test; last epoch {r['ours_last']:.2f}"
        else:
            which = "a stage-two run: one number, no epochs on test to pick from"
        head = (f"**{method_label(r['method'])}** ({r['data']}, {r['seeds']} seed{'s' if r['seeds'] != 1 else ''}): ours {ours} "
                f"({which}) vs {r['published']:.2f} in {r['source']}")
        # a sentence says each difference once: the paper's recipe is the likely reason where the difference lies
        # beyond our spread, else it stands in the parenthesis beside our runs' own differences
        ours_differ, paper = r.get("ours_differ") or "", r.get("paper_recipe") or ""
        beyond = bool(r["beyond_spread"])
        said = [f"our recipe differs from the paper's in {ours_differ}"] if ours_differ else []
        said += [f"{PAPER_RECIPE}{paper}"] if paper and not beyond else []
        if said:
            head += f" ({'; '.join(said)})"
        within = r["tolerance_kind"]
        if not beyond:
            out.append(f"{head}: {r['diff']:+.2f} points, within {within}.")
            continue
        why = paper or RECIPE_REASONS.get(r["recipe"], "the recipes differ")
        flag = f" More than {INVESTIGATE_POINTS} points from a same-recipe number: a finding to investigate." \
            if r["investigate"] else ""
        out.append(f"{head}: {r['diff']:+.2f} points, beyond {within}. Likely reason: {why}.{flag}")
    return out


def against_ce_summary(df: pd.DataFrame, keys: dict[str, str], scale: float = 100.0) -> list[str]:
    """One sentence per metric (``keys``: metric -> its name in the sentence) on how the methods stand against
    CE in the finished runs ``df`` (one protocol): how many are significantly above / below it (BH-adjusted,
    :func:`compare_to_baseline`), the range of the differences, the best method, and what the intervals cover
    (the best method's: seeds, or with one seed the test images only). Empty without a CE run and another
    method."""
    out = []
    for key, name in keys.items():
        cmp = compare_to_baseline(df, key, ["data", "model"], scale=scale) if key in df else pd.DataFrame()
        if not len(cmp):
            continue
        up, down = int((cmp["significant"] & (cmp["diff"] > 0)).sum()), int((cmp["significant"] & (cmp["diff"] < 0)).sum())
        best = cmp.loc[cmp["diff"].idxmax()]
        ce_runs = df[df["method"] == "ce"][key].dropna()
        ce = f"{ce_runs.mean() * scale:.2f} %"
        if (cmp.get("n_seeds", pd.Series(dtype=int)) != len(ce_runs)).any():
            # some method has fewer seeds than CE: its difference is with CE's runs of its own seeds
            ce += f", mean of {len(ce_runs)} seeds; each method is paired with CE on the seeds both have"
        covers = best["how"] + ("; with one seed an interval covers the test images' sampling, not the seed"
                                if best["how"].startswith("paired bootstrap") else "")
        out.append(f"{name}: {up} of {len(cmp)} methods significantly above CE ({ce}) and {down} below, "
                   f"differences from {cmp['diff'].min():+.2f} to {cmp['diff'].max():+.2f} points; the largest, "
                   f"{method_label(best['method'])}, {best['diff']:+.2f} [{best['low']:+.2f}, {best['high']:+.2f}] "
                   f"({covers}).")
    return out


THESIS_PROTOCOL_DIFFERENCES = (
    "the thesis fine-tunes ImageNet-pretrained backbones at 224 px with Adam for 90 epochs on its own long-tailed split "
    "(9,754 images) and tests on 5,000 images split off the training set; the from-scratch protocol trains ResNet-32 "
    "at 32 px with SGD for 200 epochs on Cao et al.'s 10,847 images and tests on the official 10,000")


def _paired_vs_ce(runs: pd.DataFrame, method: str, key: str, scale: float) -> float:
    """``method`` minus CE on the seeds both have (mean of the per-seed differences), for a loss the comparison
    against CE has no row for: one seed and no saved predictions, so no interval and no test (every committed run
    has its predictions; this keeps a run folder without them from reading 'not trained')."""
    per_seed = runs[runs["method"].isin([method, "ce"])].pivot_table(index="seed", columns="method", values=key)
    if method not in per_seed or "ce" not in per_seed:
        return np.nan
    both = per_seed.dropna(subset=[method, "ce"])
    return round(float((both[method] - both["ce"]).mean() * scale), 2) if len(both) else np.nan


def _against_ce(runs: pd.DataFrame, key: str, data: str, scale: float) -> pd.DataFrame:
    """The from-scratch comparison with CE on ``data``, computed over every run given (the family the book's table
    against CE adjusts over), one row per method that could be tested."""
    if not len(runs) or key not in runs:
        return pd.DataFrame()
    cmp = compare_to_baseline(runs, key, ["data", "model"] if "model" in runs else ["data"], scale=scale)
    return cmp[cmp["data"] == data] if len(cmp) else cmp


def _backbones_that_way(diff: pd.Series) -> str:
    """'below CE on 3 of 4 backbones': how many of the thesis's backbones share the sign of the mean difference."""
    way = "above" if diff.mean() > 0 else "below"
    return f"{way} CE on {int((np.sign(diff) == np.sign(diff.mean())).sum())} of {len(diff)} backbones"


def _chance_word(significant: bool | None) -> str:
    return "" if significant is None else (", significant" if significant else ", not significant")


def thesis_vs_scratch(thesis: pd.DataFrame, runs: pd.DataFrame, key: str = HEADLINE, data: str = "cifar100_exp100",
                      scale: float = 100.0, vs_ce: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The thesis's seven losses two ways: its pretrained backbones trained on long-tailed data (its Tables 4.2, 4.4,
    4.6, 4.8; balanced test set, one seed) beside the from-scratch protocol's ResNet-32 (our runs on ``data``, mean
    over seeds), each as top-1 and as the difference from CE of the same protocol (from scratch: paired with CE on
    the seeds both have). Returns (table, sentences); a
    loss with no from-scratch run yet reads 'not trained yet'.

    ``vs_ce`` is :func:`compare_to_baseline` of ``runs`` on ``key`` (scaled like ``scale``), as the book's table
    against CE already holds it: the column "from scratch: vs CE" and the significance said here are then that
    table's numbers, not a second computation (one-seed pairs bootstrap their predictions). Computed when absent."""
    from .names import THESIS_LOSS_ORDER

    th = thesis[thesis["train_set"] == "long_tailed"].pivot(index="loss", columns="model", values="balanced") * scale
    ours = runs[runs["data"] == data] if len(runs) and "data" in runs else runs.iloc[0:0]
    if vs_ce is None:
        vs_ce = _against_ce(runs, key, data, scale)
    elif len(vs_ce):
        vs_ce = vs_ce[vs_ce["data"] == data]
    diff = dict(zip(vs_ce["method"], vs_ce["diff"], strict=True)) if len(vs_ce) else {}
    real = {method_label(m): bool(x) for m, x in zip(vs_ce["method"], vs_ce["significant"], strict=True)} if len(vs_ce) else {}
    s = seed_summary(ours, ["method"], key, scale).set_index("method") if len(ours) else pd.DataFrame()
    th_ce = th.loc["ce"] if "ce" in th.index else None
    rows = []
    for loss in THESIS_LOSS_ORDER:
        row = {"loss": method_label(loss)}
        if loss in th.index:
            row["pretrained: mean of 4 backbones"] = round(float(th.loc[loss].mean()), 2)
            row["pretrained: range"] = f"{th.loc[loss].min():.1f}–{th.loc[loss].max():.1f}"
            row["pretrained: vs CE"] = (round(float((th.loc[loss] - th_ce).mean()), 2) if th_ce is not None else np.nan)
        if loss in s.index:
            r = s.loc[loss]
            row["from scratch: ResNet-32"] = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["n"] > 1 else "") + f" ({int(r['n'])})"
            row["from scratch: vs CE"] = (0.0 if loss == "ce" else round(float(diff[loss]), 2) if loss in diff
                                          else _paired_vs_ce(ours, loss, key, scale))
        else:
            row["from scratch: ResNet-32"] = "not trained yet"
            row["from scratch: vs CE"] = np.nan
        rows.append(row)
    table = pd.DataFrame(rows).set_index("loss")
    both = table.dropna(subset=["pretrained: vs CE", "from scratch: vs CE"])
    both = both[both.index != method_label("ce")]
    out = []
    if len(both):
        agree = [i for i, r in both.iterrows() if np.sign(r["pretrained: vs CE"]) == np.sign(r["from scratch: vs CE"])]
        best_th = both["pretrained: vs CE"].idxmax()
        best_us = both["from scratch: vs CE"].idxmax()
        out.append(f"{len(agree)} of the {len(both)} class-sensitive loss(es) with runs in both protocols move top-1 the "
                   f"same way from CE in both ({', '.join(agree) or 'none'}). The best against CE is {best_th} "
                   f"({both.loc[best_th, 'pretrained: vs CE']:+.2f} points, mean of the thesis's four backbones) with "
                   f"pretrained backbones and {best_us} ({both.loc[best_us, 'from scratch: vs CE']:+.2f}) from scratch.")
        # a direction is only worth counting where it holds: on how many of the thesis's backbones, and whether the
        # from-scratch difference is significant (the same test and family as the book's table against CE)
        th_way = {method_label(loss): _backbones_that_way(th.loc[loss] - th_ce) for loss in th.index} if th_ce is not None else {}
        other = [f"{i} ({r['pretrained: vs CE']:+.2f} pretrained, {th_way[i]}; {r['from scratch: vs CE']:+.2f} from "
                 f"scratch{_chance_word(real.get(i))})" for i, r in both.iterrows() if i not in agree]
        if other:  # the protocol findings: a loss that helps (or hurts) in one protocol only
            out.append(f"The other way in the two protocols: {', '.join(other)}.")
        shown = [i for i in both.index if i in real]
        if shown:
            yes, no = [i for i in shown if real[i]], [i for i in shown if not real[i]]
            out.append("From scratch, the difference from CE is significant (paired over seeds, with one seed over the "
                       "test images; Benjamini-Hochberg adjusted p < 0.05, as in the table against CE above) for "
                       f"{', '.join(yes) or 'none'}" + (f"; not for {', '.join(no)}" if no else "") + ".")
    missing = [i for i, r in table.iterrows() if r["from scratch: ResNet-32"] == "not trained yet"]
    if missing:
        out.append(f"Not trained from scratch yet: {', '.join(missing)} (queued in the CPU campaign).")
    return table, out
