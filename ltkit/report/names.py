"""What tables, legends and sentences call a method, and the order they list methods in.

Owned by the registries: a loss's label and order are its ``LossSpec`` entry's (``ltkit.losses``),
a procedure's its ``ProcedureSpec``'s, a sampler's its entry's; a method that is a loss with a
sampler reads "<loss> + <sampler>". A new registry entry shows under its own label and in its
registry's order with no change here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.io import yaml_load
from ..core.layout import REPO
from ..data import SAMPLERS
from ..losses import LOSSES
from ..training.procedures import PROCEDURES

DATASET_NAMES = {"cifar100_lt": "CIFAR-100-LT", "cifar10_lt": "CIFAR-10-LT"}

# Methods that only the published tables name (../shared/reference), with the label their papers use and
# the method of ours they read beside (they sort right after it).
PAPER_METHODS = {"cb_reweighting": ("CB re-weighting", "cb"), "cb_focal": ("CB focal", "cb"),
                 "cb_best": ("CB (best)", "cb"), "eql": ("EQL", "seql"), "ce_drs": ("CE-DRS", "ce_drw"),
                 "la_loss": ("LA loss", "la"), "cb_resampling": ("CB re-sampling", "ce_cbs"),
                 "mislas": ("MiSLAS", "las_mixup")}
MIXUP = "_mixup"  # a method trained with mixup in stage one (ce_mixup), or a stage two from such a run (crt_mixup)


def _mixup_base(method: str) -> str | None:
    """The loss or procedure a ``<name>_mixup`` method is a mixup variant of (None: not one)."""
    base = method.removesuffix(MIXUP)
    return base if method.endswith(MIXUP) and (base in LOSSES or base in PROCEDURES) else None


def _thesis_losses() -> list[str]:
    """The thesis's losses in its order: the methods of its grid (``configs/thesis.yaml``)."""
    try:
        return [m for m in yaml_load((REPO / "configs" / "thesis.yaml").read_text())["methods"] if isinstance(m, str)]
    except (OSError, KeyError, TypeError):
        return list(LOSSES.ordered())


THESIS_LOSS_ORDER = _thesis_losses()


def _sampler_variant(method: str) -> tuple[str, str] | None:
    """(loss, sampler) of a method named ``<loss>_<sampler short>`` (``ce_cbs``: CE with class-balanced sampling)."""
    for sampler in SAMPLERS.ordered():
        suffix = "_" + SAMPLERS.info(sampler).short
        if method.endswith(suffix) and method.removesuffix(suffix) in LOSSES:
            return method.removesuffix(suffix), sampler
    return None


def method_label(method: str) -> str:
    """A method's name in tables, legends and sentences: its registry entry's label (a loss, a procedure,
    a loss with a sampler: "CE + CB sampling"), a published method's own, else the method's name."""
    if method in LOSSES:
        return LOSSES.info(method).label
    if method in PROCEDURES:
        return PROCEDURES.info(method).label
    variant = _sampler_variant(method)
    if variant:
        return f"{LOSSES.info(variant[0]).label} + {SAMPLERS.info(variant[1]).label}"
    if method in PAPER_METHODS:
        return PAPER_METHODS[method][0]
    base = _mixup_base(method)
    if base in LOSSES:
        return f"{method_label(base)} + mixup"
    if base:
        return f"{method_label(base)} (mixup stage one)"
    return method


def _rank(method: str) -> tuple:
    losses, procs, samplers = LOSSES.ordered(), PROCEDURES.ordered(), SAMPLERS.ordered()
    if method in LOSSES:
        return (0, losses.index(method), 0, 0)
    variant = _sampler_variant(method)
    if variant:
        return (1, losses.index(variant[0]), samplers.index(variant[1]), 0)
    if method in PROCEDURES:
        return (2, procs.index(method), 0, 0)
    if method in PAPER_METHODS:
        after = _rank(PAPER_METHODS[method][1])
        return (*after[:3], 1 + list(PAPER_METHODS).index(method))
    base = _mixup_base(method)
    if base:  # right after its plain counterpart
        return (*_rank(base)[:3], 0.5)
    return (3, 0, 0, 0)


def method_order(methods) -> list[str]:
    """``methods`` in reading order: losses in their registry's order (the thesis's first), then losses with
    a sampler, then the procedures (stage two, two experts), each published-only method after its
    counterpart of ours, unknown names last, alphabetically."""
    return sorted(set(methods), key=lambda m: (_rank(m), m))


def ordered(table: pd.DataFrame, level: str = "method") -> pd.DataFrame:
    """Rows in :func:`method_order` within each block of the other index levels (the thesis's loss order first)."""
    if level not in (table.index.names or []):
        return table
    rank = {m: i for i, m in enumerate(method_order(table.index.get_level_values(level).unique()))}
    keys = [table.index.get_level_values(n) if n != level else table.index.get_level_values(n).map(rank)
            for n in table.index.names]
    return table.iloc[np.lexsort(list(reversed([np.asarray(k) for k in keys])))]
