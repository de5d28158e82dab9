"""Top-1, per-class and per-group accuracy, macro-F1, relative accuracy, 95% intervals.

Group accuracies are pooled over the images of the group's classes, as the
thesis reports them (e.g. 38 tail images on its long-tailed test set); on a
balanced test set this equals the mean of the per-class accuracies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .core.stats import accuracy_ci

if TYPE_CHECKING:  # tensors come in from the loop; the report and the book read metrics without importing torch
    import torch


def key(split: str, measure: str = "top1") -> str:
    """A metric's name in ``metrics.json``: ``<split>.<measure>``, e.g. ``balanced.top1``, ``lt.tail``,
    ``balanced.few_ci_low``. Splits: balanced, lt (test sets), val; measures: top1, the class groups
    (head, middle, tail, many, medium, few), macro_f1, n, and ``_ci_low`` / ``_ci_high`` / ``_n`` suffixes."""
    return f"{split}.{measure}"


# The run-level keys every finished run has, and the labelled extras (metrics.json)
HEADLINE = key("balanced")  # the study's headline: top-1 on the balanced test set
SELECTED_EPOCH = "selected_epoch"  # the history row whose weights were evaluated
EPOCHS = "epochs"
TRAININGS = "trainings"  # full trainings the run cost (a stage-two procedure: 0, two experts: 2)
VAL_SELECTED = key("val", "top1_selected")  # validation top-1 of the selected epoch
BEST_EPOCH_ON_TEST = key("balanced", "top1_best_epoch_on_test")  # labelled comparison number, never selects


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of a split's logits, on their device (one host sync)."""
    return float((logits.argmax(1) == labels).float().mean())


def balanced_top1(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Mean of the per-class accuracies over the classes present: the balanced accuracy that selects tau."""
    correct = (logits.argmax(1) == labels).float()
    per = correct.new_zeros(k).index_add_(0, labels, correct)
    cnt = labels.bincount(minlength=k).float()
    return float((per[cnt > 0] / cnt[cnt > 0]).mean())


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    total = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[pred == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    tp = np.bincount(labels[pred == labels], minlength=num_classes).astype(float)
    fp = np.bincount(pred, minlength=num_classes) - tp
    fn = np.bincount(labels, minlength=num_classes) - tp
    denom = 2 * tp + fp + fn
    present = np.bincount(labels, minlength=num_classes) > 0
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean())


def split_metrics(pred: np.ndarray, labels: np.ndarray, groups: dict[str, np.ndarray], prefix: str,
                  bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """All metrics of one split as a flat dict ``{prefix}.{metric}``."""
    k = len(next(iter(groups.values())))
    correct = pred == labels
    out = {key(prefix): float(correct.mean()), key(prefix, "n"): int(len(labels)),
           key(prefix, "macro_f1"): macro_f1(pred, labels, k)}
    if bootstrap:
        out[key(prefix, "top1_ci_low")], out[key(prefix, "top1_ci_high")] = accuracy_ci(correct, labels)
    for g, mask in groups.items():
        sel = mask[labels]
        out[key(prefix, g)] = float(correct[sel].mean()) if sel.any() else float("nan")
        out[key(prefix, f"{g}_n")] = int(sel.sum())
        if bootstrap and sel.any():
            out[key(prefix, f"{g}_ci_low")], out[key(prefix, f"{g}_ci_high")] = accuracy_ci(correct[sel], labels[sel])
    return out


def evaluate_predictions(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                         groups: dict[str, np.ndarray], train_counts: np.ndarray, classes: list[str],
                         bootstrap: int = 1000) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics of every split plus a per-class table (one row per class)."""
    metrics: dict[str, float] = {}
    k = len(classes)
    table = pd.DataFrame({"class": np.arange(k), "name": classes, "train_count": train_counts})
    for g, mask in groups.items():
        table[f"group_{g}"] = mask
    for split, pred in preds.items():
        metrics.update(split_metrics(pred, labels[split], groups, split, bootstrap=bootstrap))
        table[f"{split}_acc"] = per_class_accuracy(pred, labels[split], k)
        table[f"{split}_n"] = np.bincount(labels[split], minlength=k)
    return metrics, table


def relative_accuracy(acc: float, balanced_acc: float) -> float:
    """Zhang et al. (2023, survey) relative accuracy: the LT model's accuracy divided
    by that of the same model trained on the balanced set."""
    return float(acc / balanced_acc) if balanced_acc > 0 else float("nan")


def confusion_pairs(pred: np.ndarray, labels: np.ndarray, classes: list[str], among: np.ndarray,
                    top: int = 10) -> pd.DataFrame:
    """The most frequent (true, predicted) mistakes for true classes in ``among``."""
    wrong = (pred != labels) & among[labels]
    if not wrong.any():
        return pd.DataFrame(columns=["true", "predicted", "count"])
    pairs = pd.DataFrame({"true": np.asarray(classes)[labels[wrong]], "predicted": np.asarray(classes)[pred[wrong]]})
    return pairs.value_counts().rename("count").reset_index().head(top)
