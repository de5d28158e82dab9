"""Run cards: what each number cost and exactly what made it, generated from what the run wrote.

A card answers the questions people bring to long-tailed codebases before they compare two numbers:
which images (the subset's digest), which network (parameters, FLOPs per image, an architecture digest),
which recipe and where it differs from the paper's, which seeds, which machine, software and commit,
how much compute (failed and interrupted attempts included), and which number is the last epoch's
and which the best-on-test one. Everything is read from the run's folder (provenance, history,
metrics, spend) or recomputed from its recorded configuration; nothing is typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..core.io import read_json_or_empty
from ..core.layout import METRICS, PROVENANCE
from ..data import PROTOCOLS
from ..metrics import BEST_EPOCH_ON_TEST, HEADLINE
from ..runs.records import attempts, device_hours
from ..runs.status import load_metrics, resolve_alias

RECIPE_FIELDS = ("model", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "milestones", "lr_decay",
                 "warmup_epochs", "image_size", "pretrained", "sampler", "classifier", "normalization", "precision",
                 "select", "subset_seed")


def recipe_differences(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every recipe field where a run differs from its protocol's published recipe (the paper's, as data
    on its ``PROTOCOLS`` entry): ``[{'field', 'run', 'paper'}]``; ``[]`` is like-with-like. A field the
    run does not record (made before it existed) counts as its legacy value."""
    from ..config.fields import LEGACY_DEFAULTS

    protocol = params.get("protocol")
    if protocol not in PROTOCOLS:
        return []
    out = []
    for field, paper in PROTOCOLS.info(protocol).published.items():
        run = params.get(field, LEGACY_DEFAULTS.get(field))
        same = list(run) == list(paper) if isinstance(paper, (list, tuple)) and isinstance(run, (list, tuple)) \
            else run == paper
        if not same:
            out.append({"field": field, "run": "not recorded" if run is None else run, "paper": paper})
    return out








