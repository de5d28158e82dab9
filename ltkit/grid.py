"""Grids: a YAML file declares runs; one command lists, runs or reports them.

    name: demo
    results: results/demo            # where run folders go
    base: {protocol: cao2019, dataset: synthetic, model: tiny_cnn, epochs: 8}
    axes: {model: [tiny_cnn]}         # optional cartesian product over config fields
    seeds: [0, 1]
    methods: [ce, bs, {label: focal_g1, loss: focal, loss_params: {gamma: 1}},
              {label: la_posthoc, loss: la_posthoc, stage1: ce}]

Every run is validated when the grid is loaded, so a typo fails before any
training starts. Each run executes ``notebooks/train.ipynb`` through papermill
into its own results folder. Runs with a valid ``metrics.json`` are skipped;
runs a loss declares identical to CE for their training counts (and that pass
the numerical check) are recorded as aliases of the CE run.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig, make_config
from .io import LockHeld, atomic_write_text, run_lock
from .losses import LOSSES, check_ce_equivalence, reduces_to_ce
from .results import notebook_error, record_failure, run_status, write_alias

GRID_KEYS = {"name", "description", "results", "base", "axes", "seeds", "methods", "executor", "slurm", "runs_per_gpu"}
REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "train.ipynb"


@dataclass
class Grid:
    name: str
    results: Path
    runs: list[RunConfig]
    slurm: dict[str, Any] = field(default_factory=dict)
    runs_per_gpu: int | str = "auto"
    path: Path | None = None

    def run_dir(self, cfg: RunConfig) -> Path:
        return self.results / cfg.run_path()

    def ckpt_dir(self, cfg: RunConfig) -> Path:
        return REPO / "checkpoints" / self.name / cfg.run_path()


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None, results: str | Path | None = None) -> Grid:
    """Read and fully validate a grid file; ``overrides`` apply to every run (e.g. a tiny CI setting)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"grid file {path} does not exist (grids live in configs/)")
    spec = yaml.safe_load(path.read_text()) or {}
    return grid_from_spec(spec, overrides, results, path)


def grid_from_spec(spec: dict, overrides: dict | None = None, results: str | Path | None = None,
                   path: Path | None = None) -> Grid:
    if not isinstance(spec, dict):
        raise ConfigError(f"a grid must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {', '.join(map(repr, unknown))} (accepted: {', '.join(sorted(GRID_KEYS))})")
    name = spec.get("name") or (path.stem if path else "grid")
    base = dict(spec.get("base") or {})
    axes = spec.get("axes") or {}
    seeds = spec.get("seeds", [base.get("seed", 42)])
    methods = spec.get("methods") or ["ce"]
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"bad value for 'axes': {axes!r} (accepted: a mapping of field -> non-empty list)")
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"bad value for 'seeds': {seeds!r} (accepted: a non-empty list of integers >= 0)")
    if not isinstance(methods, list):
        raise ConfigError(f"bad value for 'methods': {methods!r} (accepted: a list of loss names or mappings)")
    runs: list[RunConfig] = []
    keys = list(axes)
    for seed in seeds:  # seed-major order: a grid cut short still covers every method once
        for combo, m in itertools.product(itertools.product(*(axes[k] for k in keys)), methods):
            mdict = {"loss": m} if isinstance(m, str) else dict(m)
            params = {**base, **dict(zip(keys, combo, strict=True)), **mdict, "seed": seed, **(overrides or {})}
            try:
                runs.append(make_config(params))
            except ConfigError as exc:
                where = f"{path or 'grid'}: method {mdict.get('label') or mdict.get('loss')!r}, seed {seed}"
                raise ConfigError(f"{where}: {exc}") from None
    labels = {(r.run_path()) for r in runs}
    if len(labels) != len(runs):
        raise ConfigError(f"{path or 'grid'}: two runs share a results folder; give methods distinct 'label's")
    for r in runs:
        if r.stage1 and r.run_path().replace(f"/{r.name}/", f"/{r.stage1}/") not in labels:
            raise ConfigError(f"{path or 'grid'}: {r.name!r} starts from stage one {r.stage1!r}, which the grid lacks")
    res = Path(results or spec.get("results") or f"results/{name}")
    if not res.is_absolute():
        res = REPO / res
    return Grid(name, res, runs, dict(spec.get("slurm") or {}), spec.get("runs_per_gpu", "auto"), path)


# --------------------------------------------------------------------------- de-duplication


