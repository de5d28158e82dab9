"""``ltkit`` command line: grids (list / run / status), data packing, notebook preparation.

    ltkit grid list   configs/demo.yaml
    ltkit grid run    configs/demo.yaml [--force] [--no-dedupe] [--jobs N] [--executor local|slurm|submitit-local|debug]
    ltkit grid status configs/demo.yaml
    ltkit grid record configs/cao2019-cifar100-if100.yaml   # notebooks of runs trained packed (CPU)
    ltkit data pack   --src ../shared/data --out .gpu_data/cao --protocol cao2019
    ltkit data inspect --src path/to/my_images    # one sub-folder per class: counts, IF, bad files
    ltkit data subsets --out book/data/cao2019_subsets.json   # Cao et al.'s CIFAR-LT image lists
    ltkit grid plan   configs/thesis.yaml         # runs to do, projected GPU-hours per backbone, disk
    ltkit grid smoke  configs/thesis.yaml         # every model x method for 2 steps on the real data
    ltkit fetch       configs/thesis.yaml         # weights and data into the caches (a login node with internet)
    ltkit reproduce results/cao2019/cifar100_exp100/resnet32/ce/seed0 [--smoke | --epochs N] [--out DIR]
    ltkit results portable [--check]              # committed records name no folder of the machine that made them
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from typing import Any

import yaml


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from .config import ConfigError
    from .core.io import yaml_load

    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"bad value for --set: {p!r} (accepted: key=value, e.g. --set epochs=3)")
        k, v = p.split("=", 1)
        try:
            out[k] = yaml_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"bad value for --set {k}: {v!r} (accepted: a YAML scalar, list or mapping)") from None
    return out


def _int_list(text: str, what: str) -> set[int]:
    from .config import ConfigError

    try:
        out = {int(x) for x in text.split(",")}
    except ValueError:
        raise ConfigError(f"bad value for {what}: {text!r} (accepted: comma-separated integers, e.g. 0,1,2)") from None
    if any(x < 0 for x in out):
        raise ConfigError(f"bad value for {what}: {text!r} (accepted: integers >= 0)")
    return out


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return v


class _TqdmHandler(logging.Handler):
    """Log records written through ``tqdm.write``, so they never cut a progress bar in half."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill the run
            self.handleError(record)


