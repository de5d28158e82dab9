"""What is committed under ``results/`` is what the book shows, so each finished run there must be what the
repository can repeat (issues #24, #26): complete, made by a grid file in ``configs/`` (same fingerprint),
with its provenance (command, commit, device, seed, wall time) and its run card in its executed notebook.
The pipeline check, recorded without a notebook, has its own test (``test_cards``)."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from ltkit.config.fields import ConfigError
from ltkit.core.layout import COMPLETE, EXECUTED_NOTEBOOK, PROVENANCE
from ltkit.grid.spec import load_grid
from ltkit.report.book import RUN_CARD_TAG
from ltkit.runs.records import SPEND
from ltkit.runs.status import Status, run_status
from ltkit.training.check import make_config

REPO = Path(__file__).resolve().parents[1]
RUNS = sorted(p.parent for p in (REPO / "results").rglob(COMPLETE) if "pipeline-check" not in p.parts)


def _grid_fingerprints(precision: str) -> set[str]:
    """Every run's fingerprint in every grid file, at the precision a run recorded (``auto`` resolves per machine)."""
    out: set[str] = set()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        try:
            out |= {c.fingerprint() for c in load_grid(path, {"precision": precision}).runs}
        except ConfigError:  # a campaign file is not a grid
            continue
    return out


@pytest.mark.parametrize("run_dir", RUNS or [pytest.param(None, marks=pytest.mark.skip(reason="no run committed yet"))],
                         ids=lambda p: str(p.relative_to(REPO / "results")) if p else "none")
def test_a_committed_run_is_complete_repeatable_and_carries_its_provenance_and_card(run_dir):
    prov = json.loads((run_dir / PROVENANCE).read_text())
    assert prov["status"] == "finished" and run_status(run_dir, prov["fingerprint"]) == Status.DONE
    params = prov["parameters"]
    assert make_config(params).fingerprint() == prov["fingerprint"]  # the recorded parameters are its identity
    assert prov["fingerprint"] in _grid_fingerprints(params["precision"]), "no grid file in configs/ makes this run"
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"]), prov["git"]
    assert prov["command"] and prov["wall_seconds"] > 0 and isinstance(params["seed"], int)
    assert prov.get("device_name") and prov.get("threads", 0) >= 1
    nb = nbformat.read(str(run_dir / EXECUTED_NOTEBOOK), as_version=4)
    card = [c for c in nb.cells if RUN_CARD_TAG in c.get("metadata", {}).get("tags", [])]
    assert len(card) == 1 and "Run card" in card[0].outputs[0]["data"]["text/markdown"]
    spend = json.loads((run_dir / SPEND).read_text())["attempts"]
    assert spend and spend[-1]["outcome"] == "done"
