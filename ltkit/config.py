"""Run configuration: one dataclass, protocol defaults, and up-front validation.

Every grid entry and every notebook parameter passes through :func:`make_config`,
so a typo fails with one line that names the bad value and the accepted ones,
before any data is loaded or any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class ConfigError(ValueError):
    """A bad configuration value; the message names it and the accepted values."""


@dataclass
class RunConfig:
    protocol: str = "thesis"
    dataset: str = "cifar100"
    model: str = "resnet50"
    loss: str = "ce"
    label: str | None = None  # name of the method in results/ (defaults to loss)
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
    model_params: dict = field(default_factory=dict)
    source_params: dict = field(default_factory=dict)
    select: str | None = None
    track_test: bool | None = None
    val_per_class: int = 20
    stage1: str | None = None  # label of the stage-one run a stage-two method starts from
    stage2_epochs: int = 10
    device: str = "auto"
    compile: str = "auto"
    deterministic: bool = False
    eval_batch_size: int = 1024
    max_steps: int | None = None  # smoke runs: stop each epoch after this many steps
    data_root: str | None = None
    bootstrap: int = 1000
    tensorboard: bool = False  # per-epoch scalars in <checkpoint dir>/tensorboard (needs the tensorboard package)

    @property
    def name(self) -> str:
        return self.label or self.loss

    def data_tag(self) -> str:
        if self.protocol == "natural":  # the data's own imbalance: name it after its folder
            name = Path(self.data_root).name if self.data_root and self.dataset == "folder" else self.dataset
            return f"{name}_natural"
        if self.imb_factor == 1:
            return f"{self.dataset}_balanced"
        return f"{self.dataset}_{self.imb_type}{self.imb_factor:g}"

    def run_path(self) -> str:
        """``<protocol>/<dataset tag>/<model>/<method>/seed<k>``: where the run's files live."""
        return f"{self.protocol}/{self.data_tag()}/{self.model}/{self.name}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of what determines the trained weights (not device or paths)."""
        d = self.to_dict()
        for k in ("device", "data_root", "eval_batch_size", "bootstrap", "compile", "tensorboard"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _bad(name: str, value: Any, accepted: str) -> ConfigError:
    return ConfigError(f"bad value for {name!r}: {value!r} (accepted: {accepted})")


def _int(d: dict, name: str, lo: int, allow_none: bool = False) -> None:
    v = d.get(name)
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(name, v, f"an integer >= {lo}" + (" or null" if allow_none else ""))


def _num(d: dict, name: str, lo: float, hi: float = math.inf, allow_none: bool = False, lo_open: bool = False) -> None:
    v = d.get(name)
    if v is None and allow_none:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi != math.inf else "")
        raise _bad(name, v, f"a finite number {rng}" + (" or null" if allow_none else ""))


def _choice(d: dict, name: str, accepted: list[str] | tuple[str, ...], allow_none: bool = False) -> None:
    v = d.get(name)
    if v is None and allow_none:
        return
    if v not in accepted:
        raise ConfigError(f"bad value for {name!r}: {v!r} (accepted: {', '.join(map(str, accepted))})")


