"""A campaign: a long queue of grid runs trained in the background, in priority order, across restarts.

On a machine without a GPU the from-scratch CIFAR-LT runs take hours each (bf16 on the CPU's
matrix units, :mod:`ltkit.core.hardware`); a campaign is how such a machine fills the table:

    ltkit campaign start  configs/campaign-cpu.yaml   # detached, niced, logs to .campaign/campaign.log
    ltkit campaign status                             # done / running (epoch, ETA) / waiting / queued
    ltkit campaign stop                               # at the next epoch boundary of every running run

``start`` checks out the current commit into its own git worktree (``.campaign/src``) and trains
from there, so edits in the working tree never change a run in flight and every run's provenance
names that commit. Results go to the main checkout's ``results/``; checkpoints to a per-user cache
keyed by the repository and machine (:func:`~ltkit.core.layout.campaign_checkpoints_root`, or
``LTKIT_CHECKPOINTS``), so a campaign started again, after a stop, a restart of the machine or from a
fresh clone, resumes each run from its last epoch (or starts it again where the checkpoints are gone).
The runs look for their data where the checkout does (``LTKIT_DATA``, else its ``data/``), not in the
worktree; ``start`` refuses a queue none of whose runs left could find it.

Each queue entry is trained by ``ltkit grid run <grid> --only <method> --seeds <seed>`` in a child
process (locks, papermill, resume, provenance: all the grid's); a stage-two run waits until the
stage-one run it starts from is done, while later entries go ahead. A freed slot goes first to a
stage two whose stage one is done (:func:`launch_order`): it trains for minutes where a stage one
trains for hours, and it completes a row that its stage one left half-filled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.fields import ConfigError
from ..core.hardware import NICE_ENV, cpu_plan, lower_priority, machine_key, measured_cpu_split
from ..core.io import LockHeld, atomic_write_json, is_locked, read_json, read_json_or_empty, run_lock, yaml_load
from ..core.layout import PROGRESS, REPO, campaign_checkpoints_root, default_data_root
from ..runs.status import Status, load_metrics
from .plan import data_source, plan, preflight, progress
from .processes import prepare_child
from .spec import Grid, load_grid

CAMPAIGN_DIR = ".campaign"  # git-ignored: the worktree, state, log
CAMPAIGN_KEYS = {"name", "description", "jobs", "threads", "queue"}
ENTRY_KEYS = {"grid", "methods", "seeds"}
POLL_S = 5.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One run of the queue: a grid file (relative to the campaign file), a method and a seed."""

    grid: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{Path(self.grid).stem}:{self.method}:seed{self.seed}"


@dataclass
class Campaign:
    name: str
    path: Path
    queue: list[Item]
    jobs: int | None = None
    threads: int | None = None


def load_campaign(path: str | Path) -> Campaign:
    """Read and check a campaign file: every entry's grid loads and holds the named methods and seeds."""
    path = Path(path)
    try:
        spec = yaml_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"campaign file {path}: {exc.strerror or exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("queue"), list) or not spec["queue"]:
        raise ConfigError(f"campaign file {path}: expected a mapping with a non-empty 'queue' list "
                          "(see configs/campaign-cpu.yaml)")
    unknown = sorted(set(spec) - CAMPAIGN_KEYS)
    if unknown:
        raise ConfigError(f"campaign file {path}: unknown key(s) {', '.join(map(repr, unknown))} "
                          f"(accepted: {', '.join(sorted(CAMPAIGN_KEYS))})")
    for key in ("jobs", "threads"):
        v = spec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"campaign file {path}: bad value for {key!r}: {v!r} (accepted: an integer >= 1, or leave "
                              "it out for the split `make bench` measured best)")
    queue: list[Item] = []
    grids: dict[str, Grid] = {}
    for i, entry in enumerate(spec["queue"]):
        where = f"campaign file {path}, queue entry {i + 1}"
        if not isinstance(entry, dict) or set(entry) - ENTRY_KEYS or "grid" not in entry:
            raise ConfigError(f"{where}: {entry!r} (accepted: a mapping with 'grid' and optional 'methods', 'seeds')")
        gname = str(entry["grid"])
        if gname not in grids:
            grids[gname] = load_grid(path.parent / gname)
        runs = grids[gname].runs
        methods = entry.get("methods") or sorted({r.method for r in runs})
        seeds = entry.get("seeds") or sorted({r.seed for r in runs})
        known = {(r.method, r.seed) for r in runs}
        for m in methods:
            for s in seeds:
                if (m, s) not in known:
                    raise ConfigError(f"{where}: grid {gname} has no run {m!r} seed {s!r} (methods: "
                                      f"{', '.join(sorted({r.method for r in runs}))}; seeds: "
                                      f"{', '.join(str(x) for x in sorted({r.seed for r in runs}))})")
                item = Item(gname, m, s)
                if item not in queue:
                    queue.append(item)
    return Campaign(str(spec.get("name") or path.stem), path, queue, spec.get("jobs"), spec.get("threads"))


