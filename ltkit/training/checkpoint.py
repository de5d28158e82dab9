"""Checkpoints: the one place that saves, reads and verifies them.

Two kinds per run folder (``ltkit.core.layout``): ``last.pt``, written atomically after every epoch
(model, optimiser, history, best-so-far, launch count), which a killed run resumes from; and
``final.pt``, a finished stage-one run's selected weights, which its stage-two runs start from.
Both carry the run's model name and configuration fingerprint, so a checkpoint of another model or
configuration is refused rather than silently continued.

Reading never runs code (``torch.load(weights_only=True)``: tensors and plain values only) and
never changes the file: an empty, truncated or foreign file is reported in one line that names it,
says what is wrong with it and what to do, and is left where it is.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.fields import RunConfig
from ..core.io import atomic_torch_save, atomic_write_json
from ..core.layout import FINAL, PROGRESS

LAST_KEYS = ("epoch", "model", "opt", "history", "best", "fingerprint", "model_name")
FINAL_KEYS = ("model", "model_name", "fingerprint", "config")
REMEDY = "it was left untouched; start the run again with --force, or delete the file"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: empty, truncated, foreign content, or code inside."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another model or configuration."""


def read_checkpoint(path: str | Path, keys: tuple[str, ...] = LAST_KEYS, remedy: str = REMEDY) -> dict[str, Any]:
    """The checkpoint at ``path`` as a mapping with at least ``keys``; :class:`CheckpointError` (one line,
    the file untouched) when it is empty, truncated, holds Python objects beyond tensors, or is not one."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"{path}: not a readable checkpoint: the file is empty (0 bytes, e.g. a disk that filled "
                              f"up while it was written); {remedy}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a plain-tensor checkpoint: it holds Python objects that loading would "
                              f"have to run ({first}); refused, {remedy}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated or corrupt ({size} bytes; "
                              f"{type(exc).__name__}: {first}); {remedy}") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: not an ltkit checkpoint: it holds a {type(ck).__name__}, not a mapping with "
                              f"{', '.join(keys)}; {remedy}")
    missing = [k for k in keys if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: not an ltkit checkpoint of this kind: it lacks {', '.join(missing)}; {remedy}")
    return ck


def verify(ck: dict[str, Any], path: str | Path, cfg: RunConfig) -> None:
    """The checkpoint belongs to this run's model and configuration, or :class:`CheckpointMismatch`."""
    if ck.get("model_name") != cfg.model:
        raise CheckpointMismatch(f"{path}: checkpoint of model {ck.get('model_name')!r}, not {cfg.model!r}; "
                                 "it was left untouched; point the run elsewhere or delete it")
    if ck.get("fingerprint") != cfg.fingerprint():
        raise CheckpointMismatch(f"{path}: checkpoint of another configuration (fingerprint {ck.get('fingerprint')} "
                                 f"!= {cfg.fingerprint()}); it was left untouched; delete it to start afresh")


def save_last(last: Path, cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer, epoch: int,
              history: list[dict[str, Any]], best: dict[str, Any], launch: int) -> None:
    """``last.pt`` after ``epoch``, then ``progress.json`` (what ``grid status`` reads without loading it)."""
    atomic_torch_save(last, {"epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                             "history": history, "best": best, "fingerprint": cfg.fingerprint(),
                             "model_name": cfg.model, "launch": launch})
    atomic_write_json(last.with_name(PROGRESS),
                      {"epoch": epoch + 1, "epochs": cfg.epochs, "launch": launch, "updated": time.time(),
                       "seconds_per_epoch": history[-1]["seconds"]})


def load_last(path: Path, cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer):
    """Restore ``model`` and ``opt`` from ``last.pt``; returns (next epoch, history, best, this launch's number)."""
    ck = read_checkpoint(path, LAST_KEYS)
    verify(ck, path, cfg)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    return ck["epoch"], ck["history"], ck["best"], ck.get("launch", 1) + 1


def save_final(ckpt_dir: Path, cfg: RunConfig, model: nn.Module) -> None:
    """``final.pt``: a finished stage-one run's selected weights, what its stage-two runs start from."""
    atomic_torch_save(ckpt_dir / FINAL, {"model": model.state_dict(), "model_name": cfg.model,
                                         "fingerprint": cfg.fingerprint(), "config": cfg.to_dict()})


def read_final(path: Path, stage1: str) -> dict[str, Any]:
    """A stage-one run's ``final.pt`` (for its stage-two runs); the remedy names the stage one to re-run."""
    if not path.exists():
        raise CheckpointError(f"stage-one checkpoint {path} is missing; run {stage1!r} first")
    return read_checkpoint(path, FINAL_KEYS, remedy=f"it was left untouched; re-run {stage1!r} with --force")


def non_finite_state(model: nn.Module) -> list[str]:
    """Names of parameters and buffers (BatchNorm running statistics included) holding NaN or inf."""
    items = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not items:
        return []
    ok = torch.stack([torch.isfinite(v).all() for _, v in items]).tolist()  # one host sync
    return [k for (k, _), good in zip(items, ok, strict=True) if not good]
