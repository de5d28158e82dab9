"""Nothing lost (issue #27): a forced re-run that fails leaves the finished result current and records the
attempt; unreadable checkpoint files get one line and stay untouched; a killed two-expert run is partial
with its expert and epoch, and resumes. Real processes and files throughout."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cli, grid_spec

from ltkit.grid.spec import load_grid
from ltkit.runs.records import SPEND

REPO = Path(__file__).resolve().parents[1]
SYN = {"num_classes": 6, "train_per_class": 40, "test_per_class": 8}


def grid_at(tmp_path: Path, results: Path, **kw) -> Path:
    s = grid_spec(tmp_path, SYN, "n", **{"methods": ["ce"], **kw})
    s["results"] = str(results)
    s["base"]["precision"] = "fp32"
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """The result's files (spend.json, the record of what every attempt cost, grows with each attempt)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != SPEND}


def outcomes(folder: Path) -> list[str]:
    return [a["outcome"] for a in json.loads((folder / SPEND).read_text())["attempts"]]


@pytest.mark.slow
def test_a_forced_rerun_that_diverges_leaves_the_result_current(tmp_path):
    path = grid_at(tmp_path, tmp_path / "results")
    g = load_grid(path)
    cfg = g.runs[0]
    run_dir, ckpt = g.run_dir(cfg), g.ckpt_dir(cfg)
    try:
        assert cli("grid", "run", path).returncode == 0
        before, ckpt_before = snapshot(run_dir), (ckpt / "last.pt").read_bytes()
        r = cli("grid", "run", path, "--force", "--set", "lr=1.0e+30", "--set", "epochs=3")
        assert r.returncode == 1 and "FAILED forced re-run" in r.stderr and "stays current" in r.stderr
        after = snapshot(run_dir)
        assert {k: after[k] for k in before} == before  # every file of the finished result, byte for byte
        (failed,) = [k for k in after if k.startswith("provenance.json.failed-")]
        stamp = failed.split(".failed-")[1]
        prov = json.loads(after[failed])
        assert prov["status"] == "failed" and ("non-finite" in prov["error"] or "diverged" in prov["error"])
        assert f"train.ipynb.failed-{stamp}" in after
        assert outcomes(run_dir) == ["done", "failed"]  # what the failed attempt cost is kept too
        assert (ckpt / "last.pt").read_bytes() == ckpt_before  # the finished run's checkpoint is current again
        assert (ckpt / f"last.pt.failed-{stamp}").exists() or (ckpt / f"forced-output.failed-{stamp}").exists()
        st = cli("grid", "status", path)
        line = next(x for x in st.stdout.splitlines() if cfg.run_path() in x)
        assert line.startswith("done") and f"forced re-run {stamp} failed, this result kept" in line
        again = cli("grid", "run", path)  # a plain run does not train it again
        assert again.returncode == 0 and "skipped 1" in again.stdout
        # a forced run that completes in full replaces it, keeping the old result as a generation
        assert cli("grid", "run", path, "--force").returncode == 0
        final = snapshot(run_dir)
        assert any(k.startswith("metrics.json.replaced-") and final[k] == before["metrics.json"] for k in final)
        assert json.loads(final["complete.json"])["fingerprint"] == cfg.fingerprint()
        assert not (ckpt / "forced-output").exists()
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_a_forced_rerun_on_a_full_disk_leaves_the_result_current(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        path = grid_at(tmp_path, disk / "results")
        env = {"LTKIT_CHECKPOINTS": str(disk / "checkpoints")}
        assert cli("grid", "run", path, env=env).returncode == 0
        g = load_grid(path)
        run_dir = g.run_dir(g.runs[0])
        before = snapshot(run_dir)
        free = shutil.disk_usage(disk).free
        with open(disk / "ballast", "wb") as fh:  # leave 96 KiB: a record fits, a checkpoint does not
            fh.write(b"\0" * (free - 96 * 1024))
        r = cli("grid", "run", path, "--force", env=env)
        assert r.returncode == 1 and "No space left on device" in r.stderr + r.stdout
        after = snapshot(run_dir)
        assert {k: after[k] for k in before} == before
        assert any(k.startswith("provenance.json.failed-") for k in after)
        st = cli("grid", "status", path, env=env)
        line = next(x for x in st.stdout.splitlines() if g.runs[0].run_path() in x)
        assert line.startswith("done") and "failed, this result kept" in line
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("content, words", [
    (b"", "the file is empty"),
    ("tensor", "holds a Tensor, not a mapping"),
])
def test_unreadable_checkpoints_give_one_line_and_stay_untouched(tmp_path, content, words):
    path = grid_at(tmp_path, tmp_path / "results")
    g = load_grid(path)
    last = g.ckpt_dir(g.runs[0]) / "last.pt"
    last.parent.mkdir(parents=True)
    if content == "tensor":
        torch.save(torch.zeros(3), last)
    else:
        last.write_bytes(content)
    data = last.read_bytes()
    try:
        r = cli("grid", "run", path)
        assert r.returncode == 1
        (failed,) = [x for x in r.stderr.splitlines() if "FAILED" in x]
        assert str(last) in failed and words in failed and "--force" in failed and "left untouched" in failed
        assert "Traceback" not in failed and "IndexError" not in r.stderr and "AttributeError" not in r.stderr
        assert last.read_bytes() == data
        # what the line says to do works: --force starts the run again
        assert cli("grid", "run", path, "--force").returncode == 0
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_a_killed_two_expert_run_is_partial_and_resumes(tmp_path):
    path = grid_at(tmp_path, tmp_path / "results", methods=["two_expert"])
    spec = yaml.safe_load(path.read_text())
    spec["base"]["epochs"] = 400
    path.write_text(yaml.safe_dump(spec))
    g = load_grid(path)
    cfg = g.runs[0]
    tail = g.ckpt_dir(cfg) / "tail" / "progress.json"
    proc = subprocess.Popen([sys.executable, "-m", "ltkit.cli", "grid", "run", str(path)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(tail.read_text())["epoch"] >= 3:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the tail expert never reached epoch 3")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        from ltkit.core.io import is_locked

        lock = g.ckpt_dir(cfg) / ".train.lock"
        deadline = time.time() + 60
        while is_locked(lock) and time.time() < deadline:
            time.sleep(0.2)
        epoch = json.loads(tail.read_text())["epoch"]
        st = cli("grid", "status", path)
        line = next(x for x in st.stdout.splitlines() if cfg.run_path() in x)
        assert line.startswith("partial"), line
        assert "expert head: epoch 400/400" in line and f"expert tail: epoch {epoch}/400" in line
        assert cli("grid", "run", path).returncode == 0
        hist = torch.load(tail.with_name("last.pt"), weights_only=True)["history"]
        assert [r["epoch"] for r in hist] == list(range(400)) and hist[-1]["launch"] == 2
        head = torch.load(g.ckpt_dir(cfg) / "head" / "last.pt", weights_only=True)["history"]
        assert {r["launch"] for r in head} == {1}  # the finished expert was not trained again
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_a_forced_rerun_across_file_systems_replaces_the_result_and_a_failed_move_keeps_it(tmp_path):
    """Issue #38: results on a tmpfs, checkpoints on the disk (two devices). A forced re-run's staged result moves
    into results/ (a rename cannot cross devices: copied, fsynced, renamed); the old one stays a generation."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (a tmpfs at /dev/shm) here")
    results = Path(tempfile.mkdtemp(prefix="ltkit-results-", dir=shm))
    try:
        path = grid_at(tmp_path, results / "results")
        env = {"LTKIT_CHECKPOINTS": str(tmp_path / "checkpoints")}
        assert cli("grid", "run", path, env=env).returncode == 0
        g = load_grid(path)
        run_dir = g.run_dir(g.runs[0])
        assert os.stat(run_dir).st_dev != os.stat(tmp_path / "checkpoints").st_dev
        before = snapshot(run_dir)
        r = cli("grid", "run", path, "--force", env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        after = snapshot(run_dir)
        assert any(k.startswith("metrics.json.replaced-") and after[k] == before["metrics.json"] for k in after)
        assert json.loads(after["complete.json"])["fingerprint"] == g.runs[0].fingerprint()
        assert not [k for k in after if ".incoming-" in k]
        st = cli("grid", "status", path, env=env)
        assert next(x for x in st.stdout.splitlines() if g.runs[0].run_path() in x).startswith("done")
        again = cli("grid", "run", path, env=env)
        assert again.returncode == 0 and "skipped 1" in again.stdout  # not trained a third time
    finally:
        shutil.rmtree(results, ignore_errors=True)


def test_a_promotion_that_fails_midway_puts_the_current_result_back(tmp_path, monkeypatch):
    """The renames into place fail after the old result was set aside: the old files come back, byte for byte."""
    from ltkit.grid import execute
    from ltkit.training.check import make_config

    cfg = make_config({"dataset": "synthetic", "model": "tiny_cnn", "epochs": 1})
    run_dir, stage = tmp_path / "run", tmp_path / "stage"
    run_dir.mkdir(), stage.mkdir()
    for name in ("metrics.json", "provenance.json", "complete.json"):
        (run_dir / name).write_text(f"old {name}")
    for name in ("metrics.json", "provenance.json"):
        (stage / name).write_text(f"new {name}")
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if ".incoming-" in str(src) and Path(dst).name == "provenance.json":
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(execute.os, "replace", flaky)
    with pytest.raises(OSError):
        execute._promote(run_dir, stage, "S", cfg)
    for name in ("metrics.json", "provenance.json", "complete.json"):
        assert (run_dir / name).read_text() == f"old {name}"