# --------------------------------------------------------------------------- where a campaign stands


def _grids(camp: Campaign, home: Path | None = None) -> dict[str, Grid]:
    """The campaign's grids; with ``home`` (the main checkout, when the driver runs in the worktree), each
    grid's relative results folder and data_root are those of ``home``, not of the worktree."""
    out = {}
    for g in dict.fromkeys(i.grid for i in camp.queue):
        grid = load_grid(camp.path.parent / g, home=home)
        if home is not None:
            grid.checkpoints = campaign_checkpoints_root(home)
        out[g] = grid
    return out


def _cfg(grid: Grid, item: Item):
    return next(r for r in grid.runs if r.method == item.method and r.seed == item.seed)


def item_states(camp: Campaign, home: Path | None = None,
                grids: dict[str, Grid] | None = None) -> list[tuple[Item, str, str]]:
    """(item, state, detail) for every item: done, running, partial, failed, stale, waiting, queued (``grids``:
    :func:`_grids` of ``camp`` and ``home``, where the caller has them already)."""
    grids = grids or _grids(camp, home)
    status: dict[Item, str] = {}
    for gname, grid in grids.items():
        rows = {(c.method, c.seed): st for c, st, _ in plan(grid)}
        for item in camp.queue:
            if item.grid == gname:
                status[item] = rows[(item.method, item.seed)]
    out = []
    for item in camp.queue:
        grid, st = grids[item.grid], status[item]
        cfg = _cfg(grid, item)
        if st in (Status.DONE, Status.ALIAS):
            m = load_metrics(grid.run_dir(cfg)) or {}
            top1 = m.get("balanced.top1")
            out.append((item, "done", f"balanced top-1 {top1:.4f}" if isinstance(top1, float) else ""))
        elif st in (Status.RUNNING, Status.PARTIAL, Status.FAILED, Status.STALE):
            out.append((item, str(st), progress(grid, cfg)))
        elif cfg.stage1 and status.get(Item(item.grid, cfg.stage1, item.seed)) not in (Status.DONE, Status.ALIAS):
            out.append((item, "waiting", f"for {cfg.stage1} seed {item.seed}"))
        else:
            out.append((item, "queued", ""))
    return out