def setup_logging(level: str) -> None:
    """The library logs through stdlib ``logging`` (one logger per module); the CLI shows them on stderr."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("ltkit")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


LOG_LEVELS = ("debug", "info", "warning", "error")


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``ltkit ... | head``): poll reports POLLERR then."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """The ``ltkit`` command. A reader that stops early (``ltkit campaign status | head``) ends it quietly, as
    it ends any Unix tool (exit 141, 128 + SIGPIPE, what a shell reports for one), not with a traceback; a
    broken pipe anywhere else is a real error and is raised."""
    import os

    try:
        rc = _dispatch(argv)
        sys.stdout.flush()  # what is still buffered is written here, inside the handler, not at interpreter exit
        return rc
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush finds no pipe
        return 141


def _dispatch(argv: list[str] | None) -> int:
    from .grid.executors import EXECUTORS

    ap = argparse.ArgumentParser(prog="ltkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="how much the library logs (default: info)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="list, run or report a grid of runs")
    g.add_argument("action", choices=["list", "run", "status", "record", "plan", "smoke"],
                   help="record: execute the notebooks of finished packed runs that lack one (CPU); plan: runs to do and "
                        "their projected GPU-hours and disk; smoke: every model x method for 2 steps on the real data")
    g.add_argument("grid", help="grid YAML file (configs/*.yaml)")
    g.add_argument("--force", action="store_true", help="re-run finished runs")
    g.add_argument("--no-dedupe", action="store_true", help="also train runs that are identical to CE by construction")
    g.add_argument("--jobs", type=_positive_int, default=None,
                   help="concurrent runs (default: one per GPU slot; on a CPU the split `make bench` measured best, else 1)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU: threads per run (default: cores // jobs, or OMP_NUM_THREADS); jobs x threads <= cores")
    g.add_argument("--executor", choices=EXECUTORS.names(), default="local",
                   help="; ".join(f"{k}: {EXECUTORS.info(k).description}" for k in EXECUTORS.names()))
    g.add_argument("--results", default=None, help="results folder (default: the grid's)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field for every run, e.g. --set epochs=1")
    g.add_argument("--slurm-log-dir", default=None)
    g.add_argument("--pack", default=None, metavar="auto|off|N",
                   help="train compatible small runs as one packed model (default: the grid's 'pack', auto)")
    g.add_argument("--tensorboard", action="store_true",
                   help="write per-epoch TensorBoard scalars beside each run's checkpoint (tensorboard --logdir checkpoints)")
    g.add_argument("--no-notebooks", action="store_true",
                   help="run: leave the packed runs' notebooks to `ltkit grid record` (on a GPU lent by the minute)")
    g.add_argument("--only", default=None, help="comma-separated method names to keep")
    g.add_argument("--seeds", default=None, help="comma-separated seeds to keep")
    c = sub.add_parser("campaign", help="a long queue of runs trained in the background (the CPU campaign)")
    c.add_argument("action", choices=["start", "status", "stop", "run"],
                   help="start: detached from a worktree of HEAD; status: done / running / queued; stop: at the next "
                        "epoch boundary; run: the driver itself (what start launches)")
    c.add_argument("campaign", nargs="?", default=None, help="campaign YAML (configs/campaign-cpu.yaml)")
    c.add_argument("--jobs", type=_positive_int, default=None, help="concurrent runs (default: the campaign's)")
    c.add_argument("--threads", type=_positive_int, default=None, help="threads per run (default: the campaign's)")
    c.add_argument("--home", default=None, help="run: the checkout whose results folders receive the runs")
    c.add_argument("--commit", default=None, help="start: the commit to train from (default: HEAD)")
    c.add_argument("--timeout", type=float, default=600.0, help="stop: seconds to wait for the runs to stop")
    f = sub.add_parser("fetch", help="download a grid's pretrained weights and data into the caches its runs read "
                                     "(on a machine with internet, for compute nodes without it)")
    f.add_argument("grid", help="grid YAML file (configs/thesis.yaml)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for grid run")
    r = sub.add_parser("reproduce", help="re-make a committed run into a scratch folder and compare it with the record")
    r.add_argument("run_dir", help="a finished run's results folder, e.g. results/cao2019/cifar100_exp100/resnet32/ce/seed0")
    r.add_argument("--smoke", action="store_true", help="1 epoch of 2 steps: a check of the pipeline, not a reproduction")
    r.add_argument("--epochs", type=_positive_int, default=None, help="a shortened run of N epochs (not compared)")
    r.add_argument("--out", default=None, help="scratch folder (default: <checkpoints root>/reproduce/<full|smoke|epochsN>)")
    s = sub.add_parser("results", help="committed results: make their records portable, or check that they are")
    s.add_argument("action", choices=["portable"],
                   help="portable: rewrite machine paths in provenance and notebooks (the one-off migration of issue #36)")
    s.add_argument("root", nargs="?", default=None, help="results folder (default: the checkout's results/)")
    s.add_argument("--check", action="store_true", help="change nothing; list what still names a machine path (exit 1)")
    d = sub.add_parser("data", help="data utilities")
    d.add_argument("action", choices=["pack", "inspect", "subsets"],
                   help="pack: a CIFAR subset for a GPU box; inspect: count (and cache) a folder of class folders; "
                        "subsets: write the (class, rank) lists of Cao et al.'s CIFAR-LT subsets with their SHA256")
    d.add_argument("--src", help="pack: the npz root; inspect: the folder with one sub-folder per class")
    d.add_argument("--out", help="pack: output folder")
    d.add_argument("--image-size", type=int, default=64, help="inspect: the size images are cached at")
    d.add_argument("--dataset", default="cifar100")
    d.add_argument("--protocol", action="append", help="pack: cao2019 or thesis (repeatable)")
    d.add_argument("--imb-factor", type=float, default=100)
    d.add_argument("--subset-seed", type=int, action="append", default=None,
                   help="pack: cao2019's subset draw(s) to include (repeatable; default 0, Cao et al.'s own images)")
    d.add_argument("--no-test", action="store_true", help="leave the test images out of the pack")
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    verb = VERBS.get((args.cmd, getattr(args, "action", None))) or VERBS[(args.cmd, None)]
    return verb(args)


def _data_inspect(args: argparse.Namespace) -> int:
    """``ltkit data inspect --src DIR``."""
    return _inspect(args.src, args.image_size)


def _data_subsets(args: argparse.Namespace) -> int:
    """``ltkit data subsets --out FILE``: Cao et al.'s CIFAR-LT (class, rank) lists with their SHA256."""
    from .data.bundle import write_cao2019_subsets

    if not args.out:
        print("ltkit: data subsets needs --out (a .json file)", file=sys.stderr)
        return 2
    for key, entry in write_cao2019_subsets(args.out)["settings"].items():
        print(f"{key}: {entry['total']} images, sha256 {entry['sha256']}")
    return 0


