"""Executing one run (or one pack) of a grid: locks, papermill, the results folder, and ``--force``.

Each run executes ``notebooks/train.ipynb`` through papermill into its checkpoint folder and the
executed notebook moves into its results folder whole; ``complete.json`` is written last, so a run
killed at any moment is never taken for done. Two runners never train one run (a lock per run, and
the training process's own lock). ``--force`` on a finished run keeps that result current until the
new one has completed in full (:func:`_forced_rerun`). The runs that a packed model trained get
their notebook afterwards (:func:`record_notebooks`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from ..config.fields import RunConfig
from ..config.parameters import config_parameter_names
from ..core.hardware import cores, cpu_model, gpu_model
from ..core.io import LockHeld, aside_stamp, atomic_write_bytes, atomic_write_text, is_locked, run_lock
from ..core.layout import (
    COMPLETE,
    EXECUTED_NOTEBOOK,
    FINAL,
    LAST,
    METRICS,
    NOTEBOOK,
    NOTEBOOK_PARAMETERS,
    PARTIAL_NOTEBOOK,
    PROVENANCE,
    REPO,
    RUNNER_LOCK,
    TRAIN_LOCK,
    checkpoints_root,
)
from ..runs.portable import notebook_json, portable_notebook, recorded_notebook, relative_path
from ..runs.provenance import git_commit
from ..runs.records import attempts, record_failure, record_spend
from ..runs.status import Status, load_metrics, mark_complete, notebook_error, read_notebook, run_status
from .plan import (
    FORCED_ATTEMPT,
    FORCED_OUTPUT,
    Outcome,
    campaign_training,
    forced_attempt,
    has_checkpoint,
    resume_epoch,
)
from .processes import KERNEL_START_ERRORS, STOP, _papermill
from .spec import Grid

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- fail fast


# --------------------------------------------------------------------------- de-duplication


# --------------------------------------------------------------------------- execution


def papermill_command(grid: Grid, cfg: RunConfig, out_nb: Path, params_file: Path) -> list[str]:
    return [sys.executable, "-m", "papermill", str(NOTEBOOK), str(out_nb), "-k", os.environ.get("LTKIT_KERNEL", "python3"),
            "-f", str(params_file), "--cwd", str(REPO / "notebooks"), "--no-progress-bar"]


def notebook_parameters(grid: Grid, cfg: RunConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """The notebook's own parameters (read from its parameters cell) plus every other config field in ``extra``;
    ``output_dir``: where the run writes its results (default its results folder; a forced re-run stages them)."""
    d = cfg.to_dict()
    params = {k: d.pop(k) for k in config_parameter_names()}
    if params.get("data_root"):
        params["data_root"] = relative_path(params["data_root"])
    # relative to the checkout where they lie in it (the notebook resolves them against the checkout that executes it)
    return {**params, "extra": d, "output_dir": relative_path(output_dir or grid.run_dir(cfg)),
            "checkpoint_dir": relative_path(grid.ckpt_dir(cfg)), "smoke": False, "show_progress": True}


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
    from ..training.checkpoint import CheckpointError, read_final

    path = grid.ckpt_dir(s1) / FINAL
    try:
        ck = read_final(path, cfg.stage1)
    except CheckpointError as exc:
        return str(exc) + _campaigns_copy(grid, s1, path)
    if ck.get("fingerprint") != s1.fingerprint():
        return (f"stage-one checkpoint {path} is from another configuration (fingerprint {ck.get('fingerprint')} != "
                f"{s1.fingerprint()}); re-run {cfg.stage1!r} with --force")
    return None


def _campaigns_copy(grid: Grid, s1: RunConfig, path: Path) -> str:
    """Where a plain ``grid run`` misses a stage one that the campaign trained: its ``final.pt`` is in the
    campaign's per-user cache, not in this grid's checkpoint root; say where, and how to start from it,
    rather than only "run it first" (hours of training for a run that is done)."""
    other = grid.campaign_ckpt_dir(s1)
    if path.exists() or other is None or not (other / FINAL).exists():
        return ""
    return (f"; the campaign's checkpoint of that run is {other / FINAL}: start the stage two from it with "
            f"LTKIT_CHECKPOINTS={grid.campaign_ckpt_root()} (or queue it in the campaign)")


def execute_run(grid: Grid, cfg: RunConfig, env: dict[str, str] | None = None, force: bool = False) -> str:
    """Execute one run (:func:`_execute_run`) and record what the attempt spent in its ``spend.json``
    (finished, failed or interrupted alike: the compute appendix and ``grid status`` add them up)."""
    start, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time()
    ckpt = grid.ckpt_dir(cfg)
    from_epoch = resume_epoch(ckpt)
    lost = None if force else lost_checkpoint(grid, cfg)
    if lost:
        _log.warning(lost)
    outcome = _execute_run(grid, cfg, env, force)
    seconds = time.time() - t0
    if outcome in (Outcome.DONE, Outcome.FAILED) or (outcome == Outcome.INTERRUPTED and seconds > 1.0):
        epochs = {"from_epoch": from_epoch, **({"to_epoch": resume_epoch(ckpt)} if outcome == Outcome.INTERRUPTED
                                               else {})}
        record_spend(grid.run_dir(cfg), {**attempt(str(outcome), start, seconds, env, forced=force), **epochs})
    return outcome


def lost_checkpoint(grid: Grid, cfg: RunConfig) -> str | None:
    """What to say when a run that earlier attempts trained starts from epoch 0 (None: it does not): their
    checkpoints are not where this grid looks (another machine's disk, a removed cache, another
    ``LTKIT_CHECKPOINTS``), so their epochs are trained again; ``spend.json`` keeps what they cost."""
    if has_checkpoint(grid.ckpt_dir(cfg)) or run_status(grid.run_dir(cfg)) == Status.DONE:
        return None
    earlier = [a for a in attempts(grid.run_dir(cfg)) if a.get("outcome") == Outcome.INTERRUPTED]
    if not earlier:
        return None
    reached = max((a["to_epoch"] for a in earlier if isinstance(a.get("to_epoch"), int)), default=None)
    hours = sum(float(a.get("seconds") or 0) for a in earlier) / 3600
    return (f"{cfg.run_path()} starts from epoch 0: its {len(earlier)} earlier interrupted attempt(s) "
            f"({hours:.1f} h{f', the furthest at epoch {reached}' if reached else ''}) left no checkpoint in "
            f"{grid.ckpt_dir(cfg)} (made on another machine, or its cache was removed): their epochs are trained again")


def attempt(outcome: str, start: str, seconds: float, env: dict[str, str] | None, forced: bool = False,
            shared_by: int = 1) -> dict[str, Any]:
    """One attempt's spend entry: where it ran (the threads or GPU the runner gave it), for how long, and from
    which commit (a run resumed across launches may span several: provenance records only the last)."""
    env = env or {}
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    threads = env.get("OMP_NUM_THREADS")
    return {"outcome": outcome, "forced": forced, "start": start, "end": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds / shared_by, 2), "shared_by": shared_by,
            "device": (gpu_model(gpu) or f"cuda:{gpu}") if gpu else cpu_model(), "gpus": 1 if gpu else 0,
            "threads": int(threads) if threads and threads.isdigit() else None, "cores": cores(),
            **{k: v for k, v in git_commit(REPO).items() if k in ("commit", "dirty")}}


def _execute_run(grid: Grid, cfg: RunConfig, env: dict[str, str] | None = None, force: bool = False) -> str:
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
            if theirs := campaign_training(grid, cfg):
                _log.info(f"skip {cfg.run_path()}: the campaign is training it (its checkpoints in {theirs}); "
                          "`ltkit campaign status` shows it")
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
        _keep_notebook(partial, (output_dir or grid.run_dir(cfg)) / EXECUTED_NOTEBOOK, grid.run_dir(cfg))
        partial.unlink()
    return proc


def _keep_notebook(partial: Path, dest: Path, run_dir: Path) -> None:
    """The executed notebook into the results folder, portable (:mod:`ltkit.runs.portable`: no folder of this
    machine in it) and headed by the line that says it is a recorded run and how to reproduce it."""
    try:
        nb = json.loads(partial.read_text(encoding="utf-8"))
        nb = recorded_notebook(portable_notebook(nb, ckpt_root=checkpoints_root()), relative_path(run_dir))
        atomic_write_text(dest, notebook_json(nb))
    except (ValueError, KeyError, TypeError):  # not a notebook papermill finished writing: kept as it is
        atomic_write_bytes(dest, partial.read_bytes())


def _record_failure_once(run_dir: Path, cfg: RunConfig, start: str, seconds: float, err: str) -> None:
    """Record a failure unless the run's own process already did (its provenance keeps the real error)."""
    prov = run_dir / PROVENANCE
    if not prov.exists() or json.loads(prov.read_text()).get("status") != Status.FAILED:
        record_failure(run_dir, cfg, start, seconds, err)


