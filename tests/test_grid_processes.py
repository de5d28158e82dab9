"""Kills and signals at bad moments: a killed runner never lets a second train alongside, an interrupt stops the
grid promptly and the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SYN_SMALL, cli, small_spec, write_grid

from ltkit.core.io import is_locked
from ltkit.grid.plan import plan
from ltkit.grid.processes import _papermill, prepare_child
from ltkit.grid.spec import load_grid

REPO = Path(__file__).resolve().parents[1]
SYN = SYN_SMALL
spec, write = small_spec, write_grid


@pytest.mark.slow
def test_killing_the_runner_never_lets_a_second_runner_train_alongside(tmp_path):
    import pandas as pd

    s = spec(tmp_path)
    s["base"].update(epochs=60, source_params={"num_classes": 6, "train_per_class": 120, "test_per_class": 8})
    path = write(tmp_path, s)
    g = load_grid(path)
    ck = g.ckpt_dir(g.runs[0])
    try:
        a = subprocess.Popen([sys.executable, "-m", "ltkit.cli", "grid", "run", str(path)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert _wait(lambda: (ck / "progress.json").exists()), "the first runner never started training"
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        b = cli("grid", "run", path)  # waits for the orphaned notebook to stop, then resumes the run
        assert b.returncode == 0, b.stderr[-2000:]
        hist = pd.read_csv(g.run_dir(g.runs[0]) / "history.csv")
        assert hist["epoch"].tolist() == list(range(60))  # each epoch trained once: no two trainings overlapped
        assert hist["launch"].max() == 2
        assert not is_locked(ck / ".train.lock")
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_interrupt_stops_the_grid_promptly_and_a_rerun_resumes(tmp_path):
    s = spec(tmp_path, methods=["ce", "bs", "focal"])
    s["base"].update(epochs=40, source_params={"num_classes": 6, "train_per_class": 120, "test_per_class": 8})
    path = write(tmp_path, s)
    g = load_grid(path)
    ck = g.ckpt_dir(g.runs[0])
    try:
        a = subprocess.Popen([sys.executable, "-m", "ltkit.cli", "grid", "run", str(path), "--jobs", "1"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=prepare_child)
        assert _wait(lambda: (ck / "progress.json").exists()), "training never started"
        t0 = time.time()
        a.send_signal(signal.SIGINT)
        out, err = a.communicate(timeout=60)
        assert a.returncode == 130, err[-2000:]
        assert time.time() - t0 < 40
        assert "interrupted" in err and "Traceback" not in err
        assert not any((g.run_dir(r) / "metrics.json").exists() for r in g.runs[1:])  # queued runs never started
        assert json.loads((g.run_dir(g.runs[0]) / "provenance.json").read_text()).get("status") != "failed" \
            if (g.run_dir(g.runs[0]) / "provenance.json").exists() else True
        r = cli("grid", "run", path, "--jobs", "1")
        assert r.returncode == 0, r.stderr[-2000:]
        assert {st for _, st, _ in plan(g)} == {"done"}
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)


def test_a_runner_started_in_the_background_still_stops_its_notebooks_with_sigint():
    """Started by a script with ``&``, the runner inherits SIGINT ignored; its children must not, or stopping
    them (SIGINT, then SIGKILL after a grace) always ends in the kill and the notebook is never told."""
    probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "False"  # what a plain child gets
        assert _papermill(probe, dict(os.environ)).stdout.strip() == "True"
    finally:
        signal.signal(signal.SIGINT, old)


def _wait(pred, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_spend_records_the_epochs_of_each_attempt_and_a_lost_checkpoint_is_named(tmp_path):
    """Each attempt's spend entry says from which epoch it trained and, interrupted, to which; a run whose
    earlier attempts left no checkpoint where the grid looks (another machine's disk, a removed cache) says,
    when it starts again from epoch 0, that their epochs are trained again (it said nothing)."""
    import shutil

    s = spec(tmp_path)
    s["base"].update(epochs=40, source_params={"num_classes": 6, "train_per_class": 120, "test_per_class": 8})
    path = write(tmp_path, s)
    g = load_grid(path)
    run, ck = g.run_dir(g.runs[0]), g.ckpt_dir(g.runs[0])

    def epoch():
        try:
            return json.loads((ck / "progress.json").read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            return 0

    try:
        for _ in range(2):  # two interrupted attempts, the second resumed from the first's checkpoint
            before = epoch()
            a = subprocess.Popen([sys.executable, "-m", "ltkit.cli", "grid", "run", str(path)], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=prepare_child)
            assert _wait(lambda b=before: epoch() >= b + 2), "training never got two epochs further"
            a.send_signal(signal.SIGINT)
            assert a.wait(timeout=60) == 130
        first, second = json.loads((run / "spend.json").read_text())["attempts"]
        assert first["outcome"] == second["outcome"] == "interrupted"
        assert first["from_epoch"] == 0 and first["to_epoch"] >= 2
        assert second["from_epoch"] == first["to_epoch"] and second["to_epoch"] >= second["from_epoch"] + 2
        shutil.rmtree(g.ckpt_root)  # the checkpoints are gone (another machine, a removed cache)
        r = cli("grid", "run", path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert ("starts from epoch 0: its 2 earlier interrupted attempt(s)" in r.stderr
                and f"the furthest at epoch {second['to_epoch']}" in r.stderr), r.stderr[-2000:]
        done = json.loads((run / "spend.json").read_text())["attempts"][-1]
        assert done["outcome"] == "done" and done["from_epoch"] == 0 and "to_epoch" not in done
        assert "starts from epoch 0" not in cli("grid", "run", path).stderr  # done: nothing to warn about
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)