def _data_pack(args: argparse.Namespace) -> int:
    """``ltkit data pack``: a protocol's CIFAR subset (every subset draw asked for) as one file for a GPU box."""
    from .data.bundle import pack_subset

    if not (args.src and args.out and args.protocol):
        print("ltkit: data pack needs --src, --out and --protocol", file=sys.stderr)
        return 2
    subset_seeds = args.subset_seed or [0]
    if any(x < 0 for x in subset_seeds):
        print(f"ltkit: bad value for --subset-seed: {subset_seeds} (accepted: integers >= 0)", file=sys.stderr)
        return 2
    specs = [{"protocol": p, "imb_factor": args.imb_factor, **({"subset_seed": s} if p == "cao2019" else {})}
             for p in args.protocol for s in (subset_seeds if p == "cao2019" else [0])]
    print(pack_subset(args.src, args.dataset, args.out, specs, test=not args.no_test))
    return 0


def _selected_grid(args: argparse.Namespace):
    """The grid a ``grid`` verb works on: the file with ``--set``, ``--results``, ``--pack``, then ``--only`` /
    ``--seeds`` (each checked against what the grid holds). Raises ConfigError naming a bad value."""
    from .config import ConfigError
    from .grid.spec import check_pack, load_grid

    overrides = _overrides(args.set)
    if getattr(args, "tensorboard", False):
        overrides["tensorboard"] = True
    grid = load_grid(args.grid, overrides, args.results)
    if args.pack is not None:
        grid.pack = check_pack(args.pack)
    if args.only:
        keep = set(args.only.split(","))
        known = sorted({r.method for r in grid.runs})
        if not keep <= set(known):
            raise ConfigError(f"bad value for --only: {', '.join(sorted(keep - set(known)))} "
                              f"(accepted: {', '.join(known)})")
        grid.runs = [r for r in grid.runs if r.method in keep]
    if args.seeds:
        seeds = _int_list(args.seeds, "--seeds")
        known_seeds = sorted({r.seed for r in grid.runs})
        if not seeds <= set(known_seeds):
            raise ConfigError(f"bad value for --seeds: {', '.join(map(str, sorted(seeds - set(known_seeds))))} "
                              f"(accepted: the grid's seeds {', '.join(map(str, known_seeds))})")
        grid.runs = [r for r in grid.runs if r.seed in seeds]
    return grid


def _grid_verb(body):
    """A ``grid`` verb: ``body(grid, args)`` on the selected grid; a bad grid or flag is one line, exit 2."""
    import functools

    @functools.wraps(body)
    def verb(args: argparse.Namespace) -> int:
        from .config import ConfigError

        try:
            grid = _selected_grid(args)
        except ConfigError as exc:
            print(f"ltkit: {exc}", file=sys.stderr)
            return 2
        return body(grid, args)

    return verb


@_grid_verb
def _grid_list(grid, args: argparse.Namespace) -> int:
    """``ltkit grid list``: every run of the grid and its status (an alias names the CE run it stands for)."""
    from .grid.plan import plan
    from .runs.status import Status

    for cfg, status, target in plan(grid, not args.no_dedupe):
        alias = f"  (= {target.run_path()})" if target is not None and status == Status.MISSING else ""
        print(f"{status:8s} {cfg.run_path()}{alias}")
    print(f"{len(grid.runs)} runs in {grid.name}")
    return 0


@_grid_verb
def _grid_status(grid, args: argparse.Namespace) -> int:
    """``ltkit grid status``: done / running (epoch) / partial / failed / missing per run, counts, and the spend."""
    from .grid.plan import forced_note, plan, progress, spend_line
    from .grid.submitit import executor_status
    from .runs.status import Status

    rows = plan(grid, not args.no_dedupe)
    extra = executor_status(grid)
    counts: Counter[str] = Counter()
    for cfg, status, target in rows:
        st = status if status in (Status.DONE, Status.ALIAS) else extra.get(cfg.run_path(), status)
        if st == Status.MISSING and target is not None:
            st = "to-alias"
        counts[st] += 1
        detail = progress(grid, cfg) if st in (Status.RUNNING, Status.PARTIAL, Status.FAILED) else ""
        if st in (Status.DONE, Status.STALE):
            detail = forced_note(grid, cfg)
        print(f"{st:9s} {cfg.run_path()}" + (f"  [{detail}]" if detail else ""))
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(spend_line(grid))
    return 0


