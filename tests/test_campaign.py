"""The campaign (issue #24): a priority queue trained in the background from a worktree of a fixed commit,
stopped at an epoch boundary and resumed from its checkpoints. Real processes, a real git clone."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from ltkit.config.fields import ConfigError
from ltkit.grid import campaign

REPO = Path(__file__).resolve().parents[1]
SRC = {"num_classes": 10, "train_per_class": 60, "test_per_class": 10}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test's campaign keeps its checkpoints in a cache of its own (clones of this repository share a key)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LTKIT_CHECKPOINTS", raising=False)


def _clone(tmp_path: Path, epochs: int) -> Path:
    """A clone of this repository's HEAD plus the working tree's ltkit/ and notebooks/ (what is under test),
    with a tiny grid and campaign committed."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    for sub in ("ltkit", "notebooks", "configs"):
        _copytree(REPO / sub, repo / sub)
    grid = {"name": "tinycamp", "results": "results/tiny",
            "base": {"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 5,
                     "epochs": epochs, "bootstrap": 20, "precision": "fp32", "source_params": SRC},
            "seeds": [0, 1], "methods": ["ce", "bs", {"procedure": "la_posthoc", "stage1": "ce"}]}
    (repo / "configs" / "tiny-grid.yaml").write_text(yaml.safe_dump(grid))
    camp = {"name": "tiny", "jobs": 1, "threads": 1,
            "queue": [{"grid": "tiny-grid.yaml", "methods": ["la_posthoc"], "seeds": [0]},  # waits for ce seed 0
                      {"grid": "tiny-grid.yaml", "methods": ["ce"], "seeds": [0]}]}
    (repo / "configs" / "tiny-campaign.yaml").write_text(yaml.safe_dump(camp))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "tiny campaign"], check=True)
    return repo


def _copytree(src: Path, dst: Path) -> None:
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))


def _wait(pred, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _states(repo: Path) -> dict[str, str]:
    camp = campaign.load_campaign(repo / "configs" / "tiny-campaign.yaml")
    return {i.name: st for i, st, _ in campaign.item_states(camp, repo)}


def test_bad_campaign_files_name_the_bad_value(tmp_path):
    (tmp_path / "g.yaml").write_text((REPO / "configs" / "demo.yaml").read_text())
    bad = tmp_path / "c.yaml"
    bad.write_text("queue: [{grid: g.yaml, methods: [ce, nope]}]\n")
    with pytest.raises(ConfigError, match=r"no run 'nope' seed 0 \(methods: .*bs.*ce"):
        campaign.load_campaign(bad)
    bad.write_text("queue: [{grid: g.yaml}]\nworkers: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'workers' \(accepted: description, jobs, name, queue"):
        campaign.load_campaign(bad)
    bad.write_text("jobs: 0\nqueue: [{grid: g.yaml}]\n")
    with pytest.raises(ConfigError, match=r"'jobs': 0 \(accepted: an integer >= 1"):
        campaign.load_campaign(bad)
    ok = campaign.load_campaign(REPO / "configs" / "campaign-cpu.yaml")
    assert [i.name for i in ok.queue[:3]] == ["cao2019-cifar100-if100:ce:seed0", "cao2019-cifar100-if100:ldam_drw:seed0",
                                              "cao2019-cifar100-if100:bs:seed0"]


def test_start_refuses_what_it_could_not_train_and_knows_its_own_process(tmp_path):
    """Start checks, before anything starts: a campaign file outside the repository or not in the commit (the
    worktree would lack it), another campaign already running. A recorded pid is the campaign's only while that
    process's start time matches: after a restart of the machine the pid may be anybody's, and stop must not
    signal it."""
    outside = tmp_path / "c.yaml"
    outside.write_text((REPO / "configs" / "campaign-cpu.yaml").read_text())
    with pytest.raises(ConfigError, match=r"c\.yaml is outside the repository .*accepted: a campaign file committed"):
        campaign.start(outside, repo=REPO)
    repo = _clone(tmp_path, epochs=2)
    fresh = repo / "configs" / "fresh-campaign.yaml"
    fresh.write_text((repo / "configs" / "tiny-campaign.yaml").read_text())
    with pytest.raises(ConfigError, match=r"configs/fresh-campaign\.yaml is not in commit [0-9a-f]{12}.*commit it first"):
        campaign.start(fresh, repo=repo)
    assert not (repo / ".campaign" / "src").exists()  # refused before the worktree
    other = subprocess.Popen(["sleep", "60"])
    try:
        state = {"pid": other.pid, "pid_started": campaign._started_ticks(other.pid),
                 "campaign": "configs/tiny-campaign.yaml", "commit": "0" * 40, "jobs": 1, "threads": 1, "started": "now",
                 "log": str(repo / ".campaign" / "campaign.log")}
        (repo / ".campaign").mkdir(exist_ok=True)
        (repo / ".campaign" / "state.json").write_text(json.dumps(state))
        with pytest.raises(ConfigError, match=r"campaign configs/tiny-campaign\.yaml is already running \(pid \d+\); "
                                              r"`ltkit campaign stop`.* to start configs/fresh-campaign\.yaml instead"):
            campaign.start(fresh, repo=repo)
        with pytest.raises(ConfigError, match=r"campaign file .*configs/nope\.yaml: No such file"):  # not "running"
            campaign.start(repo / "configs" / "nope.yaml", repo=repo)
        assert campaign.start(repo / "configs" / "tiny-campaign.yaml", repo=repo)["already_running"]
        # the same pid, started at another time: not the campaign (a reused pid)
        (repo / ".campaign" / "state.json").write_text(json.dumps({**state, "pid_started": "1"}))
        assert campaign.stop(repo=repo, timeout=1) == "no campaign is running"
        assert campaign.status_lines(repo=repo)[0].startswith("campaign not running")
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()


def test_start_hands_the_runs_the_checkouts_data_and_refuses_a_queue_that_has_none(tmp_path, monkeypatch):
    """`ltkit campaign start` without the Makefile's LTKIT_DATA: the runs execute in the worktree, whose data/ is
    not the checkout's, and every run of the queue failed in seconds, one after another, for want of data. Start
    now hands the runs the checkout's data/ (or LTKIT_DATA, made absolute); a queue none of whose runs left can find
    its data is refused before anything starts, and the runs of a mixed queue that will fail are named."""
    repo = _clone(tmp_path, epochs=2)
    monkeypatch.delenv("LTKIT_DATA", raising=False)
    assert campaign.data_root(repo) == (repo / "data").resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTKIT_DATA", "mine")
    assert campaign.data_root(repo) == tmp_path / "mine"
    grid = yaml.safe_load((repo / "configs" / "tiny-grid.yaml").read_text())
    grid.update(name="tinycifar", results="results/tinycifar")
    grid["base"].pop("source_params")
    grid["base"]["dataset"] = "cifar100"
    (repo / "configs" / "cifar-grid.yaml").write_text(yaml.safe_dump(grid))
    cifar = {"grid": "cifar-grid.yaml", "methods": ["ce"], "seeds": [0]}
    (repo / "configs" / "only-campaign.yaml").write_text(yaml.safe_dump({"name": "only", "queue": [cifar]}))
    (repo / "configs" / "both-campaign.yaml").write_text(yaml.safe_dump(
        {"name": "both", "queue": [cifar, {"grid": "tiny-grid.yaml", "methods": ["ce"], "seeds": [0]}]}))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "cifar campaign"], check=True)
    empty = tmp_path / "empty"
    monkeypatch.setenv("LTKIT_DATA", str(empty))
    with pytest.raises(ConfigError, match=r"campaign configs/only-campaign\.yaml: none of its 1 run\(s\) left can start: "
                                          r"cifar100: no data under .*empty"):
        campaign.start(repo / "configs" / "only-campaign.yaml", repo=repo)
    assert not (repo / ".campaign" / "src").exists()  # refused before the worktree
    both = campaign.load_campaign(repo / "configs" / "both-campaign.yaml")
    missing = campaign.without_data(both, repo, empty, both.queue)  # nothing of it done yet
    assert list(missing) == ["cifar-grid:ce:seed0"] and "no data under" in missing["cifar-grid:ce:seed0"]