def expected_counts(cfg: RunConfig):
    """Training counts of a run, computed without loading images (None if unknown)."""
    from .data import SOURCES, lt_counts

    info = SOURCES.info(cfg.dataset)
    if cfg.dataset == "synthetic":
        k, per = cfg.source_params.get("num_classes", 10), cfg.source_params.get("train_per_class", 250)
    elif "num_classes" in info and "train_per_class" in info:
        k, per = info["num_classes"], info["train_per_class"]
    else:
        return None
    n_max = per - int(round(per * 0.1)) if cfg.protocol == "thesis" else per
    return lt_counts(n_max, k, cfg.imb_factor, cfg.imb_type)


def ce_twin(cfg: RunConfig) -> RunConfig:
    return make_config({**cfg.to_dict(), "loss": "ce", "label": None, "loss_params": {}, "stage1": None})


def alias_target(cfg: RunConfig, grid_paths: set[str]) -> RunConfig | None:
    """The CE run that stands for ``cfg`` if ``cfg``'s loss is CE by construction for its counts."""
    if cfg.loss == "ce" or cfg.loss not in LOSSES or cfg.sampler != "instance":
        return None
    counts = expected_counts(cfg)
    if counts is None:
        return None
    params = {k: v for k, v in cfg.loss_params.items() if k != "drw_epoch"}
    if not reduces_to_ce(cfg.loss, counts, **params):
        return None
    twin = ce_twin(cfg)
    if twin.run_path() not in grid_paths:
        return None
    if not check_ce_equivalence(cfg.loss, counts, cfg.loss_params):
        raise RuntimeError(f"{cfg.loss} claims to equal CE for these counts but the numerical check disagrees")
    return twin


# --------------------------------------------------------------------------- execution


def plan(grid: Grid, dedupe: bool = True) -> list[tuple[RunConfig, str, RunConfig | None]]:
    """(run, status, alias target) for every run; status as :func:`run_status`, plus 'locked' / 'partial'."""
    paths = {r.run_path() for r in grid.runs}
    out = []
    for r in grid.runs:
        st = run_status(grid.run_dir(r))
        target = alias_target(r, paths) if dedupe else None
        if st in ("missing", "failed") and _locked(grid, r):
            st = "running"
        elif st == "missing" and (grid.ckpt_dir(r) / "last.pt").exists():
            st = "partial"
        out.append((r, st, target))
    return out


def progress(grid: Grid, cfg: RunConfig) -> str:
    """'epoch 37/200 (launch 2)' from a run's progress file, '' if it has none."""
    import json

    try:
        p = json.loads((grid.ckpt_dir(cfg) / "progress.json").read_text())
    except (OSError, ValueError):
        return ""
    left = (p["epochs"] - p["epoch"]) * p.get("seconds_per_epoch", 0)
    eta = f", ~{left / 60:.0f} min left" if left > 0 else ""
    return f"epoch {p['epoch']}/{p['epochs']}" + (f" (launch {p['launch']})" if p.get("launch", 1) > 1 else "") + eta


def _locked(grid: Grid, cfg: RunConfig) -> bool:
    try:
        with run_lock(grid.ckpt_dir(cfg) / ".lock"):
            return False
    except LockHeld:
        return True


def papermill_command(grid: Grid, cfg: RunConfig, out_nb: Path, params_file: Path) -> list[str]:
    return [sys.executable, "-m", "papermill", str(NOTEBOOK), str(out_nb), "-k", os.environ.get("LTKIT_KERNEL", "python3"),
            "-f", str(params_file), "--cwd", str(REPO / "notebooks"), "--no-progress-bar"]


NOTEBOOK_KEYS = ("protocol", "dataset", "imb_factor", "imb_type", "model", "loss", "label", "seed", "epochs",
                 "batch_size", "data_root")


def notebook_parameters(grid: Grid, cfg: RunConfig) -> dict[str, Any]:
    """The notebook's own parameters plus every other config field in ``extra``."""
    d = cfg.to_dict()
    params = {k: d.pop(k) for k in NOTEBOOK_KEYS}
    return {**params, "extra": d, "output_dir": str(grid.run_dir(cfg)), "checkpoint_dir": str(grid.ckpt_dir(cfg)),
            "smoke": False, "show_progress": True}


