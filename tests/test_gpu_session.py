"""`make gpu-session`, the one command a lent GPU runs (README "A GPU for one short session"), on the CPU:
a grid stopped by its time limit ships no unfinished run; the next call resumes and ships the finished
run with the commit it was given."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ltkit.grid.spec import load_grid

REPO = Path(__file__).resolve().parents[1]


def session(tmp_path: Path, seconds: int) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    assert make, "make is needed"
    env = {**os.environ, "LTKIT_GIT_COMMIT": "f" * 40}
    args = [make, "-s", "gpu-session", f"GPU_PY={sys.executable}", "GPU_GRID=configs/demo.yaml", "GPU_ONLY=ce",
            "GPU_SEEDS=0", f"GPU_RESULTS={tmp_path / 'res'}", f"GPU_OUT={tmp_path / 'out'}",
            "GPU_ARGS=--set epochs=2", f"GPU_SECONDS={seconds}"]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def shipped(tmp_path: Path) -> dict[str, bytes]:
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.slow
def test_gpu_session_stops_at_its_time_and_ships_only_finished_runs(tmp_path):
    ckpt = load_grid(REPO / "configs" / "demo.yaml", results=tmp_path / "res").ckpt_root
    try:
        cut = session(tmp_path, seconds=4)  # stopped (SIGINT, as Ctrl-C) before the run can finish
        assert cut.returncode == 0, cut.stdout[-2000:] + cut.stderr[-2000:]
        assert not [n for n in shipped(tmp_path) if n.endswith("metrics.json")]  # nothing unfinished shipped
        full = session(tmp_path, seconds=300)
        assert full.returncode == 0, full.stdout[-2000:] + full.stderr[-2000:]
        files = shipped(tmp_path)
        run = "./cao2019/synthetic_exp20/tiny_cnn/ce/seed0/"
        assert {run + f for f in ("metrics.json", "provenance.json", "history.csv", "train.ipynb")} <= set(files)
        prov = json.loads(files[run + "provenance.json"])
        assert prov["git"]["commit"] == "f" * 40 and prov["parameters"]["epochs"] == 2  # the commit it was given
        status = (tmp_path / "out" / "status.txt").read_text()
        assert "done" in status and (tmp_path / "out" / "grid.log").exists()
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
