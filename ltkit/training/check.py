"""Checking a run's configuration against every registry, and filling the protocol defaults.

Every grid entry and every notebook parameter passes through :func:`make_config`,
so a typo fails with one line that names the bad value and the accepted ones,
before any data is loaded or any training starts. This module sits above the
registries it reads (datasets, protocols, samplers, models, losses, stage-two
procedures); the configuration itself is plain data in :mod:`ltkit.config.fields`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

from ..config.fields import (
    CLASSIFIERS,
    COMPILE,
    DEVICES,
    FIELDS,
    NORMALIZATIONS,
    OPTIMIZERS,
    SELECT,
    ConfigError,
    RunConfig,
)
from ..core.hardware import PRECISIONS, resolve_precision
from ..core.registry import bad_value
from ..data import IMBALANCE_TYPES, PROTOCOLS, SAMPLERS, SOURCES
from ..losses import LOSSES
from ..models import MODELS
from .procedures import PROCEDURES

# Fields renamed when the vocabulary became one word per thing (a config naming the old one is told the new)
RENAMED = {"label": "method", "name": "method"}


def _bad(name: str, value: Any, accepted: str) -> ConfigError:
    return ConfigError(bad_value(name, value, accepted))


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
        raise _bad(name, v, ", ".join(map(str, accepted)))


def make_config(params: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Validate ``params`` and fill protocol defaults; returns a complete RunConfig."""
    d = {**(params or {}), **overrides}
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        renamed = [f"{k!r} is now {RENAMED[k]!r}" for k in unknown if k in RENAMED]
        raise ConfigError(f"unknown parameter(s) {', '.join(map(repr, unknown))}" + (f" ({'; '.join(renamed)})" if renamed
                          else "") + f" (accepted: {', '.join(FIELDS)})")
    if d.get("loss") in PROCEDURES:
        raise ConfigError(f"bad value for 'loss': {d['loss']!r} is a procedure, not a loss: write procedure: {d['loss']}"
                          + (" (with stage1: <the method it starts from>)" if PROCEDURES.info(d["loss"]).stage == 2 else "")
                          + f" (losses: {', '.join(LOSSES.names())})")
    d = {**{k: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)  # type: ignore[misc]
            for k, f in FIELDS.items()}, **d}
    _choice(d, "protocol", PROTOCOLS.names())
    _choice(d, "dataset", SOURCES.names())
    _choice(d, "model", MODELS.names())
    _choice(d, "loss", LOSSES.names())
    _choice(d, "procedure", PROCEDURES.names())
    _choice(d, "imb_type", IMBALANCE_TYPES)
    _choice(d, "sampler", SAMPLERS.names())
    _choice(d, "optimizer", OPTIMIZERS, allow_none=True)
    _choice(d, "select", SELECT, allow_none=True)
    _choice(d, "device", DEVICES)
    _choice(d, "precision", PRECISIONS)
    _choice(d, "normalization", NORMALIZATIONS, allow_none=True)
    _choice(d, "classifier", CLASSIFIERS, allow_none=True)
    if d["compile"] is True or d["compile"] is False:
        d["compile"] = "on" if d["compile"] else "off"
    _choice(d, "compile", COMPILE)
    for name in ("seed", "split_seed", "subset_seed"):
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
    _num(d, "mixup", 0)
    for name in ("loss_params", "procedure_params", "model_params", "source_params"):
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
    if d["method"] is not None and (not isinstance(d["method"], str) or not d["method"].replace("_", "").isalnum()):
        raise _bad("method", d["method"], "letters, digits and underscores")
    stage = PROCEDURES.info(d["procedure"]).stage
    if stage == 2 and not d["stage1"]:
        raise ConfigError(f"stage-two procedure {d['procedure']!r} needs 'stage1': the method of the run it starts from")
    if stage == 1 and d["stage1"]:
        raise _bad("stage1", d["stage1"], f"null for procedure {d['procedure']!r}, which trains from the data "
                   f"(stage-two procedures: {', '.join(n for n in PROCEDURES.names() if PROCEDURES.info(n).stage == 2)})")

    d["precision"] = resolve_precision(d["precision"], d["device"])  # auto -> what this machine does natively
    if d["subset_seed"] and d["protocol"] != "cao2019":
        raise _bad("subset_seed", d["subset_seed"], f"0 for protocol {d['protocol']!r} (a subset seed draws Cao et al.'s "
                   "images; the thesis protocol's split has split_seed)")
    defaults = PROTOCOLS.info(d["protocol"]).recipe
    epochs = d["epochs"] if d["epochs"] is not None else defaults["epochs"]
    d["epochs"] = epochs
    for k in ("optimizer", "lr", "weight_decay", "lr_decay", "image_size", "select", "pretrained", "track_test",
              "normalization"):
        if d[k] is None:
            d[k] = defaults[k]
    if d["normalization"] == "recipe" and defaults["norm"] is None:
        raise _bad("normalization", "recipe", f"'dataset' for protocol {d['protocol']!r}, which has no published constants")
    loss_spec = LOSSES.info(d["loss"])
    if d["classifier"] is None:  # the head the loss presumes (LossSpec.classifier)
        d["classifier"] = loss_spec.classifier
    if d["milestones"] is None:
        d["milestones"] = sorted({int(round(f * epochs)) for f in defaults["milestone_fracs"]})
    if d["warmup_epochs"] is None:
        d["warmup_epochs"] = int(round(defaults["warmup_frac"] * epochs))
    if loss_spec.epoch_params:  # e.g. DRW's switch: the protocol's fraction of this run's epochs
        d["loss_params"] = {**{p: int(round(defaults["drw_frac"] * epochs)) for p in loss_spec.epoch_params},
                            **d["loss_params"]}
    _check_params("loss_params", LOSSES.get(d["loss"]), d["loss_params"], f"loss {d['loss']!r}")
    _check_params("procedure_params", PROCEDURES.get(d["procedure"]), d["procedure_params"],
                  f"procedure {d['procedure']!r}")
    return RunConfig(**d)


def _check_named_params(field_name: str, params: dict, fn, reserved: tuple[str, ...], owner: str) -> None:
    """Every key of ``params`` must be a named argument of ``fn`` (a typo such as ``num_clases`` would
    otherwise vanish into ``**kwargs`` and the run would silently use the default)."""
    sig = inspect.signature(fn)
    accepted = [p for p, v in sig.parameters.items() if p not in reserved and not p.startswith("_")
                and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    for k in params:
        if k not in accepted:
            raise ConfigError(f"bad key {k!r} in {field_name} for {owner} (accepted: {', '.join(accepted) or 'none'})")


def _check_params(field_name: str, fn, params: dict, owner: str) -> None:
    """A loss's or procedure's parameters: named arguments of its function, numbers or booleans as declared."""
    sig = inspect.signature(fn)
    accepted = [p for p in sig.parameters if p not in ("counts", "_", "ctx", "ckpt_dir", "progress")
                and sig.parameters[p].kind.name != "VAR_KEYWORD"]
    for k, v in params.items():
        if k not in accepted:
            raise ConfigError(f"bad key {k!r} in {field_name} for {owner} (accepted: {', '.join(accepted) or 'none'})")
        default = sig.parameters[k].default
        if isinstance(default, bool) or (default is None and "bool" in str(sig.parameters[k].annotation)):
            if not isinstance(v, bool):
                raise _bad(f"{field_name}.{k}", v, "true or false")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(f"{field_name}.{k}", v, "a finite number")