def run_card(run_dir: str | Path) -> dict[str, list[tuple[str, Any]]]:
    """The card of a run folder as ``{section: [(field, value), ...]}`` (an alias: its CE run's card)."""
    from ..models.facts import model_facts

    run_dir = resolve_alias(Path(run_dir))
    prov, m = read_json_or_empty(run_dir / PROVENANCE), load_metrics(run_dir) or read_json_or_empty(run_dir / METRICS)
    if not prov:  # training, interrupted or failed before its record: say what was spent, claim nothing else
        attempts_row, hours_row = _spend_rows(run_dir)
        return {"status": [("record", "not finished: no provenance.json yet (training, interrupted or failed)")],
                "made on": [(attempts_row[0], attempts_row[1] or "none recorded"), hours_row]}
    p, ds = prov.get("parameters") or {}, prov.get("dataset") or {}
    meta, sizes = ds.get("meta") or {}, ds.get("sizes") or {}
    card: dict[str, list[tuple[str, Any]]] = {}
    imb = "balanced" if p.get("imb_factor") == 1 else f"{p.get('imb_type')}, IF {p.get('imb_factor', 0):g}"
    card["data"] = [("protocol", p.get("protocol")), ("data set", p.get("dataset")), ("imbalance", imb),
                    ("training images", sizes.get("train")), ("classes", len(ds.get("train_counts") or []) or None),
                    ("subset", meta.get("subset")), ("subset SHA256", meta.get("subset_sha256") or _subset_digest(p)),
                    ("other splits (images)", ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "train") or None)]
    facts = {}
    if p.get("model") and ds.get("train_counts"):
        try:
            facts = model_facts(p["model"], len(ds["train_counts"]), p.get("image_size") or 32,
                                ds.get("classifier") or p.get("classifier") or "linear", p.get("model_params"))
        except Exception as exc:  # noqa: BLE001 - a model that cannot be built here (a missing package)
            facts = {"parameters": f"not computed ({type(exc).__name__})"}
    card["model"] = [("name", p.get("model")), ("parameters", facts.get("parameters")),
                     ("FLOPs per image (forward)", facts.get("flops_per_image")),
                     ("architecture SHA256", facts.get("architecture_sha256")),
                     ("classifier", ds.get("classifier") or p.get("classifier")),
                     ("pretrained weights", ds.get("weights") or ("none" if p.get("pretrained") is False else None))]
    schedule = (f"warm-up {p.get('warmup_epochs')}, x{p.get('lr_decay'):g} at {p.get('milestones')}"
                if p.get("lr_decay") is not None else None)
    card["recipe"] = [("method", (prov.get("run") or {}).get("method") or p.get("method")),
                      ("loss", f"{p.get('loss')} {p.get('loss_params') or ''}".strip()),
                      ("procedure", f"{p.get('procedure')} {p.get('procedure_params') or ''}".strip()
                       + (f" from {p.get('stage1')}" if p.get("stage1") else "")),
                      ("optimiser", f"{p.get('optimizer')}, lr {p.get('lr')}, momentum {p.get('momentum')}"),
                      ("weight decay", p.get("weight_decay")), ("schedule", schedule), ("batch", p.get("batch_size")),
                      ("epochs", p.get("epochs")),
                      # a stage two's own epochs (its selected epoch counts these): the epochs above are its stage one's
                      ("stage-two epochs", p.get("stage2_epochs") if p.get("stage1") else None),
                      ("sampler", p.get("sampler")),
                      ("precision", p.get("precision", "fp32 (before the setting existed)")),
                      ("normalisation", (ds.get("normalization") or {}).get("kind", p.get("normalization"))),
                      ("selection", p.get("select"))]
    diffs = recipe_differences(p)
    paper = PROTOCOLS.info(p["protocol"]).paper if p.get("protocol") in PROTOCOLS else None
    card["versus the paper's recipe"] = ([(d["field"], f"{d['run']} (paper: {d['paper']})") for d in diffs]
                                         or [("differences", f"none: like-with-like with {paper}")])
    card["seeds"] = [("seed (initial weights, sampler, augmentation)", p.get("seed")),
                     ("subset seed", p.get("subset_seed", 0)), ("split seed", p.get("split_seed"))]
    git = prov.get("git") or {}
    threads = prov.get("threads")
    card["made on"] = [("device", prov.get("device_name")), ("CPU", prov.get("cpu_model")),
                       ("threads / GPUs", (f"{threads} thread{'s' * (threads != 1)}" if threads else "not recorded")
                        + (f", {prov['gpu_count']} GPU(s)" if prov.get("gpu_count") else "")),
                       ("torch / CUDA", f"{prov.get('torch')} / {prov.get('cuda') or 'none'}"),
                       ("package lock SHA256", (prov.get("lock_sha256") or "")[:16] or None),
                       ("commit", _commit(git)),
                       ("finished", prov.get("end")), ("wall time (last launch)", _hms(prov.get("wall_seconds"))),
                       *_spend_rows(run_dir)]
    ci = (m.get(f"{HEADLINE}_ci_low"), m.get(f"{HEADLINE}_ci_high"))
    card["numbers"] = [("balanced top-1, selected epoch " + str(m.get("selected_epoch")),
                        _pct(m.get(HEADLINE)) + (f" [{_pct(ci[0])}, {_pct(ci[1])}] 95% CI" if None not in ci else "")),
                       ("best epoch on the test set (for comparison only, never selects)",
                        _pct(m.get(BEST_EPOCH_ON_TEST)) + (f" at epoch {m['best_epoch_on_test']}"
                                                           if "best_epoch_on_test" in m else ""))]
    return {k: [(f, v) for f, v in rows if v not in (None, "", "None")] for k, rows in card.items()}


