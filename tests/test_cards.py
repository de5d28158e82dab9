"""Run cards (issue #26): what made each number and what it cost, checked against independent counts; the
recipe beside the paper's; compute of finished, failed and interrupted attempts; subset seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
import yaml
from conftest import cli, grid_spec

from ltkit.config.fields import ConfigError
from ltkit.grid.processes import prepare_child
from ltkit.grid.spec import load_grid
from ltkit.training.check import make_config

REPO = Path(__file__).resolve().parents[1]
SYN = {"num_classes": 6, "train_per_class": 40, "test_per_class": 8}


def test_parameters_and_flops_match_an_independent_count():
    """ResNet-32 for CIFAR-100 (He et al. 2016, n = 5, option-A shortcuts): parameters counted layer by layer
    from the architecture's definition, FLOPs from forward hooks on every conv and linear layer (2 per
    multiply-add), neither through torch.utils.flop_counter."""
    from ltkit.models import create_model
    from ltkit.models.facts import model_facts

    convs = 3 * 16 * 9 + 10 * 16 * 16 * 9 + (16 * 32 * 9 + 9 * 32 * 32 * 9) + (32 * 64 * 9 + 9 * 64 * 64 * 9)
    bns = 2 * (16 + 10 * 16 + 10 * 32 + 10 * 64)
    expected_params = convs + bns + 64 * 100 + 100
    macs = []
    model = create_model("resnet32", 100).eval()
    hooks = [m.register_forward_hook(lambda m, i, o: macs.append(
        o.shape[2] * o.shape[3] * m.in_channels // m.groups * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, torch.nn.Conv2d) else m.in_features * m.out_features))
        for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    facts = model_facts("resnet32", 100, 32)
    assert facts["parameters"] == expected_params == 470004
    assert facts["flops_per_image"] == 2 * sum(macs)
    assert model_facts("resnet32", 100, 32, "cosine")["architecture_sha256"] != facts["architecture_sha256"]
    assert model_facts("resnet32", 10, 32)["parameters"] == expected_params - 90 * 64 - 90


def test_the_card_lists_every_difference_from_the_papers_recipe():
    from ltkit.report.cards import recipe_differences

    base = {"protocol": "cao2019", "dataset": "cifar100", "model": "resnet32", "loss": "ce", "seed": 0,
            "precision": "fp32"}
    assert recipe_differences(make_config(base).to_dict()) == []  # Cao et al.'s recipe: like-with-like
    one = recipe_differences(make_config({**base, "weight_decay": 5e-4}).to_dict())
    assert one == [{"field": "weight_decay", "run": 5e-4, "paper": 2e-4}]
    two = {d["field"] for d in recipe_differences(make_config({**base, "precision": "bf16", "epochs": 2}).to_dict())}
    assert two == {"precision", "epochs", "milestones", "warmup_epochs"}  # the schedule follows the epochs


def test_subset_seed_zero_keeps_every_fingerprint_and_one_draws_another_pinned_subset(tmp_path):
    from ltkit.data.splits import cao2019_subset_table

    for path in sorted((REPO / "configs").glob("*.yaml")):
        if "campaign" in path.name or "gpu-image" in path.name:
            continue
        grid = load_grid(path)
        with_zero = load_grid(path, {"subset_seed": 0}) if "subsets" not in path.name else grid
        assert [r.fingerprint() for r in grid.runs] == [r.fingerprint() for r in with_zero.runs], path.name
    ce = load_grid(REPO / "configs" / "cao2019-cifar100-if100.yaml", {"precision": "bf16"}).runs[0]  # the campaign's CE
    assert ce.fingerprint() == "d52befadebb7acc9" and ce.run_path() == "cao2019/cifar100_exp100/resnet32/ce/seed0"
    one = make_config({**ce.to_dict(), "subset_seed": 1})
    assert one.run_path() == "cao2019/cifar100_exp100_subset1/resnet32/ce/seed0" and one.fingerprint() != ce.fingerprint()
    sizes = [500] * 100
    assert cao2019_subset_table(sizes, 100)["sha256"] == json.loads(
        (REPO / "book" / "data" / "cao2019_subsets.json").read_text())["settings"]["cifar100_exp100"]["sha256"]
    assert cao2019_subset_table(sizes, 100, seed=1)["sha256"] == \
        "43a3c18621793edc869dbf3bbc4a924dbf6e916e0c25be8a80cd9d6023561b4b"
    assert cao2019_subset_table(sizes, 100, seed=1)["counts"] == cao2019_subset_table(sizes, 100)["counts"]
    with pytest.raises(ConfigError, match="'subset_seed': 1 .*0 for protocol 'thesis'"):
        make_config({"protocol": "thesis", "dataset": "cifar100", "subset_seed": 1})


def test_a_runs_subset_digest_is_the_published_one(tiny_cfg):
    """The digest a run records (over its training images' (class, rank) list) equals the subset table's."""
    from ltkit.data import load_dataset
    from ltkit.data.splits import cao2019_subset_table

    for seed in (0, 1):
        ds = load_dataset("synthetic", "cao2019", imb_factor=10, source_kwargs=SYN, subset_seed=seed)
        assert ds.meta["subset_sha256"] == cao2019_subset_table([40] * 6, 10, seed=seed)["sha256"]


@pytest.mark.slow
def test_compute_counts_finished_failed_and_interrupted_attempts_and_the_card_shows_them(tmp_path):
    from ltkit import report

    s = grid_spec(tmp_path, SYN, "cc", methods=["ce", "bs", {"method": "focal", "loss": "focal"}])
    s["results"] = str(tmp_path / "results")
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(s))
    g = load_grid(path)
    runs = {c.method: c for c in g.runs}
    try:
        assert cli("grid", "run", path, "--only", "ce").returncode == 0  # finished
        assert cli("grid", "run", path, "--only", "bs", "--set", "lr=1.0e+30", "--set", "epochs=3").returncode == 1
        long = tmp_path / "long.yaml"  # interrupted: a long focal run stopped after its first epochs
        long.write_text(yaml.safe_dump({**s, "base": {**s["base"], "epochs": 400}}))
        proc = subprocess.Popen([sys.executable, "-m", "ltkit.cli", "grid", "run", str(long), "--only", "focal"],
                                cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=prepare_child)
        prog = load_grid(long).ckpt_dir(runs["focal"]) / "progress.json"
        deadline = time.time() + 240
        while time.time() < deadline and not (prog.exists() and json.loads(prog.read_text())["epoch"] >= 2):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        att = report.attempts_table(g.results)
        outcomes = dict(zip(att["method"], att["outcome"], strict=True))
        assert outcomes == {"ce": "done", "bs": "failed", "focal": "interrupted"}
        assert (att["seconds"] > 0).all() and (att["device_hours"] > 0).all()
        table = report.compute_table(att)
        total = table.loc[("all", "", "")]
        for outcome in ("done", "failed", "interrupted"):
            assert total[outcome] == pytest.approx(att.loc[att["outcome"] == outcome, "device_hours"].sum(), abs=1e-3)
        assert total["total"] == pytest.approx(att["device_hours"].sum(), abs=1e-3) and total["attempts"] == 3
        status = cli("grid", "status", path)
        line = status.stdout.strip().splitlines()[-1]
        assert line.startswith("compute:") and "over 3 attempt(s)" in line
        assert all(f"{o} " in line for o in ("done", "failed", "interrupted"))
        # the card, in the run's own notebook (filled in at its end) and on its appendix C page
        ce_dir = g.run_dir(runs["ce"])
        nb = nbformat.read(str(ce_dir / "train.ipynb"), as_version=4)
        cell = next(c for c in nb.cells if "run-card" in c.get("metadata", {}).get("tags", []))
        card = cell.outputs[0]["data"]["text/markdown"]
        assert "Run card" in card and "| model | name | tiny_cnn |" in card and "subset SHA256" in card
        from ltkit.models.facts import model_facts

        assert f"| parameters | {model_facts('tiny_cnn', 6, 32)['parameters']} |" in card
        pages = tmp_path / "pages"
        index = report.stage_runs(g.results, dest=pages, static=tmp_path / "static")
        page = nbformat.read(str(pages / f"{index.set_index('method').loc['ce', 'slug']}.ipynb"), as_version=4)
        shown = next(c for c in page.cells if c.cell_type == "markdown" and "**Run card**" in c.source)  # above the code
        assert "attempts | done" in shown.source and page.cells.index(shown) == 1
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)
        shutil.rmtree(load_grid(tmp_path / "long.yaml").ckpt_root if (tmp_path / "long.yaml").exists() else g.ckpt_root,
                      ignore_errors=True)


def test_a_run_without_a_notebook_gets_a_page_with_its_card(tmp_path):
    """The pipeline check was recorded without an executed notebook: appendix C still shows its card."""
    from ltkit import report

    index = report.stage_runs(REPO / "results" / "pipeline-check", dest=tmp_path / "p", static=tmp_path / "s")
    (slug,) = index["slug"]
    page = nbformat.read(str(tmp_path / "p" / f"{slug}.ipynb"), as_version=4)
    text = "\n".join(c.source for c in page.cells)
    assert "Run card" in text and "resnet50" in text and "23712932" in text and "NVIDIA H100" in text
    assert "epochs | 2 (paper: 90)" in text  # a check, not the thesis's recipe: the card says so


def test_a_run_still_training_gets_no_page_and_its_card_claims_nothing(tmp_path):
    """Mid-campaign, a run folder holds only the spend of its interrupted launches (no provenance yet): `make book`
    must not make it a page whose card invents a recipe ("IF 0", "fp32 (before the setting existed)")."""
    from ltkit import report
    from ltkit.report.cards import card_markdown
    from ltkit.runs.records import record_spend

    d = tmp_path / "results" / "cao2019" / "cifar100_exp100" / "resnet32" / "ce" / "seed2"
    d.mkdir(parents=True)
    record_spend(d, {"outcome": "interrupted", "seconds": 1307.0, "end": "2026-12-02T11:21:00+0000", "threads": 1,
                     "cores": 2, "gpus": 0, "device": "Intel(R) Xeon(R) Processor"})
    card = card_markdown(d)
    assert "not finished: no provenance.json yet" in card and "interrupted 0:21:47" in card
    for invented in ("IF 0", "before the setting existed", "like-with-like", "None"):
        assert invented not in card, invented
    index = report.stage_runs(tmp_path / "results", dest=tmp_path / "p", static=tmp_path / "s")
    (row,) = index.to_dict("records")
    assert row["status"] == "missing" and row["page"] is None and not list((tmp_path / "p").glob("cao2019*.ipynb"))


def test_each_attempt_records_the_commit_that_ran_it_and_the_card_shows_them(tmp_path, monkeypatch):
    """A campaign run resumed across commits (CE seed 2: three launches, two commits): provenance names only the
    last launch's commit, so each attempt records its own and the card lists them."""
    from ltkit.grid.execute import attempt
    from ltkit.report.cards import card_markdown
    from ltkit.runs.records import record_spend

    monkeypatch.setenv("LTKIT_GIT_COMMIT", "024b518" + "0" * 33)
    first = attempt("interrupted", "2026-12-02T12:02:46+0000", 9665.2, {"OMP_NUM_THREADS": "1"})
    assert first["commit"] == "024b518" + "0" * 33 and first["threads"] == 1
    monkeypatch.delenv("LTKIT_GIT_COMMIT")
    here = attempt("done", "2026-12-02T15:34:05+0000", 1035.0, {})
    assert here["commit"] == "unknown" or len(here["commit"]) == 40  # this checkout's HEAD (or no git here)
    d = tmp_path / "seed2"
    d.mkdir()
    for a in (first, {**here, "commit": "11d4265" + "0" * 33, "dirty": True}, {**here, "commit": "unknown"}):
        record_spend(d, a)
    card = card_markdown(d)
    assert "interrupted 2:41:05 at 024b518," in card and "done 0:17:15 at 11d4265-dirty," in card
    assert "at unknown" not in card and card.count("done 0:17:15") == 2


def test_launches_before_spend_was_recorded_count_from_the_history(tmp_path):
    """A campaign run resumed across code versions: launches 1-2 ended before attempts were recorded, launch 3
    was recorded; its compute counts the first two from their epoch times, never twice."""
    import pandas as pd

    from ltkit.core.io import atomic_write_json
    from ltkit.runs.records import attempts, device_hours, launches, record_spend, training_seconds

    d = tmp_path / "run"
    d.mkdir()
    pd.DataFrame({"epoch": range(6), "launch": [1, 1, 2, 2, 3, 3], "seconds": [10.0] * 6}).to_csv(d / "history.csv",
                                                                                                 index=False)
    atomic_write_json(d / "provenance.json", {"status": "finished", "wall_seconds": 25.0, "end": "2026-12-01T10:00:00+00:00",
                                              "threads": 1, "cores": 2, "device_name": "cpu (x86_64, 2 cores)",
                                              "cpu_model": "Intel(R) Xeon(R) Processor"})
    record_spend(d, {"outcome": "done", "seconds": 25.0, "end": "2026-12-01T10:00:01+0000", "threads": 1, "cores": 2,
                     "gpus": 0, "device": "Intel(R) Xeon(R) Processor"})
    entries = attempts(d)
    assert [e["outcome"] for e in entries] == ["interrupted", "done"]
    assert entries[0]["seconds"] == 40.0 and entries[0]["launches"] == 2 and "history.csv" in entries[0]["recorded"]
    assert sum(device_hours(e) for e in entries) == pytest.approx((40 + 25) / 3600 / 2)
    assert {e["device"] for e in entries} == {"Intel(R) Xeon(R) Processor"}  # one machine, one device in appendix D
    assert sum(launches(e) for e in entries) == 3  # what appendix D and `grid status` count as attempts
    # the training took its six epochs (60 s), not the 25 s of the launch that finished it
    assert training_seconds(d) == 60.0
    record_spend(d, {"outcome": "done", "seconds": 90.0, "end": "2026-12-01T11:00:00+0000", "threads": 1, "cores": 2})
    assert training_seconds(d) == 90.0  # a forced re-run from scratch: its own wall time, start-up included
    assert training_seconds(tmp_path) is None  # nothing finished


def test_the_card_of_a_committed_cpu_run_says_where_it_ran():
    """The campaign's CE seed 0: one thread of a 2-core CPU, no GPU, in bf16, said as such."""
    from ltkit.report.cards import run_card

    card = run_card(REPO / "results" / "cao2019" / "cifar100_exp100" / "resnet32" / "ce" / "seed0")
    made_on = dict(card["made on"])
    assert made_on["threads / GPUs"] == "1 thread" and made_on["device"] == "cpu (x86_64, 2 cores)"
    assert ("precision", "bf16 (paper: fp32)") in card["versus the paper's recipe"]


def test_a_stage_two_card_says_its_own_epochs_beside_its_stage_ones():
    """las_mixup's selected epoch 9 is the last of its 10 stage-two epochs, not of the 200 its stage one trained."""
    from ltkit.report.cards import run_card

    root = REPO / "results" / "cao2019" / "cifar100_exp100" / "resnet32"
    recipe = dict(run_card(root / "las_mixup" / "seed0")["recipe"])
    assert recipe["epochs"] == 200 and recipe["stage-two epochs"] == 10
    numbers = dict(run_card(root / "las_mixup" / "seed0")["numbers"])
    assert "balanced top-1, selected epoch 9" in numbers
    assert "stage-two epochs" not in dict(run_card(root / "ce" / "seed0")["recipe"])