def time_left(grids: dict[str, Grid], rows: list[tuple[Item, str, str]], jobs: int) -> str:
    """How long the rest of the queue trains, as a line of ``status``: the epochs left of every run not done at the
    pace of the runs training now (their last epoch time, under the campaign's own split; else the last epoch time
    of runs stopped part-way, the latest pace this machine measured; else the finished stage-one runs' mean pace,
    which counts runs trained on other machines and splits), stage twos at what their finished runs of the same
    procedure took (else any stage two's), ``jobs`` at a time. '' when nothing is left or no pace is known yet. A
    projection, not a promise: a stop, a restart from an older checkpoint or other work on the machine moves it.
    ``grids``: the campaign's (:func:`_grids`)."""
    from ..runs.records import training_seconds
    from ..training.procedures import PROCEDURES

    todo = [(item, st) for item, st, _ in rows if st != "done"]
    if not todo:
        return ""
    paces, stopped, stage_two, progress_of = [], [], {}, {}
    for item, st in todo:
        grid = grids[item.grid]
        p = read_json_or_empty(grid.ckpt_dir(_cfg(grid, item)) / PROGRESS)
        if p.get("epochs"):
            progress_of[item] = p
            if p.get("seconds_per_epoch"):
                (paces if st == "running" else stopped).append(float(p["seconds_per_epoch"]))
    source = "the pace of the runs training now"
    finished_paces = []
    for item, st, _ in rows:
        if st != "done":
            continue
        grid = grids[item.grid]
        cfg = _cfg(grid, item)
        took = training_seconds(grid.run_dir(cfg))
        trainings = PROCEDURES.info(cfg.procedure).trainings
        if not took:
            continue
        if trainings:
            if cfg.epochs:
                finished_paces.append(took / (cfg.epochs * trainings))
        else:
            stage_two.setdefault(cfg.procedure, []).append(took)
    if not paces and stopped:
        paces, source = stopped, f"the last pace of the {len(stopped)} run(s) stopped part-way, none training now"
    if not paces and finished_paces:
        paces, source = finished_paces, f"the mean pace of the {len(finished_paces)} finished run(s), none training now"
    if not paces:
        return ""
    pace = sum(paces) / len(paces)
    any_two = [t for ts in stage_two.values() for t in ts]  # a stage two with no finished run of its own kind
    seconds, epochs, unknown = 0.0, 0, 0
    for item, _ in todo:
        cfg = _cfg(grids[item.grid], item)
        trainings = PROCEDURES.info(cfg.procedure).trainings
        if not trainings:
            took = stage_two.get(cfg.procedure) or any_two
            seconds += sum(took) / len(took) if took else 0.0
            unknown += not took
            continue
        p = progress_of.get(item)
        left = (int(p["epochs"]) - int(p.get("epoch", 0))) if p else int(cfg.epochs or 0) * trainings
        epochs += left
        seconds += left * pace
    hours = seconds / max(jobs, 1) / 3600
    return (f"left: about {hours:.0f} h of training for {len(todo)} run(s), {jobs} at a time ({epochs} epochs at "
            f"{pace:.0f} s each, {source}; stage twos at their finished runs' time"
            + (f", {unknown} with none yet not counted" if unknown else "") + "), if nothing stops it")


def data_root(repo: Path) -> Path:
    """Where the campaign's runs look for their data: ``LTKIT_DATA`` if set, else ``repo``'s ``data/``.

    Absolute, and handed to the driver: its runs execute in the worktree, whose own ``data/`` (and
    ``../shared``) is not the checkout's, so the default would otherwise point at an empty folder."""
    return default_data_root(repo).resolve()


def without_data(camp: Campaign, repo: Path, root: Path, items: list[Item]) -> dict[str, str]:
    """{item name: what is missing} for those of ``items`` whose data (or pretrained weights) are not at hand
    under ``root``: each would only fail once the campaign reached it."""
    grids = _grids(camp, repo)
    checked: dict[tuple, str] = {}
    out = {}
    for item in items:
        cfg = _cfg(grids[item.grid], item)
        key = (*data_source(cfg), cfg.pretrained and cfg.model)
        if key not in checked:
            try:
                preflight([cfg], root)
                checked[key] = ""
            except ConfigError as exc:
                checked[key] = str(exc).removeprefix("cannot start the grid: ")
        if checked[key]:
            out[item.name] = checked[key]
    return out


# --------------------------------------------------------------------------- the driver (runs in the worktree)


class _Stop:
    requested = False

    @classmethod
    def handler(cls, signum, frame) -> None:
        cls.requested = True


def drive(camp: Campaign, home: Path, jobs: int, threads: int, log_level: str = "info") -> int:
    """Train the queue, ``jobs`` runs at a time with ``threads`` threads each, until it is empty or a stop
    is asked for (SIGTERM / SIGINT: every running run stops right after its next epoch checkpoint).
    ``home``: the checkout whose results folders receive the runs (the main one, not the worktree)."""
    signal.signal(signal.SIGTERM, _Stop.handler)
    signal.signal(signal.SIGINT, _Stop.handler)
    try:
        with run_lock(driver_lock(home)):  # held while it drives: how start / status / stop find it
            return _drive(camp, home, jobs, threads, log_level)
    except LockHeld:
        _log.error(f"another campaign driver holds {driver_lock(home)} (pid {_lock_holder(driver_lock(home))}); "
                   "this one does not start")
        return 2