@_grid_verb
def _grid_record(grid, args: argparse.Namespace) -> int:
    """``ltkit grid record``: execute the notebooks of finished packed runs that lack one (on a CPU)."""
    from .grid.execute import record_notebooks

    rec = record_notebooks(grid, jobs=args.jobs)
    print(f"notebooks executed {len(rec['done'])}, failed {len(rec['failed'])}, busy {len(rec['busy'])}")
    return 1 if rec["failed"] else 0


@_grid_verb
def _grid_run(grid, args: argparse.Namespace) -> int:
    """``ltkit grid run``: train what is not done (exit 0; 1: failed or stale runs; 130: interrupted, resumable)."""
    from .config import ConfigError
    from .grid.executors import EXECUTORS

    execute = EXECUTORS.get(args.executor)
    try:
        res = execute(grid, force=args.force, dedupe=not args.no_dedupe, jobs=args.jobs, threads=args.threads,
                      notebooks=not args.no_notebooks, log_dir=args.slurm_log_dir)
    except ConfigError as exc:
        print(f"ltkit: {exc}", file=sys.stderr)
        return 2
    if args.executor != "local":
        print(f"submitted {res['submitted']}, aliased {res['aliased']}, failed {len(res['failed'])}")
        for p in res["failed"]:
            print(f"  failed: {p}", file=sys.stderr)
        return 1 if res.get("failed") else 0
    summary = res
    print(", ".join(f"{k} {len(summary[k])}" for k in ("done", "skipped", "aliased", "failed", "stale", "interrupted", "busy")))
    if summary["interrupted"]:
        print(f"interrupted: {len(summary['interrupted'])} run(s) not finished; finished runs are kept and the same "
              "command resumes the rest from their last epoch", file=sys.stderr)
        return 130
    if summary["stale"]:
        print("stale runs (made with another configuration than the grid's now; kept as they are, not reused): "
              "re-run them with --force", file=sys.stderr)
        for p in summary["stale"]:
            print(f"  {p}", file=sys.stderr)
        return 1
    if summary["no_notebook"]:
        print(f"{len(summary['no_notebook'])} packed run(s) finished without their notebook: "
              f"`ltkit grid record {args.grid}` executes them", file=sys.stderr)
    if summary["failed"]:
        print("failed runs (their executed notebooks keep the traceback):", file=sys.stderr)
        for p in summary["failed"]:
            print(f"  {p}", file=sys.stderr)
        return 1
    return 0


@_grid_verb
def _grid_plan(grid, args: argparse.Namespace) -> int:
    """``ltkit grid plan``: what is left and what it will cost (GPU-hours per backbone, disk), before any spend."""
    from .grid.cost import cost_lines, grid_cost

    print("\n".join(cost_lines(grid_cost(grid))))
    return 0


@_grid_verb
def _grid_smoke(grid, args: argparse.Namespace) -> int:
    """``ltkit grid smoke``: every model x method for 2 steps on the real data; one line per failure (exit 1)."""
    from .grid.cost import smoke

    failed = smoke(grid)
    for what, why in failed:
        print(f"FAILED {what}: {why}", file=sys.stderr)
    n = len({(r.model, r.method, r.data_tag()) for r in grid.runs})
    print(f"smoke pass of {grid.name}: {n - len(failed)} of {n} model x method x data combinations ran 2 steps"
          + (f"; {len(failed)} failed (above): fix them before the real runs" if failed else ""))
    return 1 if failed else 0


