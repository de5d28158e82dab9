"""What a grid will cost before it spends it (``ltkit grid plan``), and a smoke pass over all of it first
(``ltkit grid smoke``).

The GPU-hours are projected, per backbone, from the committed throughput benchmark (``make bench`` on a GPU:
training images/s of ltkit's own loop, with the GPU it was measured on) times each run's epochs x training
images x trainings; a backbone that benchmark has not measured is said so, never guessed. Evaluation (a
validation pass per epoch, the test sets once) is not in the projection: it is forward only, on fewer images.
Disk: per run the checkpoint (``last.pt``: weights and optimiser state; ``final.pt``: weights) and the results
folder (the committed runs' mean size, else an estimate named as such).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..config.fields import RunConfig
from ..core.layout import REPO
from ..runs.status import Status
from .plan import expected_counts, plan
from .spec import Grid

THROUGHPUT = REPO / "benchmarks" / "results" / "throughput_eager.json"
RESULTS_MB_FALLBACK = 0.5  # a run folder without figures of its own (notebook, metrics, predictions): about this
_log = logging.getLogger(__name__)


def throughput(path: Path | None = None) -> tuple[dict[str, float], str | None]:
    """({model: training images/s of ltkit's loop}, the device it was measured on) from the benchmark file."""
    try:
        doc = json.loads(Path(path or THROUGHPUT).read_text())
    except (OSError, ValueError):
        return {}, None
    rates = {m: float(r["ltkit_img_s"]) for m, r in (doc.get("models") or {}).items() if r.get("ltkit_img_s")}
    return rates, doc.get("device")


def _results_mb(results: Path) -> float | None:
    """The mean size (MB) of the finished run folders under ``results`` (None: none yet)."""
    sizes = [sum(f.stat().st_size for f in m.parent.iterdir() if f.is_file()) for m in results.rglob("complete.json")]
    return sum(sizes) / len(sizes) / 1e6 if sizes else None


def _checkpoint_mb(cfg: RunConfig) -> float:
    """``last.pt`` (weights + optimiser state: SGD's momentum one copy, Adam's moments two) + ``final.pt`` (weights)."""
    from ..data import SOURCES
    from ..models.facts import model_facts

    k = SOURCES.info(cfg.dataset).num_classes or 10
    params = model_facts(cfg.model, k, cfg.image_size or 32, cfg.classifier or "linear", cfg.model_params)["parameters"]
    states = 2 if cfg.optimizer == "adam" else 1
    return params * 4 * (1 + states + 1) / 1e6


def grid_cost(grid: Grid, bench: Path | None = None) -> dict[str, Any]:
    """Runs to do / done / aliased, and per backbone the projected GPU-hours and disk of the runs to do."""
    from ..training.procedures import PROCEDURES

    rows = plan(grid)
    rates, device = throughput(bench)
    done = [c for c, st, t in rows if st == Status.DONE]
    aliased = [c for c, st, t in rows if st == Status.ALIAS or (t is not None and st == Status.MISSING)]
    todo = [c for c, st, t in rows if c not in done and c not in aliased]
    measured_mb = _results_mb(grid.results)
    per_model: dict[str, dict[str, Any]] = {}
    for cfg in todo:
        m = per_model.setdefault(cfg.model, {"runs": 0, "images": 0, "checkpoint_mb": 0.0, "results_mb": 0.0})
        counts = expected_counts(cfg)
        trainings = PROCEDURES.info(cfg.procedure).trainings
        m["runs"] += 1
        m["images"] += int(counts.sum()) * int(cfg.epochs) * trainings if counts is not None else 0
        m["checkpoint_mb"] += _checkpoint_mb(cfg)
        m["results_mb"] += measured_mb or RESULTS_MB_FALLBACK
    for model, m in per_model.items():
        m["img_s"] = rates.get(model)
        m["gpu_hours"] = m["images"] / rates[model] / 3600 if model in rates else None
    known = [m["gpu_hours"] for m in per_model.values() if m["gpu_hours"] is not None]
    return {"grid": grid.name, "runs": len(rows), "done": len(done), "aliased": len(aliased), "todo": len(todo),
            "device": device, "per_model": per_model, "gpu_hours": sum(known) if known else 0.0,
            "unmeasured": sorted(m for m, v in per_model.items() if v["gpu_hours"] is None),
            "checkpoint_gb": sum(m["checkpoint_mb"] for m in per_model.values()) / 1e3,
            "results_gb": sum(m["results_mb"] for m in per_model.values()) / 1e3,
            "results_mb_per_run": measured_mb or RESULTS_MB_FALLBACK, "results_mb_measured": measured_mb is not None}


def cost_lines(cost: dict[str, Any]) -> list[str]:
    """What ``ltkit grid plan`` prints."""
    lines = [f"{cost['grid']}: {cost['runs']} runs: {cost['todo']} to do, {cost['done']} done, {cost['aliased']} "
             "aliased (identical to a CE run by construction)"]
    if cost["todo"]:
        lines.append(f"{'backbone':16s} {'runs':>5s} {'images trained':>15s} {'img/s':>8s} {'GPU-hours':>10s} "
                     f"{'ckpt GB':>8s} {'results GB':>10s}")
        for model, m in sorted(cost["per_model"].items()):
            hours = f"{m['gpu_hours']:10.2f}" if m["gpu_hours"] is not None else f"{'unmeasured':>10s}"
            rate = f"{m['img_s']:8.0f}" if m["img_s"] else f"{'-':>8s}"
            lines.append(f"{model:16s} {m['runs']:5d} {m['images']:15,d} {rate} {hours} {m['checkpoint_mb'] / 1e3:8.2f} "
                         f"{m['results_mb'] / 1e3:10.3f}")
        lines.append(f"total: {cost['gpu_hours']:.1f} GPU-hours" + (f" on {cost['device']} (the benchmarked GPU; "
                     "another GPU scales them)" if cost["device"] else "") + f", {cost['checkpoint_gb']:.1f} GB of "
                     f"checkpoints, {cost['results_gb']:.2f} GB of results ("
                     + (f"{cost['results_mb_per_run']:.2f} MB per run, measured on the committed runs)"
                        if cost["results_mb_measured"] else f"about {RESULTS_MB_FALLBACK} MB per run, estimated)"))
        if cost["unmeasured"]:
            lines.append(f"not projected: {', '.join(cost['unmeasured'])} (no figure in "
                         f"{THROUGHPUT.relative_to(REPO)}; `make bench` on the GPU measures them)")
        lines.append("training steps only (validation and test passes are forward-only and smaller); "
                     "--seeds 42 (one seed, the thesis's) or --only <methods> narrow it")
    return lines


# --------------------------------------------------------------------------- the smoke pass


def smoke(grid: Grid, progress: bool = True) -> list[tuple[str, str]]:
    """Every (model, method, data) of the grid for 1 epoch of 2 steps on the real data, into a scratch folder;
    stage-one runs first (their checkpoints feed the stage twos). Returns (what, why) per failure."""
    from tqdm.auto import tqdm

    from ..training.check import make_config
    from ..training.engine import build_model, load_data
    from ..training.pipeline import run

    first: dict[tuple[str, str, str], RunConfig] = {}
    for cfg in sorted(grid.runs, key=lambda c: c.stage):
        first.setdefault((cfg.model, cfg.method, cfg.data_tag()), cfg)
    data: dict[tuple, Any] = {}
    failed: list[tuple[str, str]] = []
    models: dict[str, str] = {}  # model -> '' (builds) or why it cannot be built
    with tempfile.TemporaryDirectory(prefix="ltkit-smoke-") as tmp:
        for (model, method, tag), cfg in tqdm(first.items(), desc=f"{grid.name} smoke", unit="run", disable=not progress):
            what = f"{model}/{method} ({tag})"
            try:
                scfg = make_config({**cfg.to_dict(), "epochs": 1, "max_steps": 2, "stage2_epochs": 1, "bootstrap": 0,
                                    "compile": "off"})
                key = (scfg.dataset, scfg.protocol, scfg.data_tag(), scfg.split_seed, scfg.val_per_class,
                       scfg.test_imb_factor, scfg.data_root, json.dumps(scfg.source_params, sort_keys=True))
                if key not in data:
                    data[key] = load_data(scfg)
                if model not in models:  # built once on its own, so that a model that cannot be built is named as such
                    try:
                        build_model(scfg, data[key].num_classes)
                        models[model] = ""
                    except Exception as exc:  # noqa: BLE001
                        models[model] = _one_line(exc)
                if models[model]:
                    failed.append((what, f"model {model} cannot be built: {models[model]}"))
                    continue
                run(scfg, ckpt_dir=Path(tmp) / scfg.run_path(), progress=False, ds=data[key])
            except Exception as exc:  # noqa: BLE001 - each failure is one line; the pass goes on
                failed.append((what, _one_line(exc)))
                _log.debug("smoke %s", what, exc_info=True)
    return failed


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