def _drive(camp: Campaign, home: Path, jobs: int, threads: int, log_level: str) -> int:
    grids = _grids(camp, home)
    running: dict[Item, subprocess.Popen] = {}
    finished: dict[Item, str] = {}
    _log.info(f"campaign {camp.name}: {len(camp.queue)} runs, {jobs} at a time x {threads} thread(s), results under {home}")

    def state_of(item: Item) -> str:
        grid = grids[item.grid]
        cfg = _cfg(grid, item)
        return str(next(st for c, st, _ in plan(_one(grid, cfg)) if c is cfg))

    def ready(item: Item) -> bool:
        cfg = _cfg(grids[item.grid], item)
        if not cfg.stage1:
            return True
        dep = Item(item.grid, cfg.stage1, item.seed)
        return finished.get(dep) == "done" or state_of(dep) in (Status.DONE, Status.ALIAS)

    for item in camp.queue:  # what an earlier launch finished
        if state_of(item) in (Status.DONE, Status.ALIAS):
            finished[item] = "done"
    while not _Stop.requested:
        for item, proc in list(running.items()):
            if proc.poll() is not None:
                del running[item]
                finished[item] = "done" if state_of(item) in (Status.DONE, Status.ALIAS) else f"exit {proc.returncode}"
                _log.info(f"{item.name}: {finished[item]}")
        todo = [i for i in camp.queue if i not in finished and i not in running]
        if not todo and not running:
            break
        for item in launch_order(todo, lambda i: bool(_cfg(grids[i.grid], i).stage1)):
            if len(running) >= jobs:
                break
            if ready(item):
                running[item] = _launch(camp, item, grids[item.grid].results, threads, log_level)
        if not running and todo:  # everything left waits for a stage one that failed or is not queued
            _log.error(f"nothing can start: {', '.join(i.name for i in todo)} wait for stage-one runs that failed")
            break
        time.sleep(POLL_S)
    if _Stop.requested:
        _stop_at_epoch_boundary(grids, running)
    failed = [i.name for i, f in finished.items() if f != "done"]
    _log.info(f"campaign {camp.name}: {sum(f == 'done' for f in finished.values())} of {len(camp.queue)} done"
              + (f"; not finished: {', '.join(failed)}" if failed else "") + ("; stopped" if _Stop.requested else ""))
    return 130 if _Stop.requested else (1 if failed else 0)


def launch_order(todo: list[Item], is_stage_two: Callable[[Item], bool]) -> list[Item]:
    """The order in which a freed slot looks at the runs left: stage twos first, then stage ones, each in
    queue order. A stage two trains a classifier for minutes on a finished stage one's features; put
    behind a stage one queued before it, it would wait hours, and so would the row it completes (with
    one slot, a finished ``ce_mixup`` seed would hand its slot to the next 2-hour run, not to its own
    five stage twos). Stage twos whose stage one is not done are skipped by the caller, as before."""
    return sorted(todo, key=lambda item: not is_stage_two(item))  # stable: queue order within each kind


def _one(grid: Grid, cfg) -> Grid:
    """The grid narrowed to one run (what ``--only <method> --seeds <seed>`` does)."""
    return dataclasses.replace(grid, runs=[cfg])


def _launch(camp: Campaign, item: Item, results: Path, threads: int, log_level: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ltkit.cli", "--log-level", log_level, "grid", "run", str(camp.path.parent / item.grid),
           "--only", item.method, "--seeds", str(item.seed), "--jobs", "1", "--threads", str(threads),
           "--results", str(results)]
    _log.info(f"{item.name}: start ({' '.join(cmd[1:])})")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, env=env, preexec_fn=prepare_child)  # noqa: PLW1509


def _stop_at_epoch_boundary(grids: dict[str, Grid], running: dict[Item, subprocess.Popen], slack: float = 60.0) -> None:
    """Stop each running run right after its next epoch checkpoint (or after 2.5 epochs' time without one)."""
    watch: dict[Item, tuple[Path, float, float]] = {}
    for item in running:
        prog = grids[item.grid].ckpt_dir(_cfg(grids[item.grid], item)) / PROGRESS
        try:
            per_epoch = float(json.loads(prog.read_text()).get("seconds_per_epoch", 0))
            seen = prog.stat().st_mtime
        except (OSError, ValueError):
            per_epoch, seen = 0.0, 0.0
        watch[item] = (prog, seen, time.time() + 2.5 * per_epoch + slack)
        _log.info(f"{item.name}: stopping at its next epoch checkpoint")
    while watch:
        for item, (prog, seen, deadline) in list(watch.items()):
            proc = running[item]
            try:
                moved = prog.stat().st_mtime > seen
            except OSError:
                moved = False
            if proc.poll() is not None or moved or time.time() > deadline:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # the grid runner stops its notebook; the checkpoint stays
                del watch[item]
        time.sleep(0.2)
    for item, proc in running.items():
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        _log.info(f"{item.name}: stopped (resumes from its checkpoint)")