def test_status_on_a_fresh_clone_shows_what_the_committed_results_hold(tmp_path):
    """Before any start (a fresh clone, or a machine whose .campaign/ is gone) status used to print one line; it
    now lists configs/campaign-cpu.yaml's queue, done where results/ holds the run and queued elsewhere."""
    repo = _clone(tmp_path, epochs=2)
    lines = campaign.status_lines(repo=repo)
    assert lines[0] == "no campaign has been started here (make campaign); configs/campaign-cpu.yaml:"
    camp = campaign.load_campaign(repo / "configs" / "campaign-cpu.yaml")
    assert len(lines) == len(camp.queue) + 2
    assert "done     cao2019-cifar100-if100:ce:seed0  [balanced top-1 0.3878]" in lines  # committed
    assert all(line.split()[0] in ("done", "queued", "waiting") for line in lines[1:-1])
    (repo / "configs" / "campaign-cpu.yaml").unlink()
    assert campaign.status_lines(repo=repo) == ["no campaign has been started here (make campaign)"]


def test_a_grids_relative_data_root_is_the_checkouts_not_the_worktrees(tmp_path, monkeypatch):
    """The campaign trains from a worktree (``REPO`` there is the worktree, whose data/ is empty) for the main
    checkout: a grid's relative data_root (a folder dataset's ``data_root: my_images``, as the README shows)
    resolved inside the worktree and every such run failed there. It is now the checkout's, both in the driver's
    grids and in the grid runs it launches (``LTKIT_HOME``, which start hands the driver)."""
    from ltkit.grid.spec import load_grid

    worktree, home = tmp_path / "worktree", tmp_path / "home"
    (worktree / "configs").mkdir(parents=True)
    grid = {"name": "rel", "seeds": [0], "methods": ["ce"],
            "base": {"protocol": "natural", "dataset": "folder", "data_root": "my_images", "model": "tiny_cnn",
                     "pretrained": False}}
    (worktree / "configs" / "g.yaml").write_text(yaml.safe_dump(grid))
    (worktree / "configs" / "c.yaml").write_text(yaml.safe_dump({"name": "c", "queue": [{"grid": "g.yaml"}]}))
    camp = campaign.load_campaign(worktree / "configs" / "c.yaml")
    g = campaign._grids(camp, home)["g.yaml"]
    assert g.runs[0].data_root == str(home / "my_images") and g.results == home / "results" / "rel"
    assert g.checkpoints == campaign.campaign_checkpoints_root(home)
    monkeypatch.setenv("LTKIT_HOME", str(home))  # what a launched `ltkit grid run` sees
    assert load_grid(worktree / "configs" / "g.yaml").runs[0].data_root == str(home / "my_images")
    monkeypatch.delenv("LTKIT_HOME")
    assert load_grid(worktree / "configs" / "g.yaml").runs[0].data_root == str(REPO / "my_images")


