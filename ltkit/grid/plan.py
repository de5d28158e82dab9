"""Planning a grid without training anything: each run's status, the CE aliases, what is left to run,
and a check of the data and weights before anything starts. Reads only (no lock, no folder is made),
imports no torch: ``ltkit grid list`` and ``grid status`` are this module."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..config.fields import ConfigError, RunConfig
from ..core.io import is_locked
from ..core.layout import (
    COMPLETE,
    LAST,
    PROGRESS,
    PROVENANCE,
    RUNNER_LOCK,
    TRAIN_LOCK,
)
from ..data import SOURCES, DataError, load_pool
from ..data.sources import source_defaults
from ..data.splits import expected_train_counts
from ..losses import LOSSES, check_ce_equivalence, reduces_to_ce
from ..models.weights import all_cached, weights_problem
from ..runs.records import write_alias
from ..runs.status import Status, run_status
from ..training.check import make_config
from ..training.procedures import PROCEDURES
from .spec import Grid


def data_source(r: RunConfig) -> tuple[str, str | None, str]:
    """What a run's data load depends on (dataset, data_root, source parameters): one check per distinct one."""
    return r.dataset, r.data_root, json.dumps(r.source_params, sort_keys=True)


def preflight(runs: list[RunConfig], data_root: str | Path | None = None, grid_file: str | None = None) -> None:
    """Check each distinct data source and pretrained backbone once, before any run starts.

    Offline, a thesis grid would otherwise start papermill, a kernel and the data for each of its
    runs before failing on the weights (about an hour for the whole grid); here it stops in seconds
    with one message that says what is missing and how to provide it. ``data_root``: where a run
    without its own ``data_root`` will look (default: ``LTKIT_DATA``, else this checkout's ``data/``).
    """

    problems = []
    for key in sorted({data_source(r) for r in runs}):
        dataset, root, params = key
        try:
            load_pool(dataset, root=root or data_root, **json.loads(params))
        except (DataError, OSError, ValueError) as exc:
            problems.append(str(exc).splitlines()[0])
    pretrained = sorted({r.model for r in runs if r.pretrained})
    for model in pretrained:
        why = weights_problem(model, grid_file)
        if why:
            problems.append(why)
    if problems:
        raise ConfigError("cannot start the grid: " + " | ".join(problems))
    if pretrained and all_cached(pretrained):  # a complete cache (ltkit fetch): the runs never call the hubs
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def expected_counts(cfg: RunConfig):
    """Training counts of a run, computed without loading images (None if unknown)."""
    spec = SOURCES.info(cfg.dataset)
    if spec.num_classes and spec.train_per_class:  # a fixed shape (CIFAR)
        k, per = spec.num_classes, spec.train_per_class
    else:  # a shape set by the source's own parameters (synthetic): the run's, else the source's defaults
        shape = {**source_defaults(cfg.dataset), **cfg.source_params}
        k, per = shape.get("num_classes"), shape.get("train_per_class")
        if not (isinstance(k, int) and isinstance(per, int)):
            return None
    return expected_train_counts(cfg.protocol, [per] * k, cfg.imb_factor, cfg.imb_type)


def ce_twin(cfg: RunConfig) -> RunConfig:
    return make_config({**cfg.to_dict(), "loss": "ce", "method": None, "loss_params": {}})


def alias_target(cfg: RunConfig, grid_runs: dict[str, RunConfig], verify: bool = True) -> RunConfig | None:
    """The grid's CE run that stands for ``cfg`` if ``cfg``'s loss is CE by construction for its counts
    and that CE run has exactly ``cfg``'s configuration otherwise (same fingerprint as its CE twin).

    ``verify``: confirm the loss's claim numerically (torch) before an alias is written; listing a
    grid takes the claim as it stands."""
    if cfg.loss == "ce" or cfg.procedure != "train" or cfg.sampler != "instance":
        return None
    counts = expected_counts(cfg)
    if counts is None:
        return None
    params = {k: v for k, v in cfg.loss_params.items() if k not in LOSSES.info(cfg.loss).epoch_params}
    if not reduces_to_ce(cfg.loss, counts, **params):
        return None
    twin = ce_twin(cfg)
    ce = grid_runs.get(twin.run_path())
    if ce is None or ce.fingerprint() != twin.fingerprint():  # e.g. the CE entry has another lr
        return None
    if verify and not check_ce_equivalence(cfg.loss, counts, cfg.loss_params):
        raise RuntimeError(f"{cfg.loss} claims to equal CE for these counts but the numerical check disagrees")
    return twin


def plan(grid: Grid, dedupe: bool = True, verify: bool = False) -> list[tuple[RunConfig, str, RunConfig | None]]:
    """(run, status, alias target) for every run; status as :func:`run_status`, plus 'locked' / 'partial'."""
    runs = {r.run_path(): r for r in grid.runs}
    out = []
    for r in grid.runs:
        st = run_status(grid.run_dir(r), r.fingerprint())
        target = alias_target(r, runs, verify) if dedupe else None
        if st in (Status.MISSING, Status.FAILED, Status.ALIAS_PENDING) and _locked(grid, r):
            st = Status.RUNNING
        elif st == Status.MISSING and _checkpoints(grid.ckpt_dir(r)):
            st = Status.PARTIAL
        out.append((r, st, target))
    return out


