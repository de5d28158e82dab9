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


QUEUE = [{"grid": "tiny-grid.yaml", "methods": ["la_posthoc"], "seeds": [0]},  # waits for ce seed 0
         {"grid": "tiny-grid.yaml", "methods": ["ce"], "seeds": [0]}]


def _clone(tmp_path: Path, epochs: int, name: str = "repo", queue: list[dict] | None = None) -> Path:
    """A clone of this repository's HEAD plus the working tree's ltkit/ and notebooks/ (what is under test),
    with a tiny grid and campaign (``queue``, else :data:`QUEUE`) committed."""
    repo = tmp_path / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    for sub in ("ltkit", "notebooks", "configs"):
        _copytree(REPO / sub, repo / sub)
    grid = {"name": "tinycamp", "results": "results/tiny",
            "base": {"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 5,
                     "epochs": epochs, "bootstrap": 20, "precision": "fp32", "source_params": SRC},
            "seeds": [0, 1], "methods": ["ce", "bs", {"procedure": "la_posthoc", "stage1": "ce"}]}
    (repo / "configs" / "tiny-grid.yaml").write_text(yaml.safe_dump(grid))
    camp = {"name": "tiny", "jobs": 1, "threads": 1, "queue": queue or QUEUE}
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


def test_start_and_status_name_where_the_split_came_from_and_how_to_measure_an_unmeasured_cpu(monkeypatch, capsys):
    """On a CPU that ``cpu.json`` has not measured the campaign trains one run on every core; ``start`` says so and
    names the one-round benchmark that decides it, and ``status`` names the split's source."""
    from ltkit.cli import main

    monkeypatch.setattr(campaign, "measured_cpu_split", lambda: None)
    unmeasured = campaign._split_source((None, None), (1, 2))
    assert unmeasured.startswith("unmeasured CPU (") and unmeasured.endswith("cores): one run on every core")
    assert campaign._split_source((1, None), (1, 2)) == "as asked"
    monkeypatch.setattr(campaign, "measured_cpu_split", lambda: (2, 1))
    assert campaign._split_source((None, None), (2, 1)) == "this CPU's measured best"
    assert campaign._split_source((1, 2), (1, 2)) == "as asked"
    state = {"pid": 1, "commit": "a" * 40, "jobs": 1, "threads": 2, "log": "campaign.log", "split": unmeasured}
    monkeypatch.setattr(campaign, "start", lambda *a, **k: state)
    assert main(["campaign", "start", "configs/campaign-cpu.yaml"]) == 0
    assert "benchmarks/cpu.py --rounds 1" in capsys.readouterr().err
    monkeypatch.setattr(campaign, "start", lambda *a, **k: {**state, "split": "this CPU's measured best"})
    assert main(["campaign", "start", "configs/campaign-cpu.yaml"]) == 0
    assert "benchmarks/cpu.py" not in capsys.readouterr().err


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


def test_status_on_a_fresh_clone_shows_what_the_committed_results_hold(tmp_path, monkeypatch):
    """Before any start (a fresh clone, or a machine whose .campaign/ is gone) status used to print one line; it
    now lists configs/campaign-cpu.yaml's queue, done where results/ holds the run and queued elsewhere."""
    repo = _clone(tmp_path, epochs=2)
    lines = campaign.status_lines(repo=repo)
    assert lines[0] == "no campaign has been started here (make campaign); configs/campaign-cpu.yaml:"
    camp = campaign.load_campaign(repo / "configs" / "campaign-cpu.yaml")
    assert len(lines) == len(camp.queue) + 3
    assert "done     cao2019-cifar100-if100:ce:seed0  [balanced top-1 0.3878]" in lines  # committed
    assert all(line.split()[0] in ("done", "queued", "waiting") for line in lines[1:-2])
    assert lines[-1].startswith("left: about ") and "finished run(s), none training now" in lines[-1]
    assert not any("not committed" in line for line in lines)
    # status never plans a split: a shell's OMP_NUM_THREADS that a start would refuse leaves it as it is
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert campaign.status_lines(repo=repo) == lines
    monkeypatch.delenv("OMP_NUM_THREADS")
    # a finished run whose folder git does not hold as it is: said, so that it is committed before the tree goes
    run = repo / "results" / "cao2019" / "cifar100_exp100" / "resnet32" / "ce" / "seed0"
    (run / "spend.json").write_text((run / "spend.json").read_text() + "\n")
    (repo / "results" / "cao2019" / "cifar100_exp100" / "resnet32" / "ce" / "seed1" / "new.txt").write_text("x")
    marked = [line for line in campaign.status_lines(repo=repo) if "not committed" in line]
    assert marked == ["done     cao2019-cifar100-if100:ce:seed0  [balanced top-1 0.3878; not committed]",
                      next(line for line in marked if ":ce:seed1" in line)] and len(marked) == 2
    (repo / "configs" / "campaign-cpu.yaml").unlink()
    assert campaign.status_lines(repo=repo) == ["no campaign has been started here (make campaign)"]


