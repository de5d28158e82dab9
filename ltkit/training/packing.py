"""Which stage-one runs may be trained as one packed model (:mod:`ltkit.training.packed`), without torch:
the grid plans its packs with this and :func:`ltkit.config.fields.pack_key`."""

from __future__ import annotations

from ..config.fields import RunConfig
from ..models import MODELS


def packable(cfg: RunConfig) -> str | None:
    """Why ``cfg`` cannot be trained in a pack (None: it can)."""
    if cfg.procedure != "train":
        return f"procedure {cfg.procedure!r} is not plain training"
    if MODELS.info(cfg.model).family != "cifar":
        return f"model {cfg.model!r} is a 224-px backbone (packing pays for small CIFAR networks)"
    if cfg.mixup:
        return "mixup is trained by the single-run loop (the packed model does not mix its batches)"
    if cfg.sampler == "oversample":
        return "the oversample sampler's epochs are longer than the other samplers'"
    return None
