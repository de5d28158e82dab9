"""Grids: a YAML file declares runs; one command lists, runs or reports them.

    name: demo
    results: results/demo            # where run folders go
    base: {protocol: cao2019, dataset: synthetic, model: tiny_cnn, epochs: 8}
    axes: {model: [tiny_cnn]}         # optional cartesian product over config fields
    seeds: [0, 1]
    methods: [ce, bs, {method: focal_g1, loss: focal, loss_params: {gamma: 1}},
              {method: lap, procedure: la_posthoc, stage1: ce}, two_expert]

A method given as a bare name is a loss (``bs``) or a procedure (``two_expert``).

Every run is validated when the grid is loaded, so a typo fails before any
training starts. Each run executes ``notebooks/train.ipynb`` through papermill
into its own results folder. Runs with a valid ``metrics.json`` are skipped;
runs a loss declares identical to CE for their training counts (and that pass
the numerical check) are recorded as aliases of the CE run.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig, make_config
from .data import SOURCES, DataError, load_pool
from .hardware import cpu_plan, thread_env
from .io import LockHeld, atomic_write_bytes, atomic_write_text, is_locked, run_lock, yaml_load
from .layout import (
    COMPLETE,
    EXECUTED_NOTEBOOK,
    FINAL,
    LAST,
    METRICS,
    NOTEBOOK,
    NOTEBOOK_PARAMETERS,
    PARTIAL_NOTEBOOK,
    PROGRESS,
    PROVENANCE,
    REPO,
    RUNNER_LOCK,
    TRAIN_LOCK,
    checkpoints_root,
)
from .losses import LOSSES, check_ce_equivalence, reduces_to_ce
from .models import MODELS, weights_problem
from .notebook import config_parameter_names
from .packed import pack_key, packable
from .procedures import PROCEDURES
from .results import (
    Status,
    load_metrics,
    mark_complete,
    notebook_error,
    read_notebook,
    record_failure,
    run_status,
    write_alias,
)
from .splits import expected_train_counts

GRID_KEYS = {"extends", "name", "description", "results", "base", "axes", "seeds", "methods", "slurm", "runs_per_gpu",
             "pack"}
PACK_AUTO = 32  # runs per pack when ``pack: auto`` finds a GPU (issue #15's largest measured size)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
STOP = threading.Event()  # set on Ctrl-C / SIGTERM: no new run starts, running ones are stopped

_log = logging.getLogger(__name__)


@dataclass
class Grid:
    name: str
    results: Path
    runs: list[RunConfig]
    slurm: dict[str, Any] = field(default_factory=dict)
    runs_per_gpu: int | str = "auto"
    path: Path | None = None
    pack: int | str = "auto"  # auto: up to PACK_AUTO runs per pack on a GPU, none on a CPU; off; or a number >= 2
    checkpoints: Path | None = None  # the checkpoint root (default: layout.checkpoints_root())

    def run_dir(self, cfg: RunConfig) -> Path:
        return self.results / cfg.run_path()

    @property
    def ckpt_root(self) -> Path:
        """``checkpoints/<name>-<8 hex of the results folder>``: the same grid with two ``--results``
        folders keeps two sets of checkpoints."""
        key = hashlib.sha256(str(self.results.resolve()).encode()).hexdigest()[:8]
        return (self.checkpoints or checkpoints_root()) / f"{self.name}-{key}"

    def ckpt_dir(self, cfg: RunConfig) -> Path:
        return self.ckpt_root / cfg.run_path()


def _read_spec(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"grid file {path} does not exist (grids live in configs/)")
    if not path.is_file():
        raise ConfigError(f"grid file {path} is a directory, not a YAML file (grids live in configs/*.yaml)")
    try:
        spec = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"grid file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"grid file {path} is not valid YAML{where}: {what} (plain YAML only: no !!python tags)") \
            from None
    if spec is None:
        raise ConfigError(f"grid file {path} is empty (expected at least 'methods:' and 'base:'; see configs/demo.yaml)")
    return spec


def _resolve_extends(spec: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """``extends: other.yaml`` (beside this file): that grid, with this file's keys on top and
    its ``base`` merged field by field, so a variant states only what differs (e.g. the IF)."""
    if not isinstance(spec, dict) or "extends" not in spec:
        return spec
    parent_path = (path.parent / str(spec["extends"])).resolve()
    if parent_path in seen or parent_path == path.resolve():
        chain = " -> ".join(p.name for p in (*seen, path.resolve(), parent_path))
        raise ConfigError(f"grid file {path}: 'extends' goes round in a circle ({chain})")
    parent = _resolve_extends(_read_spec(parent_path), parent_path, (*seen, path.resolve()))
    if not isinstance(parent, dict):
        raise ConfigError(f"grid file {parent_path} (extended by {path}) is not a mapping")
    child = {k: v for k, v in spec.items() if k != "extends"}
    merged = {**parent, **child}
    if isinstance(parent.get("base"), dict) and isinstance(child.get("base"), dict):
        merged["base"] = {**parent["base"], **child["base"]}
    if "name" not in child:
        merged.pop("name", None)  # a variant is named after its own file, never its parent's
    return merged


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None, results: str | Path | None = None) -> Grid:
    """Read and fully validate a grid file; ``overrides`` apply to every run (e.g. a tiny CI setting)."""
    path = Path(path)
    return grid_from_spec(_resolve_extends(_read_spec(path), path), overrides, results, path)


def grid_from_spec(spec: dict, overrides: dict | None = None, results: str | Path | None = None,
                   path: Path | None = None) -> Grid:
    if not isinstance(spec, dict):
        raise ConfigError(f"a grid must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {', '.join(map(repr, unknown))} (accepted: {', '.join(sorted(GRID_KEYS))})")
    name = spec.get("name") or (path.stem if path else "grid")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"bad value for 'name': {name!r} (accepted: letters, digits, '_', '-', '.', starting with "
                          "a letter or digit, no '..' and no '/': it names the grid's checkpoint folder)")
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"bad value for 'base': {base!r} (accepted: a mapping of config fields)")
    base = dict(base)
    axes = spec.get("axes") or {}
    seeds = spec.get("seeds", [base.get("seed", 42)])
    methods = spec.get("methods", ["ce"])
    if methods == [] or methods is None:
        raise ConfigError("bad value for 'methods': an empty list (accepted: a non-empty list of loss names or "
                          "mappings; leave the key out for plain CE)")
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"bad value for 'axes': {axes!r} (accepted: a mapping of field -> non-empty list)")
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"bad value for 'seeds': {seeds!r} (accepted: a non-empty list of integers >= 0)")
    if not isinstance(methods, list):
        raise ConfigError(f"bad value for 'methods': {methods!r} (accepted: a list of loss names or mappings)")
    runs: list[RunConfig] = []
    keys = list(axes)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds):
        raise ConfigError(f"bad value for 'seeds': {seeds!r} (accepted: a non-empty list of integers >= 0)")
    for seed in seeds:  # seed-major order: a grid cut short still covers every method once
        for combo, m in itertools.product(itertools.product(*(axes[k] for k in keys)), methods):
            mdict = ({"procedure": m} if m in PROCEDURES else {"loss": m}) if isinstance(m, str) else dict(m)
            params = {**base, **dict(zip(keys, combo, strict=True)), **mdict, "seed": seed, **(overrides or {})}
            try:
                runs.append(make_config(params))
            except ConfigError as exc:
                what = mdict.get("method") or mdict.get("procedure") or mdict.get("loss") or mdict.get("label")
                where = f"{path or 'grid'}: method {what!r}, seed {seed}"
                raise ConfigError(f"{where}: {exc}") from None
    labels = {(r.run_path()) for r in runs}
    if len(labels) != len(runs):
        clash = sorted(set(keys) & set(overrides or {}))
        hint = (f"--set {', '.join(clash)} overrides the grid's axis {', '.join(map(repr, clash))}, so its values "
                "collapse into one; drop the axis or the --set" if clash else "give methods distinct 'method' names")
        raise ConfigError(f"{path or 'grid'}: two runs share a results folder; {hint}")
    for r in runs:
        if r.stage1 and r.stage1_path() not in labels:
            raise ConfigError(f"{path or 'grid'}: {r.method!r} starts from stage one {r.stage1!r}, which the grid lacks")
    res = Path(results or spec.get("results") or f"results/{name}")
    if not res.is_absolute():
        res = REPO / res
    return Grid(name, res, runs, dict(spec.get("slurm") or {}), spec.get("runs_per_gpu", "auto"), path,
                check_pack(spec.get("pack", "auto")))


def check_pack(value: Any) -> int | str:
    """The ``pack`` setting: ``auto``, ``off`` or a pack size >= 2 (a YAML ``off`` reads as false)."""
    if value is False:
        value = "off"
    if value in ("auto", "off") or (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 2:
        return int(value)
    raise ConfigError(f"bad value for 'pack': {value!r} (accepted: auto, off, or a number of runs >= 2)")


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
    """Work items: packs of up to ``size`` runs with equal :func:`ltkit.packed.pack_key` that resume
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