# --------------------------------------------------------------------------- start / stop / status (main checkout)


def state_dir(repo: Path = REPO) -> Path:
    return repo / CAMPAIGN_DIR


def _proc_stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: [state, ppid, ...]; None where there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()
    except OSError:
        return None


def _started_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot, field 22 of ``/proc/<pid>/stat``): with the pid, the
    process's identity; a pid alone is reused (after a restart of the machine, the campaign's old pid may be
    anybody's)."""
    stat = _proc_stat(pid)
    return stat[19] if stat and len(stat) > 19 else None


def _alive(pid: int | None, started: str | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not) and, given ``started`` (:func:`_started_ticks` at the start), is
    still the same process."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc: the signal's answer is all there is
        return True
    return stat[0] != "Z" and (started is None or _started_ticks(pid) == started)


def driver_lock(repo: Path = REPO) -> Path:
    """The lock the campaign's driver holds for as long as it runs (the kernel drops it when the driver dies):
    sturdier than the state file, which a disk or a hand can break."""
    return state_dir(repo) / "driver.lock"


def _lock_holder(path: Path) -> int | None:
    """The pid that holds the ``flock`` on ``path``, as the kernel reports it (``/proc/locks``), else the pid the
    holder wrote into the file (:func:`ltkit.core.io.run_lock`); None where nobody holds it."""
    if not is_locked(path):
        return None
    try:
        inode = path.stat().st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].split(":")[-1] == str(inode):
                return int(parts[4])
    except (OSError, ValueError):
        pass
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _driver(repo: Path, state: dict[str, Any] | None) -> int | None:
    """The pid of the campaign driver running here, provably: the holder of its lock, or (a driver started by an
    older ltkit, which held no lock) the state's pid when that process started when the state says it did.
    A pid without its start time is not proof (pids are reused): None."""
    pid = _lock_holder(driver_lock(repo))
    if pid is not None:
        return pid
    if state and state.get("pid_started") and _alive(state.get("pid"), state.get("pid_started")):
        return int(state["pid"])
    return None


def _running(state: dict[str, Any] | None, repo: Path = REPO) -> bool:
    """Whether a campaign is running here (see :func:`_driver`)."""
    return _driver(repo, state) is not None


class StateUnreadable(ConfigError):
    """``.campaign/state.json`` exists but is not a state this ltkit wrote (truncated, hand-edited)."""