def _fetch(args: argparse.Namespace) -> int:
    """``ltkit fetch GRID``: every pretrained weight and data set the grid's runs need, into the caches they read,
    verified; one table (what, where, size, status, how verified). Exit 1 when anything is missing."""
    import dataclasses
    import time

    from .config import ConfigError
    from .core.io import atomic_write_json
    from .core.layout import default_data_root, user_cache
    from .data.sources import fetch_data
    from .grid.spec import load_grid
    from .models import weights

    try:
        grid = load_grid(args.grid, _overrides(args.set))
    except ConfigError as exc:
        print(f"ltkit: {exc}", file=sys.stderr)
        return 2
    rows = [weights.fetch(m) for m in sorted({r.model for r in grid.runs if r.pretrained})]
    rows += [fetch_data(d, root or default_data_root()) for d, root in sorted({(r.dataset, r.data_root or "")
                                                                                for r in grid.runs})]
    print(f"{'what':58s} {'status':11s} {'MB':>8s}  where / verified")
    for r in rows:
        print(f"{r.what:58s} {r.status:11s} {r.size / 1e6:8.1f}  {r.where}" + (f"  [{r.verified}]" if r.verified else "")
              + (f"  {r.detail}" if r.detail else ""))
    record = user_cache() / "fetch" / f"{grid.name}.json"  # what was fetched, verified how (Hub revisions included)
    if any(r.status in ("cached", "downloaded") for r in rows):  # offline with nothing in place: nothing written
        atomic_write_json(record, {"grid": str(args.grid), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "items": [dataclasses.asdict(r) for r in rows]})
    bad = [r for r in rows if r.status not in ("cached", "downloaded")]
    print(f"{len(rows) - len(bad)} of {len(rows)} in place" + (f"; {len(bad)} not: see above" if bad else
                                                                  "; `ltkit grid run` can run offline now")
          + (f" (recorded in {record})" if record.exists() else ""))
    return 1 if bad else 0


def _grid_fingerprint_problem(run_dir, fingerprint: str) -> str | None:
    """Why a committed run no longer matches the grid in configs/ that holds it (None: it does, or no grid does)."""
    from pathlib import Path

    from .config import ConfigError
    from .core.layout import home
    from .grid.spec import load_grid

    run_dir = Path(run_dir).resolve()
    for path in sorted((home() / "configs").glob("*.yaml")):
        try:
            grid = load_grid(path)
        except (ConfigError, OSError, ValueError):
            continue  # a campaign file or another kind of YAML
        for cfg in grid.runs:
            if grid.run_dir(cfg).resolve() == run_dir and cfg.fingerprint() != fingerprint:
                return (f"{run_dir} no longer matches its grid {path.name} (the grid now gives fingerprint "
                        f"{cfg.fingerprint()}, the run was made as {fingerprint}): it is stale; "
                        f"`ltkit grid run configs/{path.name} --force --only {cfg.method} --seeds {cfg.seed}` re-trains it")
    return None


