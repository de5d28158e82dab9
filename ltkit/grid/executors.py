"""Executors: how a grid's pending runs are executed (``EXECUTORS`` registry).

``local`` runs them on this machine, one per slot: a GPU slot per run (``runs_per_gpu``, from free
memory and the measured peaks), or on a CPU ``jobs`` runs x ``threads`` threads that never exceed
the cores; ``slurm``, ``submitit-local`` and ``debug`` submit them through submitit
(:mod:`.submitit`). Each is a thin adapter over executing one run (:func:`.execute.execute_run`), as
torchvision's ``run_with_submitit.py`` is over its ``train.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..config.fields import ConfigError, RunConfig
from ..core.hardware import cpu_plan, thread_env
from ..core.layout import REPO
from ..core.registry import Registry
from ..models import MODELS
from ..runs.status import Status, run_status
from .execute import execute_pack, execute_run, record_notebooks
from .packing import pack_runs, pack_size
from .plan import Outcome, pending_runs, phases, resume_epoch
from .processes import STOP, stop_on_signals, stop_running
from .spec import Grid

_log = logging.getLogger(__name__)


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


def cpu_slots(jobs: int | None, threads: int | None) -> tuple[list[None], dict[str, str]]:
    """On a CPU: one slot per concurrent run and the environment that gives each run its threads
    (:func:`ltkit.core.hardware.cpu_plan`: never more runs x threads than cores)."""
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

    STOP.clear()
    with stop_on_signals():
        return _run_phases(grid, todo, summary, slots, worker, force, stagger, notebooks)


def _run_phases(grid: Grid, todo: list[RunConfig], summary: dict[str, list[str]], slots: list, worker,
                force: bool, stagger: float, notebooks: bool) -> dict[str, list[str]]:
    from tqdm.auto import tqdm

    recorded: set[str] = set()

    def record(cfg: RunConfig, st: str) -> None:
        summary[str(st)].append(cfg.run_path())
        recorded.add(cfg.run_path())

    size = pack_size(grid.pack)
    for phase in phases(todo):
        items = pack_runs(phase, size, lambda c: resume_epoch(grid.ckpt_dir(c)),
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
            except KeyboardInterrupt:  # Ctrl-C (or SIGTERM: stop_on_signals): stop now, keep what finished
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


@dataclass(frozen=True)
class ExecutorSpec:
    """``description``: where and how the runs go (shown by ``ltkit grid run --help``)."""

    description: str


EXECUTORS: Registry[ExecutorSpec] = Registry("executor", ExecutorSpec)


@EXECUTORS.register("local", description="this machine: one run per GPU slot, or jobs x threads on a CPU")
def local(grid: Grid, force: bool = False, dedupe: bool = True, jobs: int | None = None, threads: int | None = None,
          notebooks: bool = True, **_: Any) -> dict[str, list[str]]:
    return run_grid(grid, force=force, dedupe=dedupe, jobs=jobs, notebooks=notebooks, threads=threads)


def _submitit(kind: str):
    def submit(grid: Grid, force: bool = False, dedupe: bool = True, log_dir: str | None = None,
               **_: Any) -> dict[str, Any]:
        from .submitit import submit_grid

        return submit_grid(grid, executor=kind, force=force, dedupe=dedupe, log_dir=log_dir)

    return submit


for _kind, _what in (("slurm", "a Slurm cluster through submitit (one job per run, requeued on preemption)"),
                     ("submitit-local", "the Slurm path on this machine, every job at once (tests)"),
                     ("debug", "the Slurm path in this process (tests)")):
    EXECUTORS.register(_kind, description=_what)(_submitit(_kind))