def make_config(params: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Validate ``params`` and fill protocol defaults; returns a complete RunConfig."""
    from .data import IMBALANCE_TYPES, PROTOCOLS, SOURCES
    from .loader import SAMPLERS
    from .losses import LOSSES
    from .methods import STAGE2
    from .models import MODELS

    d = {**(params or {}), **overrides}
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(map(repr, unknown))} (accepted: {', '.join(FIELDS)})")
    d = {**{k: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)  # type: ignore[misc]
            for k, f in FIELDS.items()}, **d}
    _choice(d, "protocol", PROTOCOLS.names())
    _choice(d, "dataset", SOURCES.names())
    _choice(d, "model", MODELS.names())
    _choice(d, "loss", LOSSES.names() + STAGE2.names())
    _choice(d, "imb_type", IMBALANCE_TYPES)
    _choice(d, "sampler", SAMPLERS.names())
    _choice(d, "optimizer", OPTIMIZERS, allow_none=True)
    _choice(d, "select", SELECT, allow_none=True)
    _choice(d, "device", DEVICES)
    _choice(d, "normalization", NORMALIZATIONS, allow_none=True)
    _choice(d, "classifier", CLASSIFIERS, allow_none=True)
    if d["compile"] is True or d["compile"] is False:
        d["compile"] = "on" if d["compile"] else "off"
    _choice(d, "compile", COMPILE)
    for name in ("seed", "split_seed"):
        _int(d, name, 0)
    _num(d, "imb_factor", 1)
    _num(d, "test_imb_factor", 1)
    _int(d, "epochs", 1, allow_none=True)
    _int(d, "batch_size", 1)
    _num(d, "lr", 0, lo_open=True, allow_none=True)
    _num(d, "momentum", 0, 1)
    _num(d, "weight_decay", 0, allow_none=True)
    _num(d, "lr_decay", 0, 1, lo_open=True, allow_none=True)
    _int(d, "warmup_epochs", 0, allow_none=True)
    _int(d, "image_size", 8, allow_none=True)
    _int(d, "val_per_class", 0)
    _int(d, "stage2_epochs", 1)
    _int(d, "eval_batch_size", 1)
    _int(d, "max_steps", 1, allow_none=True)
    _int(d, "bootstrap", 0)
    for name in ("loss_params", "model_params", "source_params"):
        if not isinstance(d[name], dict):
            raise _bad(name, d[name], "a mapping of parameter names to values")
    _check_named_params("model_params", d["model_params"], MODELS.get(d["model"]), ("num_classes", "pretrained"),
                        f"model {d['model']!r}")
    _check_named_params("source_params", d["source_params"], SOURCES.get(d["dataset"]), ("root", "download"),
                        f"dataset {d['dataset']!r}")
    for name in ("pretrained", "track_test"):
        if d[name] is not None and not isinstance(d[name], bool):
            raise _bad(name, d[name], "true, false or null")
    for name in ("deterministic", "tensorboard"):
        if not isinstance(d[name], bool):
            raise _bad(name, d[name], "true or false")
    if d["milestones"] is not None and (not isinstance(d["milestones"], list)
                                        or not all(isinstance(m, int) and m >= 0 for m in d["milestones"])):
        raise _bad("milestones", d["milestones"], "a list of epoch numbers (integers >= 0) or null")
    if d["label"] is not None and (not isinstance(d["label"], str) or not d["label"].replace("_", "").isalnum()):
        raise _bad("label", d["label"], "letters, digits and underscores")
    if d["loss"] in STAGE2.names() and STAGE2.info(d["loss"]).get("needs_stage1", True) and not d["stage1"]:
        raise ConfigError(f"stage-two method {d['loss']!r} needs 'stage1': the label of the run it starts from")

    defaults = PROTOCOL_DEFAULTS[d["protocol"]]
    epochs = d["epochs"] if d["epochs"] is not None else defaults["epochs"]
    d["epochs"] = epochs
    for k in ("optimizer", "lr", "weight_decay", "lr_decay", "image_size", "select", "pretrained", "track_test",
              "normalization"):
        if d[k] is None:
            d[k] = defaults[k]
    if d["normalization"] == "recipe" and defaults["norm"] is None:
        raise _bad("normalization", "recipe", f"'dataset' for protocol {d['protocol']!r}, which has no published constants")
    if d["classifier"] is None:  # LDAM's scale s = 30 presumes cosine logits in [-1, 1] (Cao et al.'s code)
        normed = LOSSES.info(d["loss"]).get("normed_classifier") if d["loss"] in LOSSES else False
        d["classifier"] = "cosine" if normed else "linear"
    if d["milestones"] is None:
        d["milestones"] = sorted({int(round(f * epochs)) for f in defaults["milestone_fracs"]})
    if d["warmup_epochs"] is None:
        d["warmup_epochs"] = int(round(defaults["warmup_frac"] * epochs))
    if LOSSES.info(d["loss"]).get("needs_epochs") if d["loss"] in LOSSES else False:
        lp = dict(d["loss_params"])
        lp.setdefault("drw_epoch", int(round(defaults["drw_frac"] * epochs)))
        d["loss_params"] = lp
    _check_loss_params(d["loss"], d["loss_params"])
    return RunConfig(**d)


def _check_named_params(field_name: str, params: dict, fn, reserved: tuple[str, ...], owner: str) -> None:
    """Every key of ``params`` must be a named argument of ``fn`` (a typo such as ``num_clases`` would
    otherwise vanish into ``**kwargs`` and the run would silently use the default)."""
    import inspect

    sig = inspect.signature(fn)
    accepted = [p for p, v in sig.parameters.items() if p not in reserved and not p.startswith("_")
                and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    for k in params:
        if k not in accepted:
            raise ConfigError(f"bad key {k!r} in {field_name} for {owner} (accepted: {', '.join(accepted) or 'none'})")


def _check_loss_params(loss: str, params: dict) -> None:
    import inspect

    from .losses import LOSSES
    from .methods import STAGE2

    fn = LOSSES.get(loss) if loss in LOSSES else STAGE2.get(loss)
    sig = inspect.signature(fn)
    accepted = [p for p in sig.parameters if p not in ("counts", "_", "ctx", "ckpt_dir") and sig.parameters[p].kind.name != "VAR_KEYWORD"]
    for k, v in params.items():
        if k not in accepted:
            raise ConfigError(f"bad loss parameter {k!r} for {loss!r} (accepted: {', '.join(accepted) or 'none'})")
        default = sig.parameters[k].default
        if isinstance(default, bool) or (default is None and "bool" in str(sig.parameters[k].annotation)):
            if not isinstance(v, bool):
                raise _bad(f"loss_params.{k}", v, "true or false")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(f"loss_params.{k}", v, "a finite number")
