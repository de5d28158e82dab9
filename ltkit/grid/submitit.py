"""Running a grid on a Slurm cluster through submitit.

Each missing run becomes one submitit job that executes the same papermill
notebook into the same ``results/`` layout (a shared filesystem is assumed).
A preempted or timed-out job is requeued by submitit's checkpointing hook
(:meth:`RunJob.checkpoint`) and resumes from the run's last epoch checkpoint.
The ``local`` and ``debug`` submitit executors run the same code without a
cluster, which is how the tests exercise it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..config.fields import ConfigError, RunConfig
from ..core.io import atomic_write_json
from ..training.check import make_config
from .execute import execute_run
from .plan import Outcome, forced_attempt, pending_runs, phases
from .spec import Grid

SLURM_KEYS = {"partition": "slurm_partition", "gpus_per_node": "gpus_per_node", "timeout_min": "timeout_min",
              "mem_gb": "mem_gb", "cpus_per_task": "cpus_per_task", "array_parallelism": "slurm_array_parallelism",
              "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
              "max_num_timeout": "slurm_max_num_timeout", "signal_delay_s": "slurm_signal_delay_s"}
# 90-epoch runs on a preemptible partition can be requeued many times: submitit's own default is 3.
SLURM_DEFAULTS = {"gpus_per_node": 1, "timeout_min": 240, "mem_gb": 32, "cpus_per_task": 8, "array_parallelism": 16,
                  "max_num_timeout": 20, "signal_delay_s": 120}


class RunJob:
    """A picklable job: execute one run of a grid; requeue itself on preemption.

    It carries the *resolved* configuration of its run (and of its stage one), as the submitting
    command built it with every ``--set`` applied: the node never re-reads the grid file.
    """

    def __init__(self, name: str, results: str, runs: list[dict], run_path: str, force: bool = False) -> None:
        self.name, self.results, self.runs, self.run_path, self.force = name, results, runs, run_path, force

    def _grid_and_cfg(self):
        runs = [make_config(d) for d in self.runs]  # resolved where submitted, checked again on the node
        grid = Grid(self.name, Path(self.results), runs)
        cfg = next(r for r in runs if r.run_path() == self.run_path)
        return grid, cfg

    def __call__(self) -> str:
        import os

        grid, cfg = self._grid_and_cfg()
        env = {}
        try:
            import submitit

            job_env = submitit.JobEnvironment()
            env["LTKIT_SLURM_LOG"] = str(Path(job_env.paths.stdout)).replace("%j", str(job_env.job_id))
        except Exception:  # noqa: BLE001 - not inside a submitit job (plain or debug call)
            pass
        env.setdefault("LTKIT_SLURM_LOG", os.environ.get("LTKIT_SLURM_LOG", ""))
        return execute_run(grid, cfg, env, force=self.force)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption/timeout: requeue; the run resumes from its last epoch."""
        import submitit

        # the requeued job must not re-run from scratch what it was resuming: force is off, except for a forced
        # re-run of a finished result, which is staged beside it and resumes only under --force (grid._forced_rerun)
        grid, cfg = self._grid_and_cfg()
        resume_forced = self.force and forced_attempt(grid, cfg) is not None
        return submitit.helpers.DelayedSubmission(RunJob(self.name, self.results, self.runs, self.run_path,
                                                         force=resume_forced))