def test_status_says_how_long_the_queue_has_left_at_the_pace_of_the_runs_training_now():
    """The queue's last line: the epochs of every run not done (a running run's from its progress file) at the
    running runs' epoch time, stage twos at their finished runs' time, ``jobs`` at a time."""
    from ltkit.runs.records import training_seconds
    from ltkit.training.procedures import PROCEDURES

    camp = campaign.load_campaign(REPO / "configs" / "campaign-cpu.yaml")
    grids = campaign._grids(camp, REPO)

    def trains(item) -> bool:
        return bool(PROCEDURES.info(campaign._cfg(grids[item.grid], item).procedure).trainings)

    rows = campaign.item_states(camp, REPO)
    # whatever the committed results hold today, both kinds are left: two finished stage ones and one finished
    # stage two pretend to be queued (the campaign runs stage twos first, so the real queue often has none left)
    done = [i for i, st, _ in rows if st == "done"]
    pretend = {*[i for i in done if trains(i)][-2:], [i for i in done if not trains(i)][-1]}
    rows = [(i, "queued" if i in pretend else st, d) for i, st, d in rows]
    todo = [(i, st) for i, st, _ in rows if st != "done"]
    stage_one = [i for i, _ in todo if trains(i)]
    assert len(stage_one) >= 2 and len(todo) > len(stage_one)
    idle = campaign.time_left(grids, rows, jobs=1)
    assert "none training now" in idle and f"for {len(todo)} run(s), 1 at a time" in idle

    first = stage_one[0]
    ckpt = grids[first.grid].ckpt_dir(campaign._cfg(grids[first.grid], first))
    ckpt.mkdir(parents=True)
    (ckpt / "progress.json").write_text(json.dumps({"epoch": 150, "epochs": 200, "seconds_per_epoch": 36.0}))
    rows = [(i, "running" if i == first else st, d) for i, st, d in rows]
    epochs = 50 + 200 * (len(stage_one) - 1)
    two = {}
    for i, st, _ in rows:
        cfg = campaign._cfg(grids[i.grid], i)
        if st == "done" and not PROCEDURES.info(cfg.procedure).trainings:
            two.setdefault(cfg.procedure, []).append(training_seconds(grids[i.grid].run_dir(cfg)))
    every = [t for ts in two.values() for t in ts]  # a procedure with no finished run yet: any stage two's mean
    stage_two = sum(sum(two.get(p, every)) / len(two.get(p, every)) for p in (campaign._cfg(grids[i.grid], i).procedure
                                                                              for i, _ in todo if i not in stage_one))
    for jobs in (1, 2):
        line = campaign.time_left(grids, rows, jobs=jobs)
        hours = (epochs * 36.0 + stage_two) / jobs / 3600
        assert line.startswith(f"left: about {hours:.0f} h of training for {len(todo)} run(s), {jobs} at a time "
                               f"({epochs} epochs at 36 s each, the pace of the runs training now")
    # the same run stopped part-way (a campaign stopped, or a fresh clone): its last epoch time is this machine's
    # latest pace, not the mean of every finished run (which counts older machines and splits: 16 h for 7 h)
    rows = [(i, "queued" if i == first else st, d) for i, st, d in rows]
    line = campaign.time_left(grids, rows, jobs=1)
    assert line.startswith(f"left: about {(epochs * 36.0 + stage_two) / 3600:.0f} h of training for {len(todo)} run(s), "
                           f"1 at a time ({epochs} epochs at 36 s each, the last pace of the 1 run(s) stopped "
                           "part-way, none training now")
    assert campaign.time_left(grids, [(i, "done", "") for i, _, _ in rows], jobs=2) == ""


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


def test_a_freed_slot_goes_to_a_ready_stage_two_before_queued_stage_ones():
    """The order, alone: stage twos first, queue order kept within stage twos and within stage ones."""
    items = [campaign.Item("g.yaml", m, s) for m, s in
             [("ce", 1), ("la", 0), ("crt", 0), ("ce_drw", 0), ("las", 0), ("crt", 1)]]
    got = campaign.launch_order(items, lambda i: i.method in ("crt", "las"))
    assert [(i.method, i.seed) for i in got] == [("crt", 0), ("las", 0), ("crt", 1), ("ce", 1), ("la", 0), ("ce_drw", 0)]