def execute_pack(grid: Grid, cfgs: list[RunConfig], env: dict[str, str] | None = None,
                 force: bool = False) -> list[tuple[RunConfig, str]]:
    """Train stage-one runs as one packed model (``python -m ltkit.training.packrun``); an outcome per run.

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
        cmd = [sys.executable, "-m", "ltkit.training.packrun", str(params)]
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
        wall = time.time() - t0  # the pack's, shared out equally among its runs
        for cfg, outcome in out[-len(members):]:
            record_spend(grid.run_dir(cfg), attempt(str(outcome), start, wall, env, forced=force, shared_by=len(members)))
    return out


def lacks_notebook(grid: Grid, cfg: RunConfig) -> bool:
    """A finished run without its executed notebook: one a packed model trained (``ltkit.training.packrun`` writes
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


def _set_aside(run_dir: Path, ckpt: Path) -> None:
    """--force on a run with no finished result: train afresh. The old metrics and checkpoints are renamed
    ``*.replaced-<UTC time>`` (each generation kept), not deleted, and a preempted forced run then resumes
    from its *new* checkpoint."""
    stamp = aside_stamp()
    for f in (run_dir / COMPLETE, run_dir / METRICS, ckpt / LAST, ckpt / FINAL):
        if f.exists():
            os.replace(f, f.with_name(f"{f.name}.replaced-{stamp}"))


RESULT_FILES = (EXECUTED_NOTEBOOK, "per_class.csv", "history.csv", "predictions.npz", PROVENANCE, METRICS)


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
            os.replace(stage, stage.with_name(f"{FORCED_OUTPUT}.replaced-{aside_stamp()}"))
        attempt = {"stamp": aside_stamp(), "start": start, "fingerprint": cfg.fingerprint()}
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
    """The staged result becomes current, the old one a ``*.replaced-<stamp>`` generation.

    The stage (under the checkpoint root) may lie on another file system than ``results/`` (checkpoints in a
    per-user cache, results on a tmpfs or a network disk): a rename across devices fails. So the new files
    first come *into the run folder* under temporary names (a rename where it can be, else a copy that is
    fsynced): the only step that needs space or can fail, and it changes nothing current. Then renames within
    the run folder only: the old ``complete.json`` goes first and the new one comes last, so a kill in between
    is never taken for done; if one of them fails, the current result is put back as it was."""
    mark_complete(stage, cfg.fingerprint())
    names = [n for n in (*RESULT_FILES, COMPLETE) if (stage / n).exists()]  # metrics.json, then complete.json last
    incoming: dict[str, Path] = {}
    try:
        for name in names:
            incoming[name] = run_dir / f".{name}.incoming-{stamp}"
            _move_to(stage / name, incoming[name])
    except OSError:
        for tmp in incoming.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    replaced: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for name in (COMPLETE, *RESULT_FILES):
            f = run_dir / name
            if f.exists():
                os.replace(f, f.with_name(f"{name}.replaced-{stamp}"))
                replaced.append((f.with_name(f"{name}.replaced-{stamp}"), f))
        for name in names:
            os.replace(incoming[name], run_dir / name)
            placed.append(run_dir / name)
    except OSError:
        for f in placed:  # the new result's files out again (kept as the failed attempt's), the old ones back
            with contextlib.suppress(OSError):
                os.replace(f, f.with_name(f"{f.name}.failed-{stamp}"))
        for old, f in reversed(replaced):
            os.replace(old, f)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _move_to(src: Path, dest: Path) -> None:
    """``src`` to ``dest``: a rename on one file system, else a copy fsynced before ``src`` is removed."""
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    shutil.copystat(src, dest)
    src.unlink()


def _keep_failed_attempt(run_dir: Path, ckpt: Path, stage: Path, stamp: str, cfg: RunConfig, start: str, wall: float,
                         err: str) -> None:
    """Record a failed forced re-run beside the result that stays current, and put the old checkpoints back."""
    try:
        prov = stage / PROVENANCE
        if not prov.exists() or json.loads(prov.read_text()).get("status") != Status.FAILED:
            record_failure(stage, cfg, start, wall, err)
        for name in (PROVENANCE, EXECUTED_NOTEBOOK):  # moved, not copied: on one file system it needs no space
            if (stage / name).exists():
                _move_to(stage / name, run_dir / f"{name}.failed-{stamp}")
    except OSError as exc:  # the disk is still full: the log line is the record
        _log.error(f"could not record the failed attempt of {cfg.run_path()} beside its result: {exc}")
    for f in (ckpt / LAST, ckpt / FINAL, stage):  # the attempt's partial files, set aside
        if f.exists():
            os.replace(f, f.with_name(f"{f.name}.failed-{stamp}"))
    for name in (LAST, FINAL):  # the finished run's checkpoints are current again
        old = ckpt / f"{name}.replaced-{stamp}"
        if old.exists():
            os.replace(old, ckpt / name)