@pytest.mark.slow
def test_campaign_trains_from_its_commit_in_priority_order(tmp_path):
    repo = _clone(tmp_path, epochs=2)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    st = campaign.start(repo / "configs" / "tiny-campaign.yaml", repo=repo)
    try:
        # an edit in the working tree after the start must not reach the runs: break the training loop here
        (repo / "ltkit" / "training" / "loop.py").write_text("raise RuntimeError('edited working tree')\n")
        assert st["commit"] == sha and st["jobs"] == 1 and st["threads"] == 1
        driver_env = Path(f"/proc/{st['pid']}/environ").read_bytes().split(b"\0")
        assert f"LTKIT_DATA={st['data']}".encode() in driver_env and st["without_data"] == {}
        assert f"LTKIT_HOME={repo}".encode() in driver_env
        again = campaign.start(repo / "configs" / "tiny-campaign.yaml", repo=repo)
        assert again["already_running"] and again["pid"] == st["pid"]
        _wait(lambda: not campaign._alive(st["pid"]), 240, "the campaign to finish")
    finally:
        campaign.stop(repo=repo, timeout=60)
    assert _states(repo) == {"tiny-grid:la_posthoc:seed0": "done", "tiny-grid:ce:seed0": "done"}
    run = repo / "results" / "tiny" / "cao2019" / "synthetic_exp5" / "tiny_cnn"
    prov = json.loads((run / "ce" / "seed0" / "provenance.json").read_text())
    assert prov["git"]["commit"] == sha and prov["threads"] == 1
    assert (run / "ce" / "seed0" / "train.ipynb").exists()
    assert campaign.campaign_checkpoints_root(repo).is_dir() and not (repo / "checkpoints").exists()
    assert not (repo / ".campaign" / "src" / "checkpoints").exists()
    log = (repo / ".campaign" / "campaign.log").read_text()
    assert log.index("ce:seed0: start") < log.index("la_posthoc:seed0: start")  # waited for its stage one
    lines = campaign.status_lines(repo=repo)
    assert lines[0].startswith("campaign not running") and lines[-1] == "2 done"


@pytest.mark.slow
def test_stop_at_an_epoch_boundary_then_resume(tmp_path):
    repo = _clone(tmp_path, epochs=400)
    st = campaign.start(repo / "configs" / "tiny-campaign.yaml", repo=repo)
    try:
        def progress():
            hits = list(campaign.campaign_checkpoints_root(repo).rglob("ce/seed0/progress.json"))
            return json.loads(hits[0].read_text())["epoch"] if hits else 0
        _wait(lambda: progress() >= 3, 240, "three epochs")
        msg = campaign.stop(repo=repo, timeout=120)
    finally:
        campaign.stop(repo=repo, timeout=60)
    assert msg.startswith("campaign stopped") and not campaign._alive(st["pid"])
    ckpt = next(campaign.campaign_checkpoints_root(repo).rglob("ce/seed0/last.pt"))
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch == json.loads((ckpt.parent / "progress.json").read_text())["epoch"] >= 3
    lines = campaign.status_lines(repo=repo)
    ce = next(line for line in lines if "tiny-grid:ce:seed0" in line)
    assert ce.startswith("partial") and f"epoch {epoch}/400" in ce
    assert "waiting  tiny-grid:la_posthoc:seed0" in "\n".join(lines)
    assert not (repo / "results" / "tiny" / "cao2019" / "synthetic_exp5" / "tiny_cnn" / "ce" / "seed0" / "metrics.json").exists()
    # started again: the run resumes from its checkpoint (a second launch in its history), not from epoch 0
    grid = repo / "configs" / "tiny-grid.yaml"
    spec = yaml.safe_load(grid.read_text())
    assert spec["base"]["epochs"] == 400
    st2 = campaign.start(repo / "configs" / "tiny-campaign.yaml", repo=repo)
    try:
        _wait(lambda: progress() > epoch, 120, "the resumed run's next epoch")
        history = torch.load(ckpt, weights_only=True)["history"]
        assert [r["epoch"] for r in history] == list(range(len(history)))
        assert {r["launch"] for r in history} == {1, 2} and history[epoch]["launch"] == 2
    finally:
        campaign.stop(repo=repo, timeout=120)
    assert not campaign._alive(st2["pid"])