def read_state(repo: Path = REPO) -> dict[str, Any] | None:
    """The state ``start`` wrote; None where there is none; :class:`StateUnreadable` where it is broken."""
    path = state_dir(repo) / "state.json"
    try:
        state = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateUnreadable(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    ok = (isinstance(state, dict) and isinstance(state.get("pid"), int) and not isinstance(state.get("pid"), bool)
          and isinstance(state.get("campaign"), str) and isinstance(state.get("commit"), str))
    if not ok:
        raise StateUnreadable(f"{path} is not a campaign state (expected pid, campaign and commit; got "
                              f"{str(state)[:80]!r})")
    return state


def _state_or_problem(repo: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return read_state(repo), None
    except StateUnreadable as exc:
        return None, str(exc)


def _git(repo: Path, *args: str) -> str:
    p = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed in {repo}: {p.stderr.strip().splitlines()[-1:] or p.returncode}")
    return p.stdout.strip()


def prepare_worktree(repo: Path, commit: str) -> Path:
    """``.campaign/src`` checked out (detached) at ``commit``: what the campaign trains from."""
    src = state_dir(repo) / "src"
    if not (src / ".git").exists():
        _git(repo, "worktree", "prune")
        _git(repo, "worktree", "add", "--detach", "--force", str(src), commit)
    else:
        _git(src, "checkout", "--detach", "--force", "-q", commit)
    return src


NICE = 10  # the campaign and every process it starts (LTKIT_NICE: the notebook kernels are sessions of their own)


def _background() -> None:  # pragma: no cover - runs in the child between fork and exec
    lower_priority(NICE)


def start(campaign_file: str | Path, repo: Path = REPO, commit: str | None = None, jobs: int | None = None,
          threads: int | None = None, log_level: str = "info") -> dict[str, Any]:
    """Start the campaign detached (new session, ``nice`` 10) from a worktree of ``commit`` (default HEAD);
    returns its state. The same campaign already running is left alone (its state is returned); another one, a
    campaign file outside the repository, or one (or a grid of its) not in the commit is a ConfigError, before
    anything starts."""
    try:
        rel = Path(campaign_file).resolve().relative_to(repo.resolve())
    except ValueError:
        raise ConfigError(f"campaign file {campaign_file} is outside the repository {repo} (accepted: a campaign file "
                          "committed in it, e.g. configs/campaign-cpu.yaml; the campaign trains from a worktree of "
                          "the commit)") from None
    camp = load_campaign(campaign_file)  # checked first: a bad file is named as such, running campaign or not
    try:
        with run_lock(state_dir(repo) / "start.lock"):  # the check and the launch as one step: one start wins
            return _start(camp, rel, repo, commit, jobs, threads, log_level)
    except LockHeld:
        raise ConfigError(f"another `ltkit campaign start` (pid {_lock_holder(state_dir(repo) / 'start.lock')}) is "
                          "starting a campaign here right now; `ltkit campaign status` shows it") from None


def _start(camp: Campaign, rel: Path, repo: Path, commit: str | None, jobs: int | None, threads: int | None,
           log_level: str) -> dict[str, Any]:
    state, problem = _state_or_problem(repo)
    pid = _driver(repo, state)
    if pid is not None:
        if state is None:
            raise ConfigError(f"a campaign is running here (pid {pid}, holding {driver_lock(repo)}) but {problem}; "
                              "`ltkit campaign stop` (make campaign-stop) stops it")
        if state.get("campaign", str(rel)) != str(rel):
            raise ConfigError(f"campaign {state['campaign']} is already running (pid {pid}); "
                              f"`ltkit campaign stop` (make campaign-stop) first to start {rel} instead")
        return {**state, "pid": pid, "already_running": True}
    asked = (jobs or camp.jobs, threads or camp.threads)
    try:
        jobs, threads = cpu_plan(*asked)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    root = data_root(repo)
    todo = [i for i, st, _ in item_states(camp, repo) if st != "done"]
    missing = without_data(camp, repo, root, todo)
    if todo and len(missing) == len(todo):
        raise ConfigError(f"campaign {rel}: none of its {len(todo)} run(s) left can start: {missing[todo[0].name]}")
    sha = _git(repo, "rev-parse", "--verify", commit or "HEAD")
    for f in [rel, *sorted({Path(os.path.normpath(rel.parent / i.grid)) for i in camp.queue})]:  # the worktree's
        if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{sha}:{f.as_posix()}"],
                          capture_output=True).returncode != 0:
            raise ConfigError(f"{f} is not in commit {sha[:12]}, which the campaign trains from: commit it first")
    dirty = _git(repo, "status", "--porcelain", "--", "ltkit", "notebooks", "configs")
    src = prepare_worktree(repo, sha)
    log = state_dir(repo) / "campaign.log"
    env = {**os.environ, "PYTHONPATH": str(src), "LTKIT_CHECKPOINTS": str(campaign_checkpoints_root(repo)),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), NICE_ENV: str(NICE), "LTKIT_DATA": str(root),
           "LTKIT_HOME": str(repo)}  # a grid's relative data_root is the checkout's, not the worktree's
    env.pop("LTKIT_GIT_COMMIT", None)  # the worktree's own commit is the truth
    cmd = [sys.executable, "-m", "ltkit.cli", "--log-level", log_level, "campaign", "run", str(src / rel),
           "--home", str(repo), "--jobs", str(jobs), "--threads", str(threads)]
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {sha[:12]} ({jobs} x {threads} thread(s))\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_background)
    state = {"pid": proc.pid, "pid_started": _started_ticks(proc.pid), "commit": sha, "campaign": str(rel),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "jobs": jobs, "threads": threads, "log": str(log), "worktree": str(src),
             "uncommitted_left_out": bool(dirty), "data": str(root), "without_data": missing,
             "split": _split_source(asked, (jobs, threads))}
    atomic_write_json(state_dir(repo) / "state.json", state)
    return state


def _split_source(asked: tuple[int | None, int | None], got: tuple[int, int]) -> str:
    """Where the campaign's jobs x threads came from, as status and start say it."""
    measured = measured_cpu_split()
    if measured == got:
        return "this CPU's measured best"
    if measured is None and asked == (None, None):
        return f"unmeasured CPU ({machine_key()}): one run on every core"
    return "as asked"