# --------------------------------------------------------------------------- fail fast


def preflight(runs: list[RunConfig]) -> None:
    """Check each distinct data source and pretrained backbone once, before any run starts.

    Offline, a thesis grid would otherwise start papermill, a kernel and the data for each of its
    runs before failing on the weights (about an hour for the whole grid); here it stops in seconds
    with one message that says what is missing and how to provide it.
    """

    problems = []
    for key in sorted({(r.dataset, r.data_root, json.dumps(r.source_params, sort_keys=True)) for r in runs}):
        dataset, root, params = key
        try:
            load_pool(dataset, root=root, **json.loads(params))
        except (DataError, OSError, ValueError) as exc:
            problems.append(str(exc).splitlines()[0])
    for model in sorted({r.model for r in runs if r.pretrained}):
        why = weights_problem(model)
        if why:
            problems.append(why)
    if problems:
        raise ConfigError("cannot start the grid: " + " | ".join(problems))


# --------------------------------------------------------------------------- de-duplication


def expected_counts(cfg: RunConfig):
    """Training counts of a run, computed without loading images (None if unknown)."""
    spec = SOURCES.info(cfg.dataset)
    if cfg.dataset == "synthetic":
        k, per = cfg.source_params.get("num_classes", 10), cfg.source_params.get("train_per_class", 250)
    elif spec.num_classes and spec.train_per_class:
        k, per = spec.num_classes, spec.train_per_class
    else:
        return None
    return expected_train_counts(cfg.protocol, [per] * k, cfg.imb_factor, cfg.imb_type)