def execute_run(grid: Grid, cfg: RunConfig, env: dict[str, str] | None = None, log: Callable[[str], None] = print,
                force: bool = False) -> str:
    """Execute one run's notebook with papermill; returns 'done', 'failed' or 'skipped'.

    'skipped': another process holds the run's lock, or finished it between this
    process's plan and now (checked again under the lock, so two ``ltkit grid run``
    on one results folder never train a run twice).
    """
    import json

    run_dir, ckpt = grid.run_dir(cfg), grid.ckpt_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(ckpt / ".lock"):
            if not force and run_status(run_dir) == "done":
                log(f"skip {cfg.run_path()}: finished by another process meanwhile")
                return "skipped"
            if force:
                _set_aside(run_dir, ckpt)
            params_file = ckpt / "parameters.yaml"
            atomic_write_text(params_file, yaml.safe_dump(notebook_parameters(grid, cfg)))
            out_nb = run_dir / "train.ipynb"
            cmd = papermill_command(grid, cfg, out_nb, params_file)
            full_env = {**os.environ, **(env or {}), "LTKIT_COMMAND": " ".join(cmd), "PYTHONUNBUFFERED": "1"}
            t0 = time.time()
            start = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
            status = run_status(run_dir)
            if proc.returncode == 0 and status == "done":
                return "done"
            err = notebook_error(out_nb) or (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            prov = run_dir / "provenance.json"
            if not prov.exists() or json.loads(prov.read_text()).get("status") != "failed":
                record_failure(run_dir, cfg, start, time.time() - t0, err)
            log(f"FAILED {cfg.run_path()}: {err}")
            return "failed"
    except LockHeld:
        log(f"skip {cfg.run_path()}: another process is running it")
        return "skipped"


def _set_aside(run_dir: Path, ckpt: Path) -> None:
    """--force: train afresh. The old metrics and checkpoints are renamed ``*.replaced``, not
    deleted, and a preempted forced run then resumes from its *new* checkpoint."""
    for f in (run_dir / "metrics.json", ckpt / "last.pt", ckpt / "final.pt"):
        if f.exists():
            os.replace(f, f.with_name(f.name + ".replaced"))


def gpu_slots(runs_per_gpu: int | str = "auto", jobs: int | None = None) -> list[str | None]:
    """One entry per concurrent run: a CUDA_VISIBLE_DEVICES value, or None on a CPU box."""
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
        per = max(1, min(8, int(free / (6 * 2**30))))  # ~6 GiB per small run leaves room
    slots = [str(i) for i in range(n) for _ in range(int(per))]
    return slots[:jobs] if jobs else slots


def pending_runs(grid: Grid, force: bool = False, dedupe: bool = True) -> tuple[list[RunConfig], dict[str, list[str]]]:
    """What is left to train, after skipping finished runs and writing the CE aliases.

    Returns (runs to execute, summary with 'skipped' and 'aliased' filled); shared
    by the local queue and the submitit path so both skip and alias alike.
    """
    todo, summary = [], {"done": [], "skipped": [], "aliased": [], "failed": []}
    for cfg, status, target in plan(grid, dedupe):
        if status in ("done", "alias") and not force:
            summary["skipped"].append(cfg.run_path())
            continue
        if target is not None:
            write_alias(grid.run_dir(cfg), cfg, target.run_path(),
                        f"{cfg.loss} reduces to softmax CE for these training counts (checked numerically)")
            summary["aliased"].append(cfg.run_path())
            continue
        todo.append(cfg)
    return todo, summary


def phases(todo: list[RunConfig]) -> list[list[RunConfig]]:
    """Stage-one runs, then the stage-two runs that start from their checkpoints."""
    return [[c for c in todo if not c.stage1], [c for c in todo if c.stage1]]


def run_grid(grid: Grid, force: bool = False, dedupe: bool = True, jobs: int | None = None,
             log: Callable[[str], None] = print, stagger: float = 1.0) -> dict[str, list[str]]:
    """Run what is missing: stage-one runs first, then stage-two; one run per slot at a time."""
    todo, summary = pending_runs(grid, force, dedupe)
    slots = gpu_slots(grid.runs_per_gpu, jobs)
    log(f"{grid.name}: {len(todo)} to run on {len(slots)} slot(s); {len(summary['skipped'])} already done, "
        f"{len(summary['aliased'])} aliased to CE")
    lock = threading.Lock()
    free = list(slots)

    def worker(cfg: RunConfig) -> tuple[RunConfig, str]:
        with lock:
            slot = free.pop()
        try:
            env = {"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {}
            return cfg, execute_run(grid, cfg, env, log, force=force)
        finally:
            with lock:
                free.append(slot)

    from tqdm.auto import tqdm

    for phase in phases(todo):
        with ThreadPoolExecutor(max_workers=len(slots)) as pool, tqdm(total=len(phase), desc=grid.name, unit="run") as bar:
            futures = []
            for cfg in phase:
                futures.append(pool.submit(worker, cfg))
                if len(futures) <= len(slots):
                    time.sleep(stagger)  # kernels started at the same instant can collide on ZMQ ports
            for fut in futures:
                cfg, st = fut.result()
                summary["done" if st == "done" else "failed" if st == "failed" else "skipped"].append(cfg.run_path())
                bar.update()
    return summary
