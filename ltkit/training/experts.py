"""Two experts (the ``two_expert`` procedure): one model for the frequent half of the classes and one for
the rare half, their logits standardised per sample so the arg-max picks the more confident expert."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def frequency_halves(counts: np.ndarray, head_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(head classes, tail classes): the ``head_fraction`` most frequent classes and the rest.

    Ties are broken by class index, so the split is deterministic.
    """
    if not 0 < head_fraction < 1:
        raise ValueError(f"bad value for 'head_fraction': {head_fraction} (accepted: a number in (0, 1))")
    order = np.lexsort((np.arange(len(counts)), -np.asarray(counts)))
    n_head = min(max(1, int(round(head_fraction * len(counts)))), len(counts) - 1)
    return np.sort(order[:n_head]), np.sort(order[n_head:])


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score of one expert's logits, so two experts' scores share a scale."""
    return (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True).clamp_min(1e-6)


class TwoExpert(nn.Module):
    """Two models over disjoint class sets; each one's logits are standardised per sample and
    written into the full class vector, so the arg-max picks the more confident expert."""

    def __init__(self, experts: list[nn.Module], classes: list[np.ndarray], num_classes: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        for i, c in enumerate(classes):
            self.register_buffer(f"classes{i}", torch.as_tensor(c, dtype=torch.long))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_full((x.shape[0], self.num_classes), float("-inf"), dtype=torch.float32)
        for i, expert in enumerate(self.experts):
            out[:, getattr(self, f"classes{i}")] = standardise(expert(x).float())
        return out