def ce_twin(cfg: RunConfig) -> RunConfig:
    return make_config({**cfg.to_dict(), "loss": "ce", "method": None, "loss_params": {}})


def alias_target(cfg: RunConfig, grid_runs: dict[str, RunConfig]) -> RunConfig | None:
    """The grid's CE run that stands for ``cfg`` if ``cfg``'s loss is CE by construction for its counts
    and that CE run has exactly ``cfg``'s configuration otherwise (same fingerprint as its CE twin)."""
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
    if not check_ce_equivalence(cfg.loss, counts, cfg.loss_params):
        raise RuntimeError(f"{cfg.loss} claims to equal CE for these counts but the numerical check disagrees")
    return twin


# --------------------------------------------------------------------------- execution


def plan(grid: Grid, dedupe: bool = True) -> list[tuple[RunConfig, str, RunConfig | None]]:
    """(run, status, alias target) for every run; status as :func:`run_status`, plus 'locked' / 'partial'."""
    runs = {r.run_path(): r for r in grid.runs}
    out = []
    for r in grid.runs:
        st = run_status(grid.run_dir(r), r.fingerprint())
        target = alias_target(r, runs) if dedupe else None
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


def progress(grid: Grid, cfg: RunConfig) -> str:
    """'epoch 37/200 (launch 2), ~40 min left' from a run's progress file ('expert tail: epoch 3/10' for a run
    that trains several models), '' if it has none."""
    out = []
    for part, folder in _checkpoints(grid.ckpt_dir(cfg)) or [("", grid.ckpt_dir(cfg))]:
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