STILL_STOPPING = "still stopping"


def stop(repo: Path = REPO, timeout: float = 600.0) -> str:
    """Ask the running campaign to stop at its runs' next epoch boundaries and wait for it. Only a driver proven to
    be this campaign's (:func:`_driver`) is signalled; a message containing :data:`STILL_STOPPING` means it
    has not stopped within ``timeout`` (the CLI exits 1)."""
    state, problem = _state_or_problem(repo)
    pid = _driver(repo, state)
    if pid is None:
        return "no campaign is running" + (f" ({problem})" if problem else "")
    started = _started_ticks(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while _alive(pid, started) and time.time() < deadline:
        time.sleep(0.5)
    log = (state or {}).get("log", state_dir(repo) / "campaign.log")
    if _alive(pid, started):
        return f"campaign (pid {pid}) {STILL_STOPPING} after {timeout:.0f} s; see {log}"
    commit = f", commit {state['commit'][:12]}" if state else ""
    return f"campaign stopped (pid {pid}{commit}); runs resume from their checkpoints"


DEFAULT_CAMPAIGN = "configs/campaign-cpu.yaml"  # what `ltkit campaign status` shows before any start


def _uncommitted_runs(grids: dict[str, Grid], rows: list[tuple[Item, str, str]], repo: Path) -> set[Item]:
    """The done runs whose folder git does not hold as it is (new or changed files): what to commit before the
    working tree goes. Empty where ``repo`` is no git checkout."""
    done = [item for item, st, _ in rows if st == "done"]
    if not done:
        return set()
    p = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return set()
    changed = [(repo / entry[3:]).resolve() for entry in p.stdout.split("\0") if len(entry) > 3]  # 'XY path'
    out = set()
    for item in done:
        run_dir = grids[item.grid].run_dir(_cfg(grids[item.grid], item)).resolve()
        if any(c == run_dir or run_dir in c.parents for c in changed):
            out.add(item)
    return out


def status_lines(campaign_file: str | Path | None = None, repo: Path = REPO) -> list[str]:
    """What ``ltkit campaign status`` prints: the process, then one line per queued run. Where no campaign was
    started (a fresh clone), the lines of ``DEFAULT_CAMPAIGN``: what its committed results already hold."""
    state, problem = _state_or_problem(repo)
    state = state or {}
    pid = _driver(repo, state)
    alive = pid is not None
    if campaign_file:
        path = Path(campaign_file)
    elif state.get("campaign"):
        # the campaign's own commit: its worktree's file and grids, not the working tree's (edited or deleted since)
        own = Path(state.get("worktree") or "") / state["campaign"]
        path = own if alive and state.get("worktree") and own.is_file() else repo / state["campaign"]
    else:
        path = None
    if path is None and not (repo / DEFAULT_CAMPAIGN).is_file() and not problem:
        return ["no campaign has been started here (make campaign)"]
    head = (f"campaign {'running' if alive else 'not running'}" + (f" (pid {pid})" if alive else "")
            + (f", commit {state['commit'][:12]}, {state.get('jobs')} x {state.get('threads')} thread(s)"
               + (f" ({state['split']})" if state.get("split") else "") + ", started "
               f"{state.get('started')}, log {state.get('log')}" if state.get("commit") else ""))
    if problem:
        head += f"; {problem}"
    if path is None:
        path = repo / DEFAULT_CAMPAIGN
        if not problem:
            head = f"no campaign has been started here (make campaign); {DEFAULT_CAMPAIGN}:"
    camp = load_campaign(path)
    grids = _grids(camp, repo)
    rows = item_states(camp, repo, grids)
    uncommitted = _uncommitted_runs(grids, rows, repo)
    counts: dict[str, int] = {}
    lines = [head]
    for item, st, detail in rows:
        if st == "running" and not alive:
            st = "partial"
        counts[st] = counts.get(st, 0) + 1
        if item in uncommitted:
            detail += "; not committed"
        lines.append(f"{st:8s} {item.name}" + (f"  [{detail}]" if detail else ""))
    lines.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    # the campaign's own split where it started one, else what a start here would take (never raises: status only)
    jobs = state.get("jobs") or camp.jobs or (measured_cpu_split() or (1, 0))[0]
    left = time_left(grids, rows, int(jobs))
    if left:
        lines.append(left)
    return lines