def _spend_rows(run_dir: Path) -> list[tuple[str, Any]]:
    """The card's two rows on what a run cost: its attempts (outcome, duration and, where recorded, the commit
    that ran it: a resumed run may span commits; None where no attempt is recorded) and the device-hours of them all."""
    spend = attempts(run_dir)

    def at(a: dict) -> str:
        sha = a.get("commit")
        return f" at {sha[:7]}{'-dirty' if a.get('dirty') else ''}" if _is_sha(sha) else ""

    return [("attempts", ", ".join(f"{a['outcome']} {_hms(a.get('seconds'))}{at(a)}" for a in spend) or None),
            ("device-hours, all attempts", round(sum(device_hours(a) for a in spend), 3))]


def _subset_digest(p: dict) -> str | None:
    """The cao2019 subset's SHA256 from its class sizes (Cao et al.'s draw needs no pixels)."""
    if p.get("protocol") != "cao2019":
        return None
    try:
        from ..data import SOURCES
        from ..data.splits import cao2019_subset_table

        spec = SOURCES.info(p["dataset"])
        if not (spec.num_classes and spec.train_per_class):
            return None
        return cao2019_subset_table([spec.train_per_class] * spec.num_classes, p["imb_factor"], p.get("imb_type", "exp"),
                                    seed=p.get("subset_seed", 0))["sha256"]
    except Exception:  # noqa: BLE001
        return None


def _is_sha(sha: object) -> bool:
    """A full commit SHA (not 'unknown', nor the 'HEAD' an old pipeline check recorded)."""
    return isinstance(sha, str) and len(sha) == 40 and all(c in "0123456789abcdef" for c in sha)


def _commit(git: dict) -> str:
    sha = git.get("commit") or "unknown"
    if not _is_sha(sha):
        return f"unknown (recorded as {sha!r})" if sha != "unknown" else "unknown"
    return sha[:12] + (" (with uncommitted changes to ltkit/)" if git.get("dirty") else "")


def _pct(x: Any) -> str:
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else "n/a"


def _hms(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def card_frame(card: dict[str, list[tuple[str, Any]]]) -> pd.DataFrame:
    return pd.DataFrame([{"": section, "field": f, "value": v} for section, rows in card.items() for f, v in rows])


def card_markdown(run_dir: str | Path, title: str = "Run card") -> str:
    """The card as Markdown (what the run's notebook and its appendix C page show at their top)."""
    card = run_card(run_dir)
    lines = [f"**{title}** (generated from this run's files: provenance, history, metrics, spend)", "",
             "| | field | value |", "|---|---|---|"]
    for section, rows in card.items():
        for i, (f, v) in enumerate(rows):
            lines.append(f"| {section if i == 0 else ''} | {f} | {str(v).replace('|', '/')} |")
    return "\n".join(lines)


PENDING_CARD = "*The run card appears here when the run has finished.*"


def notebook_card(run) -> str:
    """The run card a run's notebook shows at its top (:class:`ltkit.notebook.NotebookRun`): a recorded run's
    at once; a run still to train gets a placeholder that :func:`update_notebook_card` fills at the end."""
    if run.mode == "show" and run.output_dir:
        return _safe_card(run.output_dir)
    return PENDING_CARD


def update_notebook_card(card, run) -> None:
    """Fill the notebook's card (an IPython display handle) once a run has trained and written its files; a
    shown run's card is already there; a run with no results folder (``output_dir`` None) says so."""
    from IPython.display import Markdown

    if run.mode == "show":
        return
    if run.mode == "reproduce":
        card.update(Markdown(_safe_card(run.reproduction.output_dir, "Run card of the reproduction")))
    elif run.output_dir:
        card.update(Markdown(_safe_card(run.output_dir)))
    else:
        card.update(Markdown("*No results folder (output_dir is None): nothing was written, so there is no card.*"))


def _safe_card(run_dir, title: str = "Run card") -> str:
    try:
        return card_markdown(run_dir, title)
    except Exception as exc:  # noqa: BLE001 - the card must never fail a finished run: say why it is missing
        return f"*The run card could not be generated: {type(exc).__name__}: {exc}*"