def _resume_epoch(grid: Grid, cfg: RunConfig) -> int:
    """The epoch a run's checkpoint resumes from (0: none), from its progress file."""
    try:
        return int(json.loads((grid.ckpt_dir(cfg) / PROGRESS).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _locked(grid: Grid, cfg: RunConfig) -> bool:
    """A runner holds the run (``.lock``) or a process is training it (``.train.lock``, held by the
    training process itself, so it outlives a killed runner). Read-only."""
    return is_locked(grid.ckpt_dir(cfg) / RUNNER_LOCK) or is_locked(grid.ckpt_dir(cfg) / TRAIN_LOCK)


def papermill_command(grid: Grid, cfg: RunConfig, out_nb: Path, params_file: Path) -> list[str]:
    return [sys.executable, "-m", "papermill", str(NOTEBOOK), str(out_nb), "-k", os.environ.get("LTKIT_KERNEL", "python3"),
            "-f", str(params_file), "--cwd", str(REPO / "notebooks"), "--no-progress-bar"]


def notebook_parameters(grid: Grid, cfg: RunConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """The notebook's own parameters (read from its parameters cell) plus every other config field in ``extra``;
    ``output_dir``: where the run writes its results (default its results folder; a forced re-run stages them)."""
    d = cfg.to_dict()
    params = {k: d.pop(k) for k in config_parameter_names()}
    return {**params, "extra": d, "output_dir": str(output_dir or grid.run_dir(cfg)),
            "checkpoint_dir": str(grid.ckpt_dir(cfg)), "smoke": False, "show_progress": True}


KERNEL_START_ERRORS = ("Kernel died before replying to kernel_info", "Kernel didn't respond", "NoSuchKernel")
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the thread that started it dies (even by kill -9), so an
    orphaned notebook never trains on; its kernel follows papermill (ipykernel's parent poller)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _papermill(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run papermill as a child this process can stop (Ctrl-C / SIGTERM on the runner stops it too)."""
    pdeath = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pdeath)  # noqa: PLW1509
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop_running(grace: float = 20.0) -> None:
    """Stop every papermill child (SIGINT, then SIGKILL after ``grace`` seconds); checkpoints stay for a resume."""
    STOP.set()
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


TRAIN_LOCK_WAIT = 90.0  # s: a stopped runner's notebook (a requeued job's predecessor) takes a moment to exit


def _wait_for_training(lock: Path, seconds: float) -> bool:
    """True if a process still trains the run after waiting up to ``seconds`` for it to stop."""
    deadline = time.time() + seconds
    while is_locked(lock):
        if time.time() > deadline or STOP.is_set():
            return True
        time.sleep(0.5)
    return False


def _no_cell_ran(nb_path: Path) -> bool:
    nb = read_notebook(nb_path)
    if nb is None:
        return True
    return not any(c.get("execution_count") for c in nb.get("cells", []) if c.get("cell_type") == "code")


def _stage1_problem(grid: Grid, cfg: RunConfig) -> str | None:
    """Why a stage-two run cannot start from its stage one's checkpoint (None: it can)."""
    if not cfg.stage1:
        return None
    s1 = next((r for r in grid.runs if r.run_path() == cfg.stage1_path()), None)
    if s1 is None:
        return None
    from .checkpoint import CheckpointError, read_final

    path = grid.ckpt_dir(s1) / FINAL
    try:
        ck = read_final(path, cfg.stage1)
    except CheckpointError as exc:
        return str(exc)
    if ck.get("fingerprint") != s1.fingerprint():
        return (f"stage-one checkpoint {path} is from another configuration (fingerprint {ck.get('fingerprint')} != "
                f"{s1.fingerprint()}); re-run {cfg.stage1!r} with --force")
    return None


class Outcome(StrEnum):
    """What one :func:`execute_run` call did (the keys of :func:`run_grid`'s summary)."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: its checkpoint stays for a resume
    BUSY = "busy"  # another process holds it, is training it, or finished it meanwhile


# run_grid's summary: each outcome, plus what planning settled without running
# (skipped: already done or an alias; aliased: written now; stale: done with another configuration)
SUMMARY_KEYS = (*(str(o) for o in Outcome), "skipped", "aliased", "stale", "no_notebook")


def execute_run(grid: Grid, cfg: RunConfig, env: dict[str, str] | None = None, force: bool = False) -> str:
    """Execute one run's notebook with papermill; returns 'done', 'failed', 'skipped' or 'interrupted'.

    'skipped': another process holds the run's lock or is training it, or finished it between
    this process's plan and now (checked again under the lock, so two ``ltkit grid run`` on one
    results folder never train a run twice). The notebook is executed into the checkpoint folder
    and moved into the run folder whole; ``complete.json`` is written last, so a run killed at any
    moment is never taken for done. A kernel that dies before running a cell (papermill issue
    #511) is retried once. A disk error fails the run, not the grid.
    """
    run_dir, ckpt = grid.run_dir(cfg), grid.ckpt_dir(cfg)
    if STOP.is_set():
        return Outcome.INTERRUPTED
    start = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.time()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(ckpt / RUNNER_LOCK):
            if _wait_for_training(ckpt / TRAIN_LOCK, TRAIN_LOCK_WAIT):
                _log.info(f"skip {cfg.run_path()}: another process is still training it (pid in {ckpt / TRAIN_LOCK})")
                return Outcome.BUSY
            if not force and run_status(run_dir, cfg.fingerprint()) == Status.DONE:
                _log.info(f"skip {cfg.run_path()}: finished by another process meanwhile")
                return Outcome.BUSY
            if force and run_status(run_dir) == Status.DONE:  # a finished result (current or stale) stays current
                return _forced_rerun(grid, cfg, env, start, t0)
            if force:
                _set_aside(run_dir, ckpt)
            problem = _stage1_problem(grid, cfg)
            if problem:
                record_failure(run_dir, cfg, start, time.time() - t0, problem)
                _log.error(f"FAILED {cfg.run_path()}: {problem}")
                return Outcome.FAILED
            proc = _execute_notebook(grid, cfg, env)
            if proc is None:
                _log.warning(f"interrupted {cfg.run_path()}: its checkpoint stays; re-run the grid to resume")
                return Outcome.INTERRUPTED
            if proc.returncode == 0 and load_metrics(run_dir) is not None:
                mark_complete(run_dir, cfg.fingerprint())
                return Outcome.DONE
            err = notebook_error(run_dir / EXECUTED_NOTEBOOK) or (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            _record_failure_once(run_dir, cfg, start, time.time() - t0, err)
            _log.error(f"FAILED {cfg.run_path()}: {err}")
            return Outcome.FAILED
    except LockHeld as exc:
        _log.info(f"skip {cfg.run_path()}: {exc}")
        return Outcome.BUSY
    except OSError as exc:  # disk full, permissions: this run fails, the grid goes on
        err = f"{type(exc).__name__}: {exc}"
        try:
            if run_status(run_dir) != Status.DONE:  # a finished result's provenance is never overwritten
                record_failure(run_dir, cfg, start, time.time() - t0, err)
        except OSError:
            pass
        _log.error(f"FAILED {cfg.run_path()}: {err}")
        return Outcome.FAILED


def _execute_notebook(grid: Grid, cfg: RunConfig, env: dict[str, str] | None,
                      output_dir: Path | None = None) -> subprocess.CompletedProcess | None:
    """Write the run's parameters, execute its notebook with papermill into the checkpoint folder (once more
    if the kernel died before its first cell, papermill issue #511) and move the executed notebook, whole,
    into the run folder (or ``output_dir``), also on failure (it keeps the traceback). None: the grid was
    stopped meanwhile."""
    ckpt = grid.ckpt_dir(cfg)
    params_file, partial = ckpt / NOTEBOOK_PARAMETERS, ckpt / PARTIAL_NOTEBOOK
    atomic_write_text(params_file, yaml.safe_dump(notebook_parameters(grid, cfg, output_dir)))
    cmd = papermill_command(grid, cfg, partial, params_file)
    full_env = {**os.environ, **(env or {}), "LTKIT_COMMAND": " ".join(cmd), "PYTHONUNBUFFERED": "1"}
    for attempt in (1, 2):
        proc = _papermill(cmd, full_env)
        if STOP.is_set():
            return None
        died_at_start = any(e in proc.stderr for e in KERNEL_START_ERRORS) and _no_cell_ran(partial)
        if proc.returncode == 0 or not died_at_start or attempt == 2:
            break
        _log.warning(f"retry {cfg.run_path()}: the kernel died before running a cell")
        time.sleep(1.0)
    if partial.exists():
        atomic_write_bytes((output_dir or grid.run_dir(cfg)) / EXECUTED_NOTEBOOK, partial.read_bytes())
        partial.unlink()
    return proc


def _record_failure_once(run_dir: Path, cfg: RunConfig, start: str, seconds: float, err: str) -> None:
    """Record a failure unless the run's own process already did (its provenance keeps the real error)."""
    prov = run_dir / PROVENANCE
    if not prov.exists() or json.loads(prov.read_text()).get("status") != Status.FAILED:
        record_failure(run_dir, cfg, start, seconds, err)


def execute_pack(grid: Grid, cfgs: list[RunConfig], env: dict[str, str] | None = None,
                 force: bool = False) -> list[tuple[RunConfig, str]]:
    """Train stage-one runs as one packed model (``python -m ltkit.packrun``); an outcome per run.

    Each run is locked and checked as :func:`execute_run` checks it (a run another process holds,
    or finished meanwhile, leaves the pack as BUSY); each finished run's folder gets the same files
    as a single run's (its provenance names the pack) and ``complete.json`` last.
    """
    if STOP.is_set():
        return [(c, Outcome.INTERRUPTED) for c in cfgs]
    out: list[tuple[RunConfig, str]] = []
    start, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time()
    with contextlib.ExitStack() as locks:
        members = []
        for cfg in cfgs:
            run_dir, ckpt = grid.run_dir(cfg), grid.ckpt_dir(cfg)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                locks.enter_context(run_lock(ckpt / RUNNER_LOCK))
            except LockHeld as exc:
                _log.info(f"skip {cfg.run_path()}: {exc}")
                out.append((cfg, Outcome.BUSY))
                continue
            if is_locked(ckpt / TRAIN_LOCK) or (not force and run_status(run_dir, cfg.fingerprint()) == Status.DONE):
                _log.info(f"skip {cfg.run_path()}: another process is training it or finished it meanwhile")
                out.append((cfg, Outcome.BUSY))
                continue
            if force:
                _set_aside(run_dir, ckpt)
            members.append(cfg)
        if len(members) == 1:  # the others left: train it the usual way (its notebook included)
            locks.close()
            out.append((members[0], execute_run(grid, members[0], env, force=False)))
            return out
        if not members:
            return out
        spec = {"runs": [c.to_dict() for c in members], "checkpoint_dirs": [str(grid.ckpt_dir(c)) for c in members],
                "output_dirs": [str(grid.run_dir(c)) for c in members], "progress": False}
        key = hashlib.sha256("".join(c.run_path() for c in members).encode()).hexdigest()[:12]
        params = grid.ckpt_root / "packs" / f"{key}.yaml"
        atomic_write_text(params, yaml.safe_dump(spec))
        cmd = [sys.executable, "-m", "ltkit.packrun", str(params)]
        _log.info(f"pack of {len(members)}: {', '.join(c.run_path() for c in members)}")
        proc = _papermill(cmd, {**os.environ, **(env or {}), "LTKIT_COMMAND": " ".join(cmd), "PYTHONUNBUFFERED": "1"})
        for cfg in members:
            run_dir = grid.run_dir(cfg)
            if STOP.is_set() and load_metrics(run_dir) is None:
                out.append((cfg, Outcome.INTERRUPTED))
            elif load_metrics(run_dir) is not None:
                mark_complete(run_dir, cfg.fingerprint())
                out.append((cfg, Outcome.DONE))
            else:
                err = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
                _record_failure_once(run_dir, cfg, start, time.time() - t0, err)
                _log.error(f"FAILED {cfg.run_path()} (in a pack)")
                out.append((cfg, Outcome.FAILED))
    return out


def lacks_notebook(grid: Grid, cfg: RunConfig) -> bool:
    """A finished run without its executed notebook: one a packed model trained (``ltkit.packrun`` writes
    the result files, not a notebook)."""
    run_dir = grid.run_dir(cfg)
    return run_status(run_dir, cfg.fingerprint()) == Status.DONE and not (run_dir / EXECUTED_NOTEBOOK).exists()


def record_notebook(grid: Grid, cfg: RunConfig, env: dict[str, str] | None = None) -> str:
    """Execute a packed run's notebook into its results folder: the same notebook and parameters as a
    single run, which finds the run recorded (:func:`ltkit.notebook.packed_record`) and shows that
    record (data, learning curves, metrics, per-class accuracy) without training or writing results.
    Returns 'done', 'failed', 'interrupted' or 'busy'."""
    run_dir = grid.run_dir(cfg)
    if STOP.is_set():
        return Outcome.INTERRUPTED
    try:
        with run_lock(grid.ckpt_dir(cfg) / RUNNER_LOCK):
            proc = _execute_notebook(grid, cfg, env)
            if proc is None:
                return Outcome.INTERRUPTED
            if proc.returncode == 0:
                return Outcome.DONE
            failed = run_dir / EXECUTED_NOTEBOOK
            if failed.exists():  # kept for its traceback, under a name that lets `ltkit grid record` try again
                os.replace(failed, failed.with_name("train.record-failed.ipynb"))
            err = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            _log.error(f"no notebook for {cfg.run_path()}: {err} (its results stand; `ltkit grid record` tries again)")
            return Outcome.FAILED
    except LockHeld as exc:
        _log.info(f"skip {cfg.run_path()}: {exc}")
        return Outcome.BUSY


def record_notebooks(grid: Grid, jobs: int | None = None, stagger: float = 1.0) -> dict[str, list[str]]:
    """Execute the notebooks that packed runs lack (``ltkit grid record``; ``run_grid`` calls it at the
    end unless told not to). CPU work: on a GPU lent by the minute, leave it to a CPU machine."""
    from tqdm.auto import tqdm

    todo = [c for c in grid.runs if lacks_notebook(grid, c)]
    out: dict[str, list[str]] = {str(o): [] for o in Outcome}
    if not todo:
        return out
    _log.info(f"{grid.name}: executing the notebooks of {len(todo)} packed run(s)")
    with ThreadPoolExecutor(max_workers=max(1, jobs or 1)) as pool, \
            tqdm(total=len(todo), desc=f"{grid.name} notebooks", unit="run") as bar:
        futures = []
        for i, cfg in enumerate(todo):
            futures.append((cfg, pool.submit(record_notebook, grid, cfg)))
            if i < (jobs or 1):
                time.sleep(stagger)  # kernels started at the same instant can collide on ZMQ ports
        for cfg, fut in futures:
            out[str(fut.result())].append(cfg.run_path())
            bar.update()
    return out


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{time.time_ns() % 1_000_000:06d}"


def _set_aside(run_dir: Path, ckpt: Path) -> None:
    """--force on a run with no finished result: train afresh. The old metrics and checkpoints are renamed
    ``*.replaced-<UTC time>`` (each generation kept), not deleted, and a preempted forced run then resumes
    from its *new* checkpoint."""
    stamp = _stamp()
    for f in (run_dir / COMPLETE, run_dir / METRICS, ckpt / LAST, ckpt / FINAL):
        if f.exists():
            os.replace(f, f.with_name(f"{f.name}.replaced-{stamp}"))


# A forced re-run of a finished run stages its results here (inside its checkpoint folder) until it is complete.
FORCED_OUTPUT = "forced-output"
FORCED_ATTEMPT = "attempt.json"
RESULT_FILES = (EXECUTED_NOTEBOOK, "per_class.csv", "history.csv", "predictions.npz", PROVENANCE, METRICS)


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


def _forced_rerun(grid: Grid, cfg: RunConfig, env: dict[str, str] | None, start: str, t0: float) -> str:
    """``--force`` on a run that has a finished result: nothing is lost whatever happens.

    The finished result stays the current one while the new run trains; its results are staged in
    ``<checkpoint>/forced-output`` and its checkpoints start afresh (the old ``last.pt`` / ``final.pt``
    set aside as ``*.replaced-<stamp>``). Complete in full, it becomes current and the old result a
    ``*.replaced-<stamp>`` generation beside it. Failed (divergence, a full disk, ...), it is recorded
    beside the result as ``provenance.json.failed-<stamp>`` / ``train.ipynb.failed-<stamp>``, its
    partial files set aside as ``*.failed-<stamp>``, and the old checkpoints come back. Interrupted,
    it stays staged: the next ``--force`` resumes it.
    """
    run_dir, ckpt = grid.run_dir(cfg), grid.ckpt_dir(cfg)
    stage = ckpt / FORCED_OUTPUT
    attempt = forced_attempt(grid, cfg)
    if attempt is None or attempt.get("fingerprint") != cfg.fingerprint():
        if stage.exists():  # an interrupted attempt of another configuration: kept aside, not resumed
            os.replace(stage, stage.with_name(f"{FORCED_OUTPUT}.replaced-{_stamp()}"))
        attempt = {"stamp": _stamp(), "start": start, "fingerprint": cfg.fingerprint()}
        for f in (ckpt / LAST, ckpt / FINAL):
            if f.exists():
                os.replace(f, f.with_name(f"{f.name}.replaced-{attempt['stamp']}"))
    stamp = attempt["stamp"]
    problem = _stage1_problem(grid, cfg)
    err = problem
    if not problem:
        try:
            atomic_write_text(stage / FORCED_ATTEMPT, json.dumps(attempt))
            proc = _execute_notebook(grid, cfg, env, output_dir=stage)
        except OSError as exc:  # disk full, permissions
            proc, err = None, f"{type(exc).__name__}: {exc}"
        else:
            if proc is None:
                _log.warning(f"interrupted the forced re-run of {cfg.run_path()}: the finished result stays current; "
                             "--force again resumes it")
                return Outcome.INTERRUPTED
            if proc.returncode == 0 and load_metrics(stage) is not None:
                try:
                    _promote(run_dir, stage, stamp, cfg)
                    return Outcome.DONE
                except OSError as exc:
                    err = f"{type(exc).__name__}: {exc} (while moving the new result into place)"
            else:
                err = notebook_error(stage / EXECUTED_NOTEBOOK) or (proc.stderr.strip().splitlines()
                                                                     or ["unknown error"])[-1]
    _keep_failed_attempt(run_dir, ckpt, stage, stamp, cfg, attempt["start"], time.time() - t0, err)
    _log.error(f"FAILED forced re-run of {cfg.run_path()}: {err} (the finished result stays current; the attempt is "
               f"kept as *.failed-{stamp})")
    return Outcome.FAILED


def _promote(run_dir: Path, stage: Path, stamp: str, cfg: RunConfig) -> None:
    """The staged result becomes current, the old one a ``*.replaced-<stamp>`` generation. Its only write
    (``complete.json``, into the stage) comes first, then renames only (no disk space needed); the old
    ``complete.json`` goes first and the new one comes last, so a kill in between is never taken for done."""
    mark_complete(stage, cfg.fingerprint())
    for name in (COMPLETE, *RESULT_FILES):
        f = run_dir / name
        if f.exists():
            os.replace(f, f.with_name(f"{name}.replaced-{stamp}"))
    for name in (*RESULT_FILES, COMPLETE):  # metrics.json, then complete.json last
        if (stage / name).exists():
            os.replace(stage / name, run_dir / name)
    shutil.rmtree(stage, ignore_errors=True)


def _keep_failed_attempt(run_dir: Path, ckpt: Path, stage: Path, stamp: str, cfg: RunConfig, start: str, wall: float,
                         err: str) -> None:
    """Record a failed forced re-run beside the result that stays current, and put the old checkpoints back."""
    try:
        prov = stage / PROVENANCE
        if not prov.exists() or json.loads(prov.read_text()).get("status") != Status.FAILED:
            record_failure(stage, cfg, start, wall, err)
        for name in (PROVENANCE, EXECUTED_NOTEBOOK):
            if (stage / name).exists():
                atomic_write_bytes(run_dir / f"{name}.failed-{stamp}", (stage / name).read_bytes())
    except OSError as exc:  # the disk is still full: the log line is the record
        _log.error(f"could not record the failed attempt of {cfg.run_path()} beside its result: {exc}")
    for f in (ckpt / LAST, ckpt / FINAL, stage):  # the attempt's partial files, set aside
        if f.exists():
            os.replace(f, f.with_name(f"{f.name}.failed-{stamp}"))
    for name in (LAST, FINAL):  # the finished run's checkpoints are current again
        old = ckpt / f"{name}.replaced-{stamp}"
        if old.exists():
            os.replace(old, ckpt / name)


MEASURED_PEAKS = REPO / "benchmarks" / "results" / "throughput_eager.json"
DEFAULT_RUN_GIB = 6.0  # a model no benchmark has measured yet


def run_memory_gib(models: list[str]) -> float:
    """GPU memory to reserve for one run of the hungriest of ``models``: its peak measured by
    ``make bench`` (``benchmarks/results/throughput_eager.json``, batch 128, e.g. ConvNeXt-Base 17 GiB
    on an H100), x 1.25 plus 1 GiB for the CUDA context; small CIFAR models 2 GiB."""
    try:
        peaks = {k: v.get("peak_gpu_mem_gib") for k, v in json.loads(MEASURED_PEAKS.read_text())["models"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        peaks = {}

    need = []
    for m in models or [None]:
        if m in peaks and peaks[m]:
            need.append(1.25 * peaks[m] + 1.0)
        elif m is not None and MODELS.info(m).family == "cifar":
            need.append(2.0)
        else:
            need.append(DEFAULT_RUN_GIB)
    return max(need)


def gpu_slots(runs_per_gpu: int | str = "auto", jobs: int | None = None, models: list[str] | None = None) -> list[str | None]:
    """One entry per concurrent run: a CUDA_VISIBLE_DEVICES value, or None on a CPU box.

    ``auto`` packs as many runs per GPU as its free memory holds for the grid's hungriest model.
    """
    if jobs is not None and jobs < 1:
        raise ConfigError(f"bad value for 'jobs': {jobs} (accepted: an integer >= 1)")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        n = 0
    if n == 0:
        return [None] * (jobs or 1)
    per = runs_per_gpu
    if per == "auto":
        import torch

        free, _ = torch.cuda.mem_get_info(0)
        per = max(1, min(8, int(free / 2**30 / run_memory_gib(models or []))))
    slots = [str(i) for i in range(n) for _ in range(int(per))]
    return slots[:jobs] if jobs else slots


def pending_runs(grid: Grid, force: bool = False, dedupe: bool = True) -> tuple[list[RunConfig], dict[str, list[str]]]:
    """What is left to train, after :func:`preflight`, skipping finished runs and writing the CE aliases.

    Returns (runs to execute, summary with 'skipped' and 'aliased' filled); shared
    by the local queue and the submitit path so both skip and alias alike.
    """
    rows = plan(grid, dedupe)
    # fail fast, before anything is written (aliases included): the runs that would train
    preflight([c for c, st, t in rows if t is None and (force or st not in (Status.DONE, Status.ALIAS, Status.STALE))])
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


def cpu_slots(jobs: int | None, threads: int | None) -> tuple[list[None], dict[str, str]]:
    """On a CPU: one slot per concurrent run and the environment that gives each run its threads
    (:func:`ltkit.hardware.cpu_plan`: never more runs x threads than cores)."""
    try:
        n_jobs, n_threads = cpu_plan(jobs, threads)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return [None] * n_jobs, thread_env(n_threads)


def run_grid(grid: Grid, force: bool = False, dedupe: bool = True, jobs: int | None = None,
             stagger: float = 1.0, notebooks: bool = True, threads: int | None = None) -> dict[str, list[str]]:
    """Run what is missing: stage-one runs first, then stage-two; one run per slot at a time.
    Then, unless ``notebooks`` is False, execute the notebooks of the runs that were packed
    (:func:`record_notebooks`); ``summary['no_notebook']`` lists those left without one.

    On a CPU, ``jobs`` runs at a time with ``threads`` threads each (default: the split ``make bench``
    measured best here, :func:`cpu_slots`)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"bad value for 'threads': {threads} (accepted: an integer >= 1)")
    slots = gpu_slots(grid.runs_per_gpu, jobs, sorted({c.model for c in grid.runs}))
    cpu_env: dict[str, str] = {}
    if all(s is None for s in slots):
        slots, cpu_env = cpu_slots(jobs, threads)
    todo, summary = pending_runs(grid, force, dedupe)
    _log.info(f"{grid.name}: {len(todo)} to run on {len(slots)} slot(s)"
              + (f" x {cpu_env['OMP_NUM_THREADS']} thread(s)" if cpu_env else "")
              + f"; {len(summary['skipped'])} already done, {len(summary['aliased'])} aliased to CE")
    lock = threading.Lock()
    free = list(slots)

    def worker(item: list[RunConfig]) -> list[tuple[RunConfig, str]]:
        with lock:
            slot = free.pop()
        try:
            env = {"CUDA_VISIBLE_DEVICES": slot} if slot is not None else dict(cpu_env)
            if len(item) > 1:
                return execute_pack(grid, item, env, force=force)
            return [(item[0], execute_run(grid, item[0], env, force=force))]
        finally:
            with lock:
                free.append(slot)

    from tqdm.auto import tqdm

    recorded: set[str] = set()

    def record(cfg: RunConfig, st: str) -> None:
        summary[str(st)].append(cfg.run_path())
        recorded.add(cfg.run_path())

    STOP.clear()
    size = pack_size(grid.pack)
    for phase in phases(todo):
        items = pack_runs(phase, size, lambda c: _resume_epoch(grid, c),
                          alone=lambda c: force and run_status(grid.run_dir(c)) == Status.DONE)
        with ThreadPoolExecutor(max_workers=len(slots)) as pool, tqdm(total=len(phase), desc=grid.name, unit="run") as bar:
            futures = []
            try:
                for item in items:
                    futures.append(pool.submit(worker, item))
                    if len(futures) <= len(slots):
                        time.sleep(stagger)  # kernels started at the same instant can collide on ZMQ ports
                for fut in futures:
                    for cfg, st in fut.result():
                        record(cfg, st)
                        bar.update()
            except KeyboardInterrupt:  # Ctrl-C (or SIGTERM, see the CLI): stop now, keep what finished
                _log.warning("interrupted: stopping the running notebooks; finished runs are kept, re-run to resume")
                pool.shutdown(wait=False, cancel_futures=True)
                stop_running()
                for fut in futures:  # what ended meanwhile keeps its outcome
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        for cfg, st in fut.result():
                            if cfg.run_path() not in recorded:
                                record(cfg, st)
                for cfg in todo:  # this phase's unfinished runs and every later phase's
                    if cfg.run_path() not in recorded:
                        record(cfg, Outcome.INTERRUPTED)
                return summary
        if STOP.is_set():
            break
    if notebooks and not STOP.is_set():
        rec = record_notebooks(grid, jobs=len(slots), stagger=stagger)
        summary["no_notebook"] = rec[Outcome.FAILED] + rec[Outcome.INTERRUPTED] + rec[Outcome.BUSY]
    return summary
