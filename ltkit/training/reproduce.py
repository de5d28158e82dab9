"""Re-making a committed run on purpose, into a scratch folder, and saying how close it came.

``ltkit reproduce RUN_DIR`` (and ``reproduce = True`` in the run's notebook) trains the recorded
configuration (the same fingerprint, seed and precision: :func:`recorded_config`) into a scratch folder
outside ``results/`` (:func:`scratch_root`), never into the committed folder, then compares
(:func:`compare`): committed against reproduced balanced top-1 and many / medium / few, their
difference, and whether the reproduction lies within the method's seed spread (the committed seeds'
mean +- 2 standard deviations; with one seed, the run's own 95 % interval), with both provenances'
device, CPU, precision, threads, torch and commit side by side. A bf16 run re-made on a CPU without
native bf16 units, or on another CPU, is said so: bf16 arithmetic differs between kernels, so such a
reproduction is a check of the recipe, not of the bits.

``smoke`` (1 epoch, 2 steps) checks the pipeline only and says so: its numbers are not compared.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config.fields import ConfigError, RunConfig
from ..core.io import aside_stamp, atomic_write_json, read_json_or_empty
from ..core.layout import ALIAS, FINAL, METRICS, PROVENANCE, checkpoints_root, default_results_root, root_of
from ..runs.portable import resolve
from ..runs.provenance import now
from ..runs.records import SPEND, write_run
from ..runs.status import Status, load_metrics, run_status
from .check import make_config

SPLIT = "balanced"
COMPARED = ("top1", "many", "medium", "few")
REPORT = "reproduce.json"
SMOKE = {"epochs": 1, "max_steps": 2, "bootstrap": 100, "stage2_epochs": 1, "track_test": False}
_log = logging.getLogger(__name__)
SIDE_BY_SIDE = ("device_name", "cpu_model", "cpu_bf16_units", "precision", "threads", "torch", "commit")


class ReproduceError(ConfigError):
    """A run that cannot be reproduced as asked: the message says what is wrong and what to do."""


def recorded_config(run_dir: str | Path) -> RunConfig:
    """The configuration a finished run was made with (its provenance's parameters), checked: a folder that
    is not a run, an unfinished, failed or alias run, or a record whose parameters no longer give its
    fingerprint is a :class:`ReproduceError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReproduceError(f"{run_dir} is not a folder (give a run's results folder, e.g. "
                             "results/cao2019/cifar100_exp100/resnet32/ce/seed0)")
    if (run_dir / ALIAS).exists():
        target = read_json_or_empty(run_dir / ALIAS).get("alias_of", "its CE run")
        raise ReproduceError(f"{run_dir} is an alias of {target} (identical by construction): reproduce that run")
    if not (run_dir / PROVENANCE).exists() and not (run_dir / METRICS).exists():
        if (run_dir / SPEND).exists():  # what a campaign commits for a run in flight: its attempts so far
            raise ReproduceError(f"{run_dir} is not finished (only spend.json: it is training, or was stopped, in the "
                                 "checkpoints folder): nothing to reproduce; `ltkit grid run` (or the campaign) finishes it")
        raise ReproduceError(f"{run_dir} is not a run folder (no provenance.json or metrics.json; a run's folder is "
                             "results/<protocol>/<data>/<model>/<method>/seed<k>)")
    prov = read_json_or_empty(run_dir / PROVENANCE)
    if prov.get("status") == "failed":
        raise ReproduceError(f"{run_dir} is a failed run ({prov.get('error') or 'see its train.ipynb'}): nothing to "
                             "reproduce; `ltkit grid run` trains it")
    if run_status(run_dir) != Status.DONE:
        raise ReproduceError(f"{run_dir} is not finished (no complete metrics.json/complete.json): nothing to "
                             "reproduce; `ltkit grid run` (or the campaign) finishes it")
    try:
        cfg = make_config(prov["parameters"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReproduceError(f"{run_dir}: its provenance's parameters are not a configuration this ltkit "
                             f"accepts ({exc}); reproduce it with the commit that made it "
                             f"({(prov.get('git') or {}).get('commit', 'unknown')})") from None
    recorded = read_json_or_empty(run_dir / "complete.json").get("fingerprint") or prov.get("fingerprint")
    if recorded and cfg.fingerprint() != recorded:
        raise ReproduceError(f"{run_dir}: its parameters give fingerprint {cfg.fingerprint()}, its record says "
                             f"{recorded}: this ltkit would train another configuration; reproduce it with the "
                             f"commit that made it ({(prov.get('git') or {}).get('commit', 'unknown')})")
    return cfg


def variant(smoke: bool = False, epochs: int | None = None) -> str:
    return "smoke" if smoke else (f"epochs{epochs}" if epochs else "full")


def scratch_root(smoke: bool = False, epochs: int | None = None, out: str | Path | None = None,
                 run_dir: str | Path | None = None) -> Path:
    """Where reproductions train: ``out``, else ``<checkpoints root>/reproduce/<full|smoke|epochsN>`` (one folder
    per variant, so a stage two finds the stage one reproduced with the same options). Never inside the
    results root: a reproduction must not be mistaken for, or overwrite, a committed run."""
    root = Path(out) if out else checkpoints_root() / "reproduce" / variant(smoke, epochs)
    r = root.resolve()
    for results in {default_results_root().resolve(), *([root_of(run_dir).resolve()] if run_dir else [])}:
        if r == results or results in r.parents:
            raise ReproduceError(f"--out {root} lies inside the results folder {results}: a reproduction goes to a "
                                 "scratch folder (default: under the checkpoints root)")
    return root


@dataclass
class Reproduction:
    """Where a reproduction writes: its results folder and its checkpoint folder under the scratch root."""

    run_dir: Path
    cfg: RunConfig
    output_dir: Path
    checkpoint_dir: Path
    smoke: bool
    epochs: int | None


def plan(run_dir: str | Path, smoke: bool = False, epochs: int | None = None,
         out: str | Path | None = None) -> Reproduction:
    """Check the run and lay out its reproduction (nothing written). A stage two needs its stage one reproduced
    first, with the same options (its ``final.pt`` in the same scratch root)."""
    run_dir = Path(run_dir)
    cfg = recorded_config(run_dir)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ReproduceError(f"--epochs {epochs!r}: accepted: an integer >= 1")
    changes: dict[str, Any] = dict(SMOKE) if smoke else ({"epochs": epochs} if epochs else {})
    if cfg.data_root and not Path(os.path.expandvars(cfg.data_root)).is_absolute():  # recorded relative to the checkout
        changes["data_root"] = str(resolve(cfg.data_root))
    if changes:
        cfg = make_config({**cfg.to_dict(), **changes})
    root = scratch_root(smoke, epochs, out, run_dir)
    rp = cfg.run_path()
    rep = Reproduction(run_dir, cfg, root / "results" / rp, root / "checkpoints" / rp, smoke, epochs)
    if cfg.stage1:
        s1 = root / "checkpoints" / cfg.stage1_path() / FINAL
        if not s1.exists():
            opts = " --smoke" if smoke else (f" --epochs {epochs}" if epochs else "")
            raise ReproduceError(f"{run_dir} is a stage two ({cfg.procedure}) of {cfg.stage1!r}: reproduce its stage one "
                                 f"first: ltkit reproduce {run_dir.parent.parent / cfg.stage1 / run_dir.name}{opts}"
                                 + (f" --out {out}" if out else ""))
    return rep


def train(rep: Reproduction, progress: bool = True, ds=None):
    """Train the reproduction into its scratch folders (resumable there, like any run) and write its files."""
    from .checkpoint import CheckpointMismatch
    from .pipeline import run

    start, t0 = now(), time.perf_counter()
    try:
        result = run(rep.cfg, ckpt_dir=rep.checkpoint_dir, progress=progress, ds=ds)
    except CheckpointMismatch:  # the scratch folder holds an earlier reproduction of another configuration
        aside = rep.checkpoint_dir.with_name(f"{rep.checkpoint_dir.name}.replaced-{aside_stamp()}")
        os.replace(rep.checkpoint_dir, aside)
        _log.warning(f"{rep.checkpoint_dir} held the checkpoint of another configuration (an earlier ltkit or "
                     f"options): set aside as {aside.name}; training afresh")
        result = run(rep.cfg, ckpt_dir=rep.checkpoint_dir, progress=progress, ds=ds)
    write_run(rep.output_dir, result, start, time.perf_counter() - t0)
    return result


def _seed_spread(run_dir: Path, key: str) -> tuple[float, float, str] | None:
    """The committed seeds' mean +- 2 std of ``key`` (two or more finished seeds of this method), else None."""
    vals = []
    for d in sorted(run_dir.parent.glob("seed*")):
        m = load_metrics(d) if run_status(d) == Status.DONE else None
        if m and isinstance(m.get(key), (int, float)):
            vals.append(float(m[key]))
    if len(vals) < 2:
        return None
    mean, sd = float(np.mean(vals)), float(np.std(vals, ddof=1))
    return mean - 2 * sd, mean + 2 * sd, f"committed seeds' mean +- 2 std ({len(vals)} seeds: {mean:.4f} +- {2 * sd:.4f})"


def _side(prov: dict[str, Any]) -> dict[str, Any]:
    params = prov.get("parameters") or {}
    return {"device_name": prov.get("device_name"), "cpu_model": prov.get("cpu_model"),
            "cpu_bf16_units": prov.get("cpu_bf16_units"), "precision": params.get("precision"),
            "threads": prov.get("threads"), "torch": prov.get("torch"), "commit": (prov.get("git") or {}).get("commit")}


def compare(run_dir: str | Path, reproduced_dir: str | Path, smoke: bool = False,
            epochs: int | None = None) -> dict[str, Any]:
    """Committed against reproduced (see the module's docstring); ``verdict``: inside, outside or smoke."""
    run_dir, reproduced_dir = Path(run_dir), Path(reproduced_dir)
    a, b = load_metrics(run_dir) or {}, load_metrics(reproduced_dir) or {}
    rows = {}
    for g in COMPARED:
        k = f"{SPLIT}.{g}"
        if isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float)):
            rows[g] = {"committed": float(a[k]), "reproduced": float(b[k]), "difference": float(b[k]) - float(a[k])}
    key = f"{SPLIT}.top1"
    spread = _seed_spread(run_dir, key)
    if spread is None:
        lo, hi = a.get(f"{key}_ci_low"), a.get(f"{key}_ci_high")
        spread = (float(lo), float(hi), "the run's own 95% interval (one committed seed)") if lo is not None else \
            (-math.inf, math.inf, "none (no seeds to compare with, no interval)")
    lo, hi, how = spread
    got = rows.get("top1", {}).get("reproduced")
    if smoke:
        verdict = "smoke"
    elif epochs:
        verdict = "shortened"
    else:
        verdict = "inside" if got is not None and lo <= got <= hi else "outside"
    pa, pb = read_json_or_empty(run_dir / PROVENANCE), read_json_or_empty(reproduced_dir / PROVENANCE)
    sa, sb = _side(pa), _side(pb)
    notes = []
    if sa["precision"] == "bf16" and not sb["cpu_bf16_units"] and not pb.get("cuda"):
        notes.append("a bf16 run reproduced on a CPU without native bf16 units (emulated bf16: other rounding)")
    if sa["precision"] != sb["precision"]:
        notes.append(f"precision differs: committed {sa['precision']}, reproduced {sb['precision']}")
    if (sa["cpu_model"], sa["device_name"]) != (sb["cpu_model"], sb["device_name"]):
        notes.append(f"another device: committed {sa['device_name']} / {sa['cpu_model']}, reproduced "
                     f"{sb['device_name']} / {sb['cpu_model']} (bf16 and threaded kernels differ between machines)")
    if sa["threads"] != sb["threads"]:
        notes.append(f"threads differ ({sa['threads']} vs {sb['threads']}): floating-point sums are ordered differently")
    if smoke:
        notes.insert(0, "smoke check of the pipeline (1 epoch, 2 steps), not a reproduction: the numbers are not compared")
    elif epochs:
        notes.insert(0, f"shortened to {epochs} epoch(s): a check of the recipe's start, not a reproduction")
    return {"run": str(run_dir), "reproduced": str(reproduced_dir), "verdict": verdict, "split": SPLIT,
            "metrics": rows, "spread": {"low": lo, "high": hi, "from": how},
            "provenance": {"committed": sa, "reproduced": sb}, "notes": notes, "written": now()}


def write_report(report: dict[str, Any], reproduced_dir: str | Path) -> Path:
    """``reproduce.json`` beside the reproduction's output."""
    path = Path(reproduced_dir) / REPORT
    atomic_write_json(path, report)
    return path


def report_lines(report: dict[str, Any]) -> list[str]:
    """The comparison as text (what the CLI prints and the notebook shows)."""
    lines = [f"committed:  {report['run']}", f"reproduced: {report['reproduced']}", ""]
    lines.append(f"{'':8s} {'committed':>10s} {'reproduced':>11s} {'difference':>11s}   ({report['split']} test set)")
    for g, r in report["metrics"].items():
        lines.append(f"{g:8s} {r['committed']:10.4f} {r['reproduced']:11.4f} {r['difference']:+11.4f}")
    s = report["spread"]
    lines.append(f"spread:  [{s['low']:.4f}, {s['high']:.4f}] from {s['from']}")
    verdict = {"inside": "INSIDE the spread: reproduced", "outside": "OUTSIDE the spread: not reproduced",
               "smoke": "smoke check only: the pipeline runs (not a reproduction)",
               "shortened": "shortened run: not compared with the spread"}[report["verdict"]]
    lines += [f"verdict: {verdict}", ""]
    lines.append(f"{'':16s} {'committed':34s} reproduced")
    c, r = report["provenance"]["committed"], report["provenance"]["reproduced"]
    for k in SIDE_BY_SIDE:
        lines.append(f"{k:16s} {str(c.get(k)):34s} {r.get(k)}")
    lines += [f"note: {n}" for n in report["notes"]]
    return lines

