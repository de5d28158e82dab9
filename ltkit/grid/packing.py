"""Packs: which pending stage-one runs the grid trains as one packed model, and how many per pack."""

from __future__ import annotations

from collections.abc import Callable

from ..config.fields import RunConfig, pack_key
from ..training.packing import packable
from .spec import PACK_AUTO


def pack_size(setting: int | str) -> int:
    """Runs per pack for a ``pack`` setting here (1: no packing)."""
    if setting == "off":
        return 1
    if setting == "auto":
        import torch

        return PACK_AUTO if torch.cuda.is_available() else 1  # a CPU is busy with one run's arithmetic already
    return int(setting)


def pack_runs(todo: list[RunConfig], size: int, resume_epoch: Callable[[RunConfig], int] = lambda c: 0,
              alone: Callable[[RunConfig], bool] = lambda c: False) -> list[list[RunConfig]]:
    """Work items: packs of up to ``size`` runs with equal :func:`ltkit.config.fields.pack_key` that resume
    from the same epoch (``resume_epoch``: a killed pack's runs did; a run that diverged earlier did not),
    and single runs (``alone``: e.g. a forced re-run of a finished result, which stages its own results)."""
    items: list[list[RunConfig]] = []
    groups: dict[tuple[str, int], list[RunConfig]] = {}
    for cfg in todo:
        if size < 2 or packable(cfg) is not None or alone(cfg):
            items.append([cfg])
        else:
            groups.setdefault((pack_key(cfg), resume_epoch(cfg)), []).append(cfg)
    for runs in groups.values():
        items.extend(runs[i:i + size] for i in range(0, len(runs), size))
    return items