@pytest.mark.slow
def test_campaign_trains_from_its_commit_in_priority_order(tmp_path):
    # one slot; bs is queued before la_posthoc, yet la_posthoc (a stage two) takes the slot ce frees
    queue = [{"grid": "tiny-grid.yaml", "methods": ["ce", "bs", "la_posthoc"], "seeds": [0]}]
    repo = _clone(tmp_path, epochs=2, queue=queue)
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
    assert _states(repo) == {"tiny-grid:ce:seed0": "done", "tiny-grid:bs:seed0": "done",
                             "tiny-grid:la_posthoc:seed0": "done"}
    run = repo / "results" / "tiny" / "cao2019" / "synthetic_exp5" / "tiny_cnn"
    prov = json.loads((run / "ce" / "seed0" / "provenance.json").read_text())
    assert prov["git"]["commit"] == sha and prov["threads"] == 1
    assert (run / "ce" / "seed0" / "train.ipynb").exists()
    assert campaign.campaign_checkpoints_root(repo).is_dir() and not (repo / "checkpoints").exists()
    assert not (repo / ".campaign" / "src" / "checkpoints").exists()
    log = (repo / ".campaign" / "campaign.log").read_text()
    assert log.index("ce:seed0: start") < log.index("la_posthoc:seed0: start")  # waited for its stage one
    assert log.index("la_posthoc:seed0: start") < log.index("bs:seed0: start")  # then went ahead of bs
    lines = campaign.status_lines(repo=repo)
    assert lines[0].startswith("campaign not running") and lines[-1] == "3 done"
    assert "1 x 1 thread(s) (as asked), started" in lines[0]  # the campaign file's jobs and threads


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


