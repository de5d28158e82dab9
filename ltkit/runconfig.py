"""A run's configuration as plain data: the dataclass, the protocol defaults, the accepted values.

The bottom layer of the configuration: every module that trains or evaluates
reads a :class:`RunConfig`; checking one against the registries is
:func:`ltkit.config.make_config`'s job, a layer above the models, losses and methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import run_path, sibling_path

# Both recipes normalise with these constants, for CIFAR-10 and CIFAR-100 alike: the thesis's Table A.1 and
# Cao et al.'s cifar_train.py. (They are CIFAR-10's mean with an often-copied std; CIFAR-100's own statistics
# are (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762): ``normalization: dataset`` uses the data's own.)
RECIPE_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    # Midtgaard (2025), Table A.2 / section 3.3: Adam 1e-3, StepLR x0.1 every 30 of 90 epochs, 224 px.
    "thesis": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=90, milestone_fracs=(1 / 3, 2 / 3),
                   lr_decay=0.1, warmup_frac=0.0, image_size=224, select="best_val", pretrained=True,
                   track_test=False, drw_frac=2 / 3, normalization="recipe", norm=RECIPE_NORM),
    # Cao et al. (2019), appendix B: SGD 0.1, 5 warm-up epochs, x0.01 at 160 and 180 of 200, 32 px.
    "cao2019": dict(optimizer="sgd", lr=0.1, weight_decay=2e-4, epochs=200, milestone_fracs=(0.8, 0.9),
                    lr_decay=0.01, warmup_frac=0.025, image_size=32, select="last", pretrained=False,
                    track_test=True, drw_frac=0.8, normalization="recipe", norm=RECIPE_NORM),
}
# One's own folder data (ltkit.folder): fine-tune as the thesis does, on the data's own imbalance and statistics.
PROTOCOL_DEFAULTS["natural"] = dict(PROTOCOL_DEFAULTS["thesis"], normalization="dataset", norm=None)
OPTIMIZERS = ("adam", "sgd")
SELECT = ("best_val", "last")
DEVICES = ("auto", "cpu", "cuda")
COMPILE = ("auto", "on", "off", "reduce-overhead")
NORMALIZATIONS = ("recipe", "dataset")
CLASSIFIERS = ("linear", "cosine")


# Fields added after runs were recorded, with the value every earlier run had: a run at that value keeps the
# fingerprint it had before the field existed (fp32 is what every CPU run did before precision was a setting).
LEGACY_DEFAULTS: dict[str, Any] = {"precision": "fp32"}


class ConfigError(ValueError):
    """A bad configuration value; the message names it and the accepted values."""


@dataclass
class RunConfig:
    """One run. Its *method* (the name the study gives it, its folder in ``results/``) is made of a
    *loss* (what stage one trains with, ``ltkit.losses``), a *procedure* (how the model is obtained:
    ``train``, ``two_expert``, or a stage-two procedure such as ``crt`` that starts from the
    stage-one run named by ``stage1``; ``ltkit.procedures``) and the sampler and classifier."""

    protocol: str = "thesis"
    dataset: str = "cifar100"
    model: str = "resnet50"
    method: str | None = None  # the run's name in results/ (default: the loss, or the procedure if not 'train')
    loss: str = "ce"
    procedure: str = "train"
    seed: int = 42
    split_seed: int = 42
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
    sampler: str = "instance"
    normalization: str | None = None  # recipe: the protocol's published constants; dataset: the data's own
    classifier: str | None = None  # linear or cosine (Cao et al.'s normed classifier; LDAM's default)
    loss_params: dict = field(default_factory=dict)
    procedure_params: dict = field(default_factory=dict)  # e.g. tau, lr, augment, head_fraction
    model_params: dict = field(default_factory=dict)
    source_params: dict = field(default_factory=dict)
    select: str | None = None
    track_test: bool | None = None
    val_per_class: int = 20
    stage1: str | None = None  # the method of the stage-one run a stage-two procedure starts from
    stage2_epochs: int = 10
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (ltkit.hardware); make_config resolves auto for the device
    compile: str = "auto"
    deterministic: bool = False
    eval_batch_size: int = 1024
    max_steps: int | None = None  # smoke runs: stop each epoch after this many steps
    data_root: str | None = None
    bootstrap: int = 1000
    tensorboard: bool = False  # per-epoch scalars in <checkpoint dir>/tensorboard (needs the tensorboard package)

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
        if self.imb_factor == 1:
            return f"{self.dataset}_balanced"
        return f"{self.dataset}_{self.imb_type}{self.imb_factor:g}"

    def run_path(self) -> str:
        """``<protocol>/<dataset tag>/<model>/<method>/seed<k>``: where the run's files live."""
        return run_path(self.protocol, self.data_tag(), self.model, self.method, self.seed)

    def stage1_path(self) -> str | None:
        """The run path of the stage-one run this run starts from (None for a stage-one run)."""
        return sibling_path(self.run_path(), self.stage1) if self.stage1 else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of what determines the trained weights (not device or paths)."""
        d = self.to_dict()
        for k in ("device", "data_root", "eval_batch_size", "bootstrap", "compile", "tensorboard"):
            d.pop(k, None)
        for k, legacy in LEGACY_DEFAULTS.items():  # fields added later: at the value runs had before, not hashed
            if d.get(k) == legacy:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
