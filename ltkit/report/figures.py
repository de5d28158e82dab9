"""Figures for the run notebook (class distribution, learning curves, per-class accuracy) and for the
book (bars with seed points from tidy per-run data)."""

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


def no_runs_figure(text: str = "no runs yet"):
    """A small placeholder figure, so a numbered figure and the text's reference to it exist before any run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.0))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    return fig