def _cli_in(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ltkit`` from a clone (its own ltkit: the clone's REPO), as a user types it there."""
    import os
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    return subprocess.run([sys.executable, "-m", "ltkit.cli", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_broken_or_unprovable_state_never_signals_a_stranger_and_never_tracebacks(tmp_path):
    """Issue #38: a state without the process start time (older ltkit) naming a live unrelated process is not a
    running campaign (it was signalled before); a hand-broken state is named as such, no traceback; a driver that
    will not stop makes `stop --timeout` exit 1 (it exited 0)."""
    import sys

    repo = _clone(tmp_path, epochs=2)
    (repo / ".campaign").mkdir()
    state = repo / ".campaign" / "state.json"
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        state.write_text(json.dumps({"pid": stranger.pid, "campaign": "configs/tiny-campaign.yaml", "commit": "0" * 40,
                                     "jobs": 1, "threads": 1, "started": "then", "log": "x"}))
        st = _cli_in(repo, "campaign", "status")
        assert st.returncode == 0 and st.stdout.startswith("campaign not running"), st.stdout + st.stderr
        sp = _cli_in(repo, "campaign", "stop", "--timeout", "1")
        assert sp.returncode == 0 and "no campaign is running" in sp.stdout
        time.sleep(0.5)
        assert stranger.poll() is None  # never signalled
        for broken in ('{"pid": "x"}', "[]", '{"pid": 12'):
            state.write_text(broken)
            for args in (["status"], ["stop", "--timeout", "1"]):
                p = _cli_in(repo, "campaign", *args)
                assert "Traceback" not in p.stderr and p.returncode == 0, p.stderr
                assert "state.json is" in p.stdout and ("unreadable" in p.stdout or "not a campaign state" in p.stdout)
    finally:
        stranger.kill()
        stranger.wait()
    # a driver (it holds the driver lock) that ignores SIGTERM: stop gives up after --timeout and says so, exit 1
    lock = campaign.driver_lock(repo)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, signal, sys, time; signal.signal(signal.SIGTERM, "
                               "signal.SIG_IGN); f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert campaign._lock_holder(lock) == holder.pid
        st = _cli_in(repo, "campaign", "status")
        assert st.stdout.startswith(f"campaign running (pid {holder.pid})"), st.stdout
        sp = _cli_in(repo, "campaign", "stop", "--timeout", "1")
        assert sp.returncode == 1 and "still stopping" in sp.stdout, sp.stdout + sp.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_starts_at_once_one_driver_and_a_broken_state_still_finds_and_stops_it(tmp_path):
    """Issue #38: two `campaign start` at the same instant started two drivers; a truncated state file while one
    runs made status say 'not started', start a second driver and stop answer 'stopped' while it trained on; status
    read the working tree's queue and grids, not the campaign's own commit."""
    import sys

    repo = _clone(tmp_path, epochs=400)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "ltkit.cli", "campaign", "start", "configs/tiny-campaign.yaml"]
    procs = [subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    try:
        started = [o for o in outs if "campaign started" in o[0]]
        assert len(started) == 1, outs
        other = next(o for o in outs if o is not started[0])
        assert "already running" in other[0] or "is starting a campaign here right now" in other[1], outs

        def drivers() -> list[int]:
            out = []
            for p in Path("/proc").iterdir():
                try:
                    cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except (OSError, ValueError):
                    continue
                if "campaign run" in cmdline and str(repo) in cmdline:
                    out.append(int(p.name))
            return out

        _wait(lambda: campaign._lock_holder(campaign.driver_lock(repo)) is not None, 60, "the driver's lock")
        time.sleep(2)
        assert len(drivers()) == 1
        pid = drivers()[0]
        # the working tree moves on: a grid deleted, the queue edited; status shows the campaign's own queue
        (repo / "configs" / "tiny-grid.yaml").unlink()
        st = _cli_in(repo, "campaign", "status")
        assert st.returncode == 0 and "tiny-grid:ce:seed0" in st.stdout, st.stdout + st.stderr
        subprocess.run(["git", "-C", str(repo), "checkout", "--", "configs/tiny-grid.yaml"], check=True)
        # a truncated state file: still found (its lock), named as unreadable; no second driver; stop stops it
        (repo / ".campaign" / "state.json").write_text('{"pid": ')
        st = _cli_in(repo, "campaign", "status")
        assert st.stdout.startswith(f"campaign running (pid {pid})") and "unreadable" in st.stdout, st.stdout
        again = _cli_in(repo, "campaign", "start", "configs/tiny-campaign.yaml")
        assert again.returncode == 2 and "is running here" in again.stderr and len(drivers()) == 1, again.stderr
        sp = _cli_in(repo, "campaign", "stop", "--timeout", "120", timeout=200)
        assert sp.returncode == 0 and sp.stdout.startswith(f"campaign stopped (pid {pid}"), sp.stdout + sp.stderr
        assert not campaign._alive(pid) and drivers() == []
    finally:
        for p in drivers() if "drivers" in dir() else []:
            __import__("os").kill(p, 9)


@pytest.mark.slow
def test_a_fresh_clone_elsewhere_resumes_the_campaign_from_the_users_cache(tmp_path):
    """Issue #38: the working tree is laid anew between sessions, and runs in flight restarted from epoch 0. The
    campaign's checkpoints now live in the user's cache, keyed by the repository, not its path: stopped after
    epoch 2 in one clone that is then deleted, the run resumes in a fresh clone at another path (launch 2) and
    ends with the very predictions of an uninterrupted run."""
    import os
    import shutil
    import sys

    import numpy as np

    first = _clone(tmp_path, epochs=40, name="first")
    st = campaign.start(first / "configs" / "tiny-campaign.yaml", repo=first)
    root = campaign.campaign_checkpoints_root(first)
    assert not root.is_relative_to(first)  # outside the working tree

    def epoch() -> int:
        hits = list(root.rglob("ce/seed0/progress.json"))
        return json.loads(hits[0].read_text())["epoch"] if hits else 0

    try:
        _wait(lambda: epoch() >= 2, 240, "two epochs")
        assert campaign.stop(repo=first, timeout=120).startswith("campaign stopped")
    finally:
        campaign.stop(repo=first, timeout=60)
    stopped_at = epoch()
    assert 2 <= stopped_at < 40 and not campaign._alive(st["pid"])
    shutil.rmtree(first)

    second = _clone(tmp_path / "elsewhere", epochs=40, name="second")
    assert campaign.campaign_checkpoints_root(second) == root
    st = campaign.start(second / "configs" / "tiny-campaign.yaml", repo=second)
    try:
        _wait(lambda: not campaign._alive(st["pid"]), 600, "the campaign to finish")
    finally:
        campaign.stop(repo=second, timeout=60)
    run = second / "results" / "tiny" / "cao2019" / "synthetic_exp5" / "tiny_cnn" / "ce" / "seed0"
    hist = __import__("pandas").read_csv(run / "history.csv")
    assert hist["launch"].iloc[0] == 1 and hist["launch"].iloc[-1] == 2 and hist["epoch"].tolist() == list(range(40))
    # the same run, uninterrupted, elsewhere
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(second), "LTKIT_CHECKPOINTS": str(tmp_path / "ref-ck")}
    p = subprocess.run([sys.executable, "-m", "ltkit.cli", "grid", "run", "configs/tiny-grid.yaml", "--only", "ce",
                        "--seeds", "0", "--results", str(tmp_path / "ref"), "--jobs", "1", "--threads", "1"],
                       cwd=second, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    ref = next((tmp_path / "ref").rglob("ce/seed0"))
    with np.load(run / "predictions.npz") as a, np.load(ref / "predictions.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert json.loads((run / "metrics.json").read_text())["balanced.top1"] == \
        json.loads((ref / "metrics.json").read_text())["balanced.top1"]