def _reproduce(args: argparse.Namespace) -> int:
    """``ltkit reproduce RUN_DIR``: train the recorded configuration into a scratch folder and compare (exit 0: inside
    the method's seed spread; 1: outside; 2: bad input, nothing written)."""
    from .config import ConfigError
    from .core.layout import default_data_root
    from .grid.plan import preflight
    from .training import reproduce as reproducing

    try:
        rep = reproducing.plan(args.run_dir, smoke=args.smoke, epochs=args.epochs, out=args.out)
        problem = _grid_fingerprint_problem(args.run_dir, reproducing.recorded_config(args.run_dir).fingerprint())
        if problem:
            raise ConfigError(problem)
        preflight([rep.cfg], default_data_root())
    except ConfigError as exc:
        print(f"ltkit: {str(exc).removeprefix('cannot start the grid: ')}", file=sys.stderr)
        return 2
    what = "smoke check (1 epoch, 2 steps) of" if args.smoke else "reproducing"
    print(f"{what} {args.run_dir} into {rep.output_dir}", flush=True)
    try:
        reproducing.train(rep)
    except KeyboardInterrupt:
        print(f"interrupted: the same command resumes from {rep.checkpoint_dir}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a reproduction that fails to train did not reproduce: one line, exit 1
        print(f"ltkit: the reproduction failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    report = reproducing.compare(args.run_dir, rep.output_dir, rep.smoke, rep.epochs)
    path = reproducing.write_report(report, rep.output_dir)
    print("\n".join(reproducing.report_lines(report)))
    print(f"written: {path}")
    return 1 if report["verdict"] == "outside" else 0


def _results(args: argparse.Namespace) -> int:
    """``ltkit results portable [ROOT] [--check]``: every committed run's provenance and notebook without the
    machine paths of the checkout that made it (issue #36's migration; changes path strings only)."""
    import json
    from pathlib import Path

    from .core.layout import NOTEBOOK, default_results_root
    from .runs.portable import absolute_paths, make_run_portable

    root = Path(args.root) if args.root else default_results_root()
    runs = sorted({p.parent for name in ("provenance.json", "train.ipynb") for p in root.rglob(name)})
    template = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    bad = 0
    for run_dir in runs:
        if args.check:
            found = absolute_paths(run_dir)
            bad += bool(found)
            for f in found:
                print(f"{run_dir}: {f}")
        else:
            for f in make_run_portable(run_dir, template=template):
                print(f"made portable: {f}")
    print(f"{len(runs)} run folder(s) under {root}" + (f"; {bad} name a machine path" if args.check else ""))
    return 1 if bad else 0


def _campaign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import ConfigError
    from .grid import campaign

    try:
        if args.action == "status":
            print("\n".join(campaign.status_lines(args.campaign)))
            return 0
        if args.action == "stop":
            msg = campaign.stop(timeout=args.timeout)
            print(msg)
            return 1 if campaign.STILL_STOPPING in msg else 0
        if not args.campaign:
            print(f"ltkit: campaign {args.action} needs a campaign file (e.g. configs/campaign-cpu.yaml)", file=sys.stderr)
            return 2
        if args.action == "start":
            st = campaign.start(args.campaign, commit=args.commit, jobs=args.jobs, threads=args.threads,
                                log_level=args.log_level)
            verb = "already running" if st.get("already_running") else "started"
            print(f"campaign {verb}: pid {st['pid']}, commit {st['commit'][:12]}, {st['jobs']} run(s) x {st['threads']} "
                  f"thread(s), log {st['log']}")
            if st.get("uncommitted_left_out") and not st.get("already_running"):
                print("note: uncommitted changes in ltkit/, notebooks/ or configs/ are not in the campaign (it trains "
                      "from the commit)", file=sys.stderr)
            if str(st.get("split", "")).startswith("unmeasured") and not st.get("already_running"):
                print(f"note: {st['split']}; which split of the cores trains most per hour differs between CPUs: "
                      "`python benchmarks/cpu.py --rounds 1` (about 10 minutes) measures this one into "
                      "benchmarks/results/cpu.json, which later starts use", file=sys.stderr)
            if st.get("without_data") and not st.get("already_running"):
                print(f"note: {len(st['without_data'])} run(s) of the queue will fail when reached, their data not "
                      f"under {st['data']}: {', '.join(st['without_data'])}", file=sys.stderr)
            return 0
        camp = campaign.load_campaign(args.campaign)
        if not (args.home and args.jobs and args.threads):
            print("ltkit: campaign run needs --home, --jobs and --threads (use `campaign start`)", file=sys.stderr)
            return 2
        return campaign.drive(camp, Path(args.home), args.jobs, args.threads, args.log_level)
    except ConfigError as exc:
        print(f"ltkit: {exc}", file=sys.stderr)
        return 2


def _inspect(src: str | None, image_size: int) -> int:
    """Counts per class, imbalance factor and unreadable files of a folder dataset; fills its cache."""
    import warnings

    import numpy as np

    from .data.folder import by_count, decode_folder
    from .data.splits import DataError

    if not src:
        print("ltkit: data inspect needs --src (a folder with one sub-folder per class)", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, labels, names, skipped = decode_folder(src, image_size)
    except DataError as exc:
        print(f"ltkit: {exc}", file=sys.stderr)
        return 2
    counts = np.bincount(labels, minlength=len(names))
    order = by_count(counts, names)
    print(f"{len(names)} classes, {int(counts.sum())} readable images at {image_size}x{image_size} (cached)")
    print(f"imbalance factor (largest / smallest class): {counts.max() / counts.min():.1f}")
    for i in order:
        print(f"  {counts[i]:7d}  {names[i]}")
    if skipped:
        print(f"{len(skipped)} unreadable file(s) skipped:")
        for f in skipped:
            print(f"  {f}")
    return 0


# One entry per verb: (command, action) -> its function; (command, None) for a command whose verbs one function takes.
VERBS = {
    ("grid", "list"): _grid_list, ("grid", "status"): _grid_status, ("grid", "run"): _grid_run,
    ("grid", "record"): _grid_record, ("grid", "plan"): _grid_plan, ("grid", "smoke"): _grid_smoke,
    ("data", "pack"): _data_pack, ("data", "inspect"): _data_inspect, ("data", "subsets"): _data_subsets,
    ("campaign", None): _campaign, ("reproduce", None): _reproduce, ("fetch", None): _fetch, ("results", None): _results,
}


if __name__ == "__main__":
    sys.exit(main())
