import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("LTKIT_OFFLINE", "1")
# The campaign keeps its checkpoints in the user's cache (${XDG_CACHE_HOME:-~/.cache}/ltkit): the tests get a cache
# of their own, never the one a real campaign on this machine resumes from; torch's hub cache stays where it was.
os.environ.setdefault("TORCH_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"))
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ltkit-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)  # one per session, not one left per run
os.environ.pop("LTKIT_CHECKPOINTS", None)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]

SYN = {"num_classes": 10, "train_per_class": 100, "test_per_class": 20}


@pytest.fixture
def tiny_cfg():
    # fp32: tests compare numbers exactly (and across the CPU loop and the vmap path); bf16 is tested on its own
    return dict(protocol="cao2019", dataset="synthetic", model="tiny_cnn", loss="ce", seed=0, imb_factor=10,
                epochs=2, source_params=dict(SYN), bootstrap=50, precision="fp32")


def cifar_root():
    root = os.environ.get("LTKIT_DATA") or (str(SHARED) if (SHARED / "cifar100" / "train.npz").exists() else None)
    return root


def grid_spec(tmp_path, source_params: dict, prefix: str = "t", **kw) -> dict:
    """A tiny synthetic grid: one epoch of tiny_cnn on cao2019-style data, results under ``tmp_path``."""
    base = {"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 5, "epochs": 1,
            "bootstrap": 20, "source_params": source_params, "precision": "fp32"}
    return {"name": f"{prefix}{abs(hash(str(tmp_path))) % 10**6}", "results": str(tmp_path / "results"), "base": base,
            "seeds": [0], "methods": ["ce", "bs"], **kw}


# The small synthetic data and tiny grid the hardening tests share (6 classes, 40 training images each).
SYN_SMALL = {"num_classes": 6, "train_per_class": 40, "test_per_class": 8}


def small_spec(tmp_path, prefix: str = "h", **kw) -> dict:
    return grid_spec(tmp_path, SYN_SMALL, prefix, **{"methods": ["ce"], **kw})


def write_grid(tmp_path, s, name: str = "g.yaml"):
    import yaml

    p = tmp_path / name
    p.write_text(yaml.safe_dump(s) if not isinstance(s, str) else s)
    return p


def cli(*args, timeout: float = 600, env: dict | None = None):
    """``ltkit`` in a child process, from the repository, one thread (the campaign may hold the other core)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ltkit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