def _checkpoints(ckpt: Path) -> list[tuple[str, Path]]:
    """(part, folder) of every ``last.pt`` a run has: its own, or one per part of a procedure that trains
    several models (``two_expert``: ``head/``, ``tail/``, in training order)."""
    own = [("", ckpt)] if (ckpt / LAST).exists() else []
    parts = sorted((p.stat().st_mtime, p.parent.name, p.parent) for p in ckpt.glob(f"*/{LAST}")) if ckpt.is_dir() else []
    return own + [(name, folder) for _, name, folder in parts]


def has_checkpoint(ckpt: Path) -> bool:
    """Whether a run's checkpoint folder holds a ``last.pt`` to resume from (its own, or a part's)."""
    return bool(_checkpoints(ckpt))


def resume_epoch(ckpt: Path) -> int:
    """The epoch a run's checkpoint folder resumes from (0: no ``last.pt`` there), from its progress file."""
    if not (ckpt / LAST).exists():
        return 0
    try:
        return int(json.loads((ckpt / PROGRESS).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def progress(grid: Grid, cfg: RunConfig) -> str:
    """'epoch 37/200 (launch 2), ~40 min left' from a run's progress file ('expert tail: epoch 3/10' for a run
    that trains several models), '' if it has none; a run the campaign is training, from the campaign's."""
    ckpt, other = grid.ckpt_dir(cfg), grid.campaign_ckpt_dir(cfg)
    if other is not None and _locked_in(other) and not _locked_in(ckpt):
        where = _progress_in(other)
        return "by the campaign" + (f": {where}" if where else "")
    return _progress_in(ckpt)


def _progress_in(ckpt: Path) -> str:
    out = []
    for part, folder in _checkpoints(ckpt) or [("", ckpt)]:
        try:
            p = json.loads((folder / PROGRESS).read_text())
        except (OSError, ValueError):
            continue
        left = (p["epochs"] - p["epoch"]) * p.get("seconds_per_epoch", 0)
        eta = f", ~{left / 60:.0f} min left" if left > 0 else ""
        out.append((f"expert {part}: " if part else "") + f"epoch {p['epoch']}/{p['epochs']}"
                   + (f" (launch {p['launch']})" if p.get("launch", 1) > 1 else "") + eta)
    return "; ".join(out)


def forced_note(grid: Grid, cfg: RunConfig) -> str:
    """What a finished run's folder says about forced re-runs: one in progress or interrupted, or the last
    one that failed after the current result was made ('' if none)."""
    attempt = forced_attempt(grid, cfg)
    if attempt is not None:
        state = "running" if _locked(grid, cfg) else "interrupted (--force resumes it)"
        where = progress(grid, cfg)
        return f"forced re-run {attempt['stamp']} {state}" + (f": {where}" if where else "")
    run_dir = grid.run_dir(cfg)
    failed = failed_attempts(run_dir)
    try:
        current = (run_dir / COMPLETE).stat().st_mtime
    except OSError:
        return ""
    if failed and (run_dir / f"{PROVENANCE}.failed-{failed[0]['stamp']}").stat().st_mtime >= current:
        return f"forced re-run {failed[0]['stamp']} failed, this result kept: {failed[0]['error']}"
    return ""


def _locked(grid: Grid, cfg: RunConfig) -> bool:
    """A runner holds the run (``.lock``) or a process is training it (``.train.lock``, held by the
    training process itself, so it outlives a killed runner), here or in the campaign's checkpoints. Read-only."""
    return _locked_in(grid.ckpt_dir(cfg)) or campaign_training(grid, cfg) is not None


def _locked_in(ckpt: Path) -> bool:
    return is_locked(ckpt / RUNNER_LOCK) or is_locked(ckpt / TRAIN_LOCK)


def campaign_training(grid: Grid, cfg: RunConfig) -> Path | None:
    """Where the campaign (its checkpoints in the per-user cache, not this grid's root) holds or trains this run,
    None if it does not: a skip message can name the folder without deriving it again."""
    other = grid.campaign_ckpt_dir(cfg)
    return other if other is not None and _locked_in(other) else None


def pending_runs(grid: Grid, force: bool = False, dedupe: bool = True) -> tuple[list[RunConfig], dict[str, list[str]]]:
    """What is left to train, after :func:`preflight`, skipping finished runs and writing the CE aliases.

    Returns (runs to execute, summary with 'skipped' and 'aliased' filled); shared
    by the local queue and the submitit path so both skip and alias alike.
    """
    rows = plan(grid, dedupe, verify=True)  # aliases are written from these rows
    # fail fast, before anything is written (aliases included): the runs that would train
    preflight([c for c, st, t in rows if t is None and (force or st not in (Status.DONE, Status.ALIAS, Status.STALE))],
              grid_file=_shown(grid.path))
    todo, summary = [], {k: [] for k in SUMMARY_KEYS}
    for cfg, status, target in rows:
        if status in (Status.DONE, Status.ALIAS) and not force:
            summary["skipped"].append(cfg.run_path())
            continue
        if status == Status.STALE and not force:  # never reused, never overwritten without being asked
            summary["stale"].append(cfg.run_path())
            continue
        if target is not None:
            write_alias(grid.run_dir(cfg), cfg, target.run_path(),
                        f"{cfg.loss} reduces to softmax CE for these training counts (checked numerically)",
                        target.fingerprint())
            summary["aliased"].append(cfg.run_path())
            continue
        todo.append(cfg)
    return todo, summary


def phases(todo: list[RunConfig]) -> list[list[RunConfig]]:
    """Stage-one runs, then the stage-two runs that start from their checkpoints."""
    return [[c for c in todo if not c.stage1], [c for c in todo if c.stage1]]


def forced_attempt(grid: Grid, cfg: RunConfig) -> dict[str, Any] | None:
    """The forced re-run in progress or interrupted for this run (its stamp and start), None if there is none."""
    try:
        return json.loads((grid.ckpt_dir(cfg) / FORCED_OUTPUT / FORCED_ATTEMPT).read_text())
    except (OSError, ValueError):
        return None


def failed_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """Forced re-runs of this run that failed while an earlier result stayed current (newest first)."""
    out = []
    for prov in sorted(run_dir.glob(f"{PROVENANCE}.failed-*"), reverse=True):
        try:
            p = json.loads(prov.read_text())
        except (OSError, ValueError):
            p = {}
        out.append({"stamp": prov.name.split(".failed-", 1)[1], "error": p.get("error"), "end": p.get("end")})
    return out


# A forced re-run of a finished run stages its results here (inside its checkpoint folder) until it is complete.
FORCED_OUTPUT = "forced-output"


FORCED_ATTEMPT = "attempt.json"


class Outcome(StrEnum):
    """What one :func:`execute_run` call did (the keys of :func:`run_grid`'s summary)."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: its checkpoint stays for a resume
    BUSY = "busy"  # another process holds it, is training it, or finished it meanwhile


# run_grid's summary: each outcome, plus what planning settled without running
# (skipped: already done or an alias; aliased: written now; stale: done with another configuration)
SUMMARY_KEYS = (*(str(o) for o in Outcome), "skipped", "aliased", "stale", "no_notebook")


def spend_summary(grid: Grid) -> dict[str, Any]:
    """What the grid's runs have cost so far and what the rest would cost here: device-hours spent by
    outcome (finished, failed, interrupted; every attempt's ``spend.json``), and a projection for the
    runs not done, at the device-hours per training that this grid's finished runs measured (the whole
    training, over every launch that made it: :func:`~ltkit.runs.records.training_seconds`; stage-two runs
    at their own measured mean)."""
    from ..runs.records import attempts, device_hours, launches, training_seconds

    spent: dict[str, float] = {}
    n_attempts = 0
    per_training: list[float] = []
    stage_two: list[float] = []
    left: list[RunConfig] = []
    for cfg in grid.runs:
        run_dir = grid.run_dir(cfg)
        entries = attempts(run_dir)
        n_attempts += sum(launches(e) for e in entries)
        for e in entries:
            key = "done" if e.get("outcome") == "done" else str(e.get("outcome"))
            spent[key] = spent.get(key, 0.0) + device_hours(e)
        st = run_status(run_dir, cfg.fingerprint())
        if st in (Status.DONE, Status.ALIAS):
            done = [e for e in entries if e.get("outcome") == "done"]
            trainings = PROCEDURES.info(cfg.procedure).trainings
            if done and st == Status.DONE:  # the finishing attempt's device share over the whole training's time
                last, took = done[-1], training_seconds(run_dir, entries) or 0.0
                share = device_hours(last) / (float(last["seconds"]) / 3600) if float(last.get("seconds") or 0) else 0.0
                (per_training if trainings else stage_two).append(took / 3600 * share / max(trainings, 1))
        else:
            left.append(cfg)
    rate = sum(per_training) / len(per_training) if per_training else None
    rate2 = sum(stage_two) / len(stage_two) if stage_two else 0.0
    projected = (sum(PROCEDURES.info(c.procedure).trainings * rate + (0 if PROCEDURES.info(c.procedure).trainings
                                                                      else rate2) for c in left)
                 if rate is not None else None)
    return {"spent": spent, "total": sum(spent.values()), "attempts": n_attempts, "left": len(left),
            "per_training": rate, "projected_left": projected}


def spend_line(grid: Grid) -> str:
    """``grid status``'s compute line."""
    s = spend_summary(grid)
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(s["spent"].items()))
    line = f"compute: {s['total']:.2f} device-hours spent over {s['attempts']} attempt(s)" + (f" ({parts})" if parts else "")
    if s["left"]:
        line += (f"; the {s['left']} run(s) left ~{s['projected_left']:.1f} device-hours at {s['per_training']:.2f} per "
                 "training measured here" if s["projected_left"] is not None
                 else f"; {s['left']} run(s) left (no finished run here yet to project from)")
    return line


def _shown(path: Path | None) -> str | None:
    """A grid file as a user would type it here (relative to the working directory where it lies below it)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