def slurm_parameters(grid: Grid) -> dict[str, Any]:
    """submitit ``update_parameters`` arguments from the grid's ``slurm:`` section."""
    conf = {**SLURM_DEFAULTS, **grid.slurm}
    unknown = sorted(set(conf) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(f"unknown slurm option(s) {', '.join(map(repr, unknown))} (accepted: {', '.join(SLURM_KEYS)})")
    return {SLURM_KEYS[k]: v for k, v in conf.items()}


def jobs_file(grid: Grid) -> Path:
    return grid.ckpt_root / "submitit_jobs.json"


def job_runs(grid: Grid, cfg: RunConfig) -> list[dict]:
    """The resolved configurations a job needs: its run, and the stage one it starts from."""
    return [r.to_dict() for r in grid.runs if r.run_path() in (cfg.run_path(), cfg.stage1_path())]


SUBMITIT_CLUSTERS = {"slurm": "slurm", "submitit-local": "local", "debug": "debug"}  # executor -> submitit cluster


def submit_grid(grid: Grid, executor: str = "slurm", force: bool = False, dedupe: bool = True,
                log_dir: str | Path | None = None, wait: bool | None = None,
                local_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Submit every missing run as a submitit job; stage-two runs after their stage one.

    ``slurm`` submits a job array (stage-two jobs depend ``afterok`` on the stage-one
    array); ``submitit-local`` runs each job as a local subprocess with submitit's own
    requeue-on-signal machinery (no queue: every job at once), ``debug`` in this
    process. Both exist so the Slurm path is tested without a cluster. With
    ``wait`` (default off for slurm) it blocks and collects each job's outcome.
    """
    import submitit

    if executor not in SUBMITIT_CLUSTERS:
        raise ConfigError(f"bad value for 'executor': {executor!r} (accepted: {', '.join(SUBMITIT_CLUSTERS)})")
    folder = Path(log_dir or grid.ckpt_root / "submitit" / "%j")
    cluster = SUBMITIT_CLUSTERS[executor]
    params = slurm_parameters(grid)
    max_requeue = params.pop("slurm_max_num_timeout")  # a constructor argument in submitit, not a job parameter
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster, slurm_max_num_timeout=max_requeue,
                               local_max_num_timeout=max_requeue)
    if cluster == "slurm":
        ex.update_parameters(**params, name=f"ltkit-{grid.name}")
    else:
        ex.update_parameters(timeout_min=params["timeout_min"], **(local_params or {}))
    blocking = wait if wait is not None else executor != "slurm"
    todo, summary = pending_runs(grid, force, dedupe)
    records: dict[str, Any] = _read_jobs(grid)
    results: dict[str, str] = {}
    jobs: dict[str, Any] = {}
    stage_one_ids: list[str] = []
    for phase in phases(todo):
        if not phase:
            continue
        if cluster == "slurm" and stage_one_ids and phase[0].stage1:
            ids = sorted({i.split("_")[0] for i in stage_one_ids})
            ex.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(ids)})
        with ex.batch():
            pending = [(cfg, ex.submit(RunJob(grid.name, str(grid.results), job_runs(grid, cfg), cfg.run_path(), force)))
                       for cfg in phase]
        for cfg, job in pending:
            jobs[cfg.run_path()] = job
            records[cfg.run_path()] = {"job_id": str(job.job_id), "submitted": time.time(), "executor": executor,
                                       "log": str(folder).replace("%j", str(job.job_id))}
            if not cfg.stage1:
                stage_one_ids.append(str(job.job_id))
        atomic_write_json(jobs_file(grid), records)
        if blocking:
            for cfg, job in pending:
                results[cfg.run_path()] = job.result()
    failed = [k for k, v in results.items() if v == Outcome.FAILED]
    return {"submitted": len(todo), "aliased": len(summary["aliased"]), "failed": failed, "results": results,
            "jobs": jobs}


def _read_jobs(grid: Grid) -> dict[str, Any]:
    f = jobs_file(grid)
    if f.exists():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def executor_status(grid: Grid) -> dict[str, str]:
    """Slurm/submitit view of unfinished runs: 'queued' / 'running' / 'failed' from the job records."""
    out = {}
    records = _read_jobs(grid)
    if not records:
        return out
    try:
        import submitit
    except ImportError:  # pragma: no cover
        return out
    for run_path, rec in records.items():
        if rec.get("executor") != "slurm":
            continue
        try:
            job = submitit.SlurmJob(folder=Path(rec["log"]).parent, job_id=rec["job_id"])
            state = job.state
        except Exception:  # noqa: BLE001 - sacct unavailable off-cluster
            continue
        out[run_path] = {"PENDING": "queued", "RUNNING": "running", "FAILED": "failed", "TIMEOUT": "requeued",
                         "PREEMPTED": "requeued"}.get(state, state.lower())
    return out
