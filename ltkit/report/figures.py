"""Figures for the run notebook (class distribution, learning curves, per-class accuracy) and for the
book (bars with seed points from tidy per-run data; learning curves of many runs)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .names import method_label


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
            if col in h:  # the test set is measured on some epochs only: join its points, not just runs of them
                m = h[["epoch", col]].dropna()
                axes[1].plot(m["epoch"], m[col], label=lab + tag, marker="." if len(m) < len(h) else None, ms=3)
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


def bars(long: pd.DataFrame, hue: str, order: list[str] | None = None, ax=None, ylabel: str = "top-1 (%)",
         errorbar: str | tuple | None = "sd"):
    """seaborn bars of the mean per (category, ``hue``) with error bars computed from the rows (std over
    the rows by default: seeds for per-run data, backbones or losses for per-cell means) and every row
    drawn as a point on its bar. Where every bar is one run, its whisker is that run's own 95% interval
    over the test images (``ci_low`` / ``ci_high`` of :func:`ltkit.report.tidy`), the only uncertainty
    one seed measures."""
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
    elif {"ci_low", "ci_high"} <= set(long):
        ci = long.set_index(["category", hue])[["ci_low", "ci_high"]]
        for level, container in zip(hue_order, list(ax.containers), strict=False):  # one container per hue level
            for bar in container.patches:
                x, y = bar.get_x() + bar.get_width() / 2, bar.get_height()
                lo, hi = ci.loc[(cats[int(round(x))], level)]  # categories sit at 0, 1, ...; the dodge is < 0.5
                if np.isfinite(lo) and np.isfinite(hi):  # at 0 % or 100 % an end may sit a rounding error inside
                    ax.errorbar(x, y, yerr=[[max(y - lo, 0.0)], [max(hi - y, 0.0)]], fmt="none", ecolor="black",
                                elinewidth=1, capsize=3)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if hue == "method":
        labels = [method_label(x) for x in labels]
    lines = 1 + max(str(c).count("\n") for c in cats)  # tick labels of several lines push the legend down
    ax.legend(handles, labels, frameon=False, ncol=min(len(hue_order), 7), fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.06 - 0.06 * lines))
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


def plot_curves(long: pd.DataFrame, hue: str = "method", order: list[str] | None = None, zoom_from: int | None = None,
                ylabel: str = "balanced test top-1 (%)"):
    """Learning curves from :func:`ltkit.report.curves`: per ``hue`` level the mean over its runs at each
    measured epoch (the band: lowest to highest run, where there are several), each run's best epoch as a
    dot and its last epoch as a cross, so the gap between the number several papers report (the best epoch
    on the test set) and the last epoch (ours) is seen, not only tabulated. A second panel from epoch
    ``zoom_from`` on (default: where every run measured every epoch) shows the end of training up close."""
    import matplotlib.pyplot as plt

    levels = [h for h in (order or list(dict.fromkeys(long[hue]))) if h in set(long[hue])]
    runs = [c for c in long.columns if c not in ("epoch", "value")]
    if zoom_from is None:  # the first epoch from which every run has every epoch
        zoom_from = max((int(g["epoch"].max()) - _dense_tail(g["epoch"].to_numpy())
                         for _, g in long.groupby(runs)), default=0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained", width_ratios=[3, 2])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, level in enumerate(levels):
        g, c = long[long[hue] == level], colors[i % len(colors)]
        stats = g.groupby("epoch")["value"].agg(["mean", "min", "max", "count"])
        ends = [(r.loc[r["value"].idxmax()], r.loc[r["epoch"].idxmax()]) for _, r in g.groupby(runs)]
        for ax in axes:
            ax.plot(stats.index, stats["mean"], color=c, lw=1.2, label=method_label(level) if hue == "method" else level)
            if stats["count"].max() > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=c, alpha=0.2, lw=0)
            ax.scatter([b["epoch"] for b, _ in ends], [b["value"] for b, _ in ends], color=c, s=14, zorder=3)
            ax.scatter([e["epoch"] for _, e in ends], [e["value"] for _, e in ends], color=c, marker="x", s=20, zorder=3)
    axes[0].set_ylabel(ylabel)
    late = long[long["epoch"] >= zoom_from]["value"]
    if len(late):
        axes[1].set_xlim(zoom_from - 0.5, long["epoch"].max() + 0.5)
        axes[1].set_ylim(late.min() - 0.5, late.max() + 0.5)
    axes[1].set_title(f"from epoch {zoom_from}", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8, ncol=min(len(levels), 4), loc="upper left")
    return fig


def _dense_tail(epochs: np.ndarray) -> int:
    """How many epochs before the last are all present (0 where only the last is)."""
    e = np.sort(np.unique(epochs))
    gaps = np.nonzero(np.diff(e) != 1)[0]
    return int(e[-1] - e[gaps[-1] + 1]) if len(gaps) else int(e[-1] - e[0])


def no_runs_figure(text: str = "no runs yet"):
    """A small placeholder figure, so a numbered figure and the text's reference to it exist before any run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.0))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig
