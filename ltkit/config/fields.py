"""A run's configuration as plain data: the dataclass, what each field is for, the accepted values.

The bottom of the configuration: every module that trains, plans or reports reads a
:class:`RunConfig`. Each field has one *role* (its metadata), the one place that says whether it is
part of a run's identity (:meth:`RunConfig.fingerprint`) and whether runs that differ in it can be
trained as one packed model (:func:`pack_key`). A configuration travels as ``to_dict()`` (YAML for the
notebook and packs, pickled for Slurm jobs) and is read back through
:func:`ltkit.training.check.make_config` on every path, so what arrives is checked again. Filling the
protocol's defaults and checking against the registries is ``make_config``'s job, in the layer above
the data, models, losses and procedures it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.layout import run_path, sibling_path

OPTIMIZERS = ("adam", "sgd")
SELECT = ("best_val", "last")
DEVICES = ("auto", "cpu", "cuda")
COMPILE = ("auto", "on", "off", "reduce-overhead")
NORMALIZATIONS = ("recipe", "dataset")
CLASSIFIERS = ("linear", "cosine")


# Fields added after runs were recorded, with the value every earlier run had: a run at that value keeps the
# fingerprint it had before the field existed (fp32 is what every CPU run did before precision was a setting).
LEGACY_DEFAULTS: dict[str, Any] = {"precision": "fp32", "subset_seed": 0, "mixup": 0.0}

# How a number field is written in a run's identity, so that ``100`` and ``100.0`` name one run (YAML, a notebook's
# parameter cell and ``--set`` write either). The forms are the ones every recorded run already has: the grid files
# write the imbalance factor as an integer (``imb_factor: 100``), the protocol defaults are floats (``lr: 0.1``,
# ``test_imb_factor: 100.0``); a number field not named here is a float. The one exception: configs/thesis.yaml wrote
# ``test_imb_factor: 100``, so its runs' fingerprints moved with this rule (no thesis-grid run was recorded by then).
INTEGRAL_AS_INT = frozenset({"imb_factor"})


# Roles (field metadata): what a field is for.
IDENTITY = "identity"  # determines the trained weights: in the fingerprint, equal within a pack
PER_RUN = "per_run"  # determines the weights, but runs differing in it can share a pack (seed, loss, ...)
PLACEMENT = "placement"  # where and how fast it runs (device, compile): not in the fingerprint, equal in a pack
REPORTING = "reporting"  # what is written or shown (intervals, tensorboard, paths): neither
ROLES = (IDENTITY, PER_RUN, PLACEMENT, REPORTING)


def _field(default: Any = dataclasses.MISSING, role: str = IDENTITY, factory: Any = dataclasses.MISSING) -> Any:
    return field(default=default, default_factory=factory, metadata={"role": role})


class ConfigError(ValueError):
    """A bad configuration value; the message names it and the accepted values."""


@dataclass
class RunConfig:
    """One run. Its *method* (the name the study gives it, its folder in ``results/``) is made of a
    *loss* (what stage one trains with, ``ltkit.losses``), a *procedure* (how the model is obtained:
    ``train``, ``two_expert``, or a stage-two procedure such as ``crt`` that starts from the
    stage-one run named by ``stage1``; ``ltkit.training.procedures``) and the sampler and classifier."""

    protocol: str = "thesis"
    dataset: str = "cifar100"
    model: str = "resnet50"
    method: str | None = _field(None, PER_RUN)  # the run's name in results/ (default: the loss, or the procedure if not 'train')
    loss: str = _field("ce", PER_RUN)
    procedure: str = "train"
    seed: int = _field(42, PER_RUN)
    split_seed: int = 42  # the thesis protocol's train/test split
    subset_seed: int = 0  # cao2019: the numpy seed of Cao et al.'s per-class draw (0: their images)
    imb_factor: float = 100.0
    imb_type: str = "exp"
    test_imb_factor: float = 100.0
    epochs: int | None = None
    batch_size: int = 128
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    milestones: list[int] | None = None
    lr_decay: float | None = None
    warmup_epochs: int | None = None
    image_size: int | None = None
    pretrained: bool | None = None
    sampler: str = _field("instance", PER_RUN)
    mixup: float = 0.0  # stage one: mixup's Beta(alpha, alpha) (Zhang et al. 2018; MiSLAS: alpha = 1); 0: off
    normalization: str | None = None  # recipe: the protocol's published constants; dataset: the data's own
    classifier: str | None = _field(None, PER_RUN)  # linear or cosine (Cao et al.'s normed classifier; LDAM's default)
    loss_params: dict = _field(role=PER_RUN, factory=dict)
    procedure_params: dict = field(default_factory=dict)  # e.g. tau, lr, augment, head_fraction
    model_params: dict = field(default_factory=dict)
    source_params: dict = field(default_factory=dict)
    select: str | None = None
    track_test: bool | None = None
    val_per_class: int = 20
    stage1: str | None = None  # the method of the stage-one run a stage-two procedure starts from
    stage2_epochs: int = 10
    device: str = _field("auto", PLACEMENT)
    precision: str = "auto"  # auto | fp32 | bf16 (ltkit.core.hardware); make_config resolves auto for the device
    compile: str = _field("auto", PLACEMENT)
    deterministic: bool = False
    eval_batch_size: int = _field(1024, REPORTING)
    max_steps: int | None = None  # smoke runs: stop each epoch after this many steps
    data_root: str | None = _field(None, REPORTING)
    bootstrap: int = _field(1000, REPORTING)
    tensorboard: bool = _field(False, REPORTING)  # per-epoch scalars in <checkpoint dir>/tensorboard (needs the tensorboard package)

    def __post_init__(self) -> None:
        if self.method is None:
            self.method = self.loss if self.procedure == "train" else self.procedure

    @property
    def stage(self) -> int:
        """2 for a procedure that starts from a stage-one run's checkpoint, else 1."""
        return 2 if self.stage1 else 1

    def data_tag(self) -> str:
        if self.protocol == "natural":  # the data's own imbalance: name it after its folder
            name = Path(self.data_root).name if self.data_root and self.dataset == "folder" else self.dataset
            return f"{name}_natural"
        return data_tag(self.dataset, self.imb_factor, self.imb_type) + (f"_subset{self.subset_seed}"
                                                                         if self.subset_seed else "")

    def run_path(self) -> str:
        """``<protocol>/<dataset tag>/<model>/<method>/seed<k>``: where the run's files live."""
        return run_path(self.protocol, self.data_tag(), self.model, self.method, self.seed)

    def stage1_path(self) -> str | None:
        """The run path of the stage-one run this run starts from (None for a stage-one run)."""
        return sibling_path(self.run_path(), self.stage1) if self.stage1 else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of what determines the trained weights (the identity and per-run fields; not where it ran
        or what it reports). A field added later, at the value every earlier run had
        (:data:`LEGACY_DEFAULTS`), is left out, so those runs keep their fingerprint."""
        d = {k: canonical_number(k, v) for k, v in self.to_dict().items() if role(k) in (IDENTITY, PER_RUN)}
        for k, legacy in LEGACY_DEFAULTS.items():
            if d.get(k) == legacy:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
FLOAT_FIELDS = frozenset(n for n, f in FIELDS.items() if "float" in str(f.type))  # imb_factor, lr, momentum, ...


def role(name: str) -> str:
    """The role of a configuration field (:data:`ROLES`)."""
    return FIELDS[name].metadata.get("role", IDENTITY)


def canonical_number(name: str, value: Any) -> Any:
    """``value`` of field ``name`` in the one form a run's identity writes it (:data:`INTEGRAL_AS_INT`): a float field's
    integral value as an ``int`` for the imbalance factor, every other float field's value as a ``float``. Anything
    else (a string, None, an integer field, the nested ``*_params`` mappings) is returned as it is."""
    if name not in FLOAT_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if name in INTEGRAL_AS_INT:
        return int(value) if float(value).is_integer() else float(value)
    return float(value)


def pack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can be trained as one packed model (:mod:`ltkit.training.packed`): the same data,
    model, recipe, length and placement; they may differ in their per-run and reporting fields."""
    return repr(sorted((k, canonical_number(k, v)) for k, v in cfg.to_dict().items() if role(k) in (IDENTITY, PLACEMENT)))


def data_tag(dataset: str, imb_factor: float, imb_type: str = "exp") -> str:
    """``cifar100_exp100``, ``cifar100_step10``, ``cifar100_balanced`` (IF 1): the data part of a run's folder."""
    if imb_factor == 1:
        return f"{dataset}_balanced"
    return f"{dataset}_{imb_type}{imb_factor:g}"


def parse_data_tag(tag: str) -> dict[str, Any]:
    """The inverse of :meth:`RunConfig.data_tag`: ``{'dataset', 'imb_type', 'imb_factor', 'subset_seed'}`` (``natural``: the
    data's own imbalance, no factor), so no reader re-parses a folder name its own way."""
    subset = 0
    head, sep, tail = tag.rpartition("_subset")
    if sep and tail.isdigit():
        tag, subset = head, int(tail)
    if tag.endswith("_natural"):
        return {"dataset": tag.removesuffix("_natural"), "imb_type": "natural", "imb_factor": None, "subset_seed": 0}
    if tag.endswith("_balanced"):
        return {"dataset": tag.removesuffix("_balanced"), "imb_type": "exp", "imb_factor": 1.0, "subset_seed": subset}
    dataset, _, rest = tag.rpartition("_")
    kind = next((t for t in ("exp", "step") if rest.startswith(t)), None)
    if not dataset or kind is None:
        raise ValueError(f"not a data tag: {tag!r} (expected <dataset>_balanced, <dataset>_exp<IF>, "
                         "<dataset>_step<IF> or <name>_natural)")
    return {"dataset": dataset, "imb_type": kind, "imb_factor": float(rest[len(kind):]), "subset_seed": subset}
