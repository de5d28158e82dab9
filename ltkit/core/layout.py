"""Where everything lives: the repository, the data, and a run's results and checkpoint folders.

One module answers every "where is ...?" so that no other module re-derives a
path by counting parents or replacing strings. A run's folder is
``<root>/<protocol>/<data tag>/<model>/<method>/seed<k>`` under both the results
root (what the book reads, committed) and the checkpoint root (weights, locks,
the notebook while it runs; never committed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "train.ipynb"
RUN_PATH_KEYS = ("protocol", "data", "model", "method", "seed")

# A run's results folder
METRICS = "metrics.json"
COMPLETE = "complete.json"
ALIAS = "alias.json"
PROVENANCE = "provenance.json"
EXECUTED_NOTEBOOK = "train.ipynb"
# A run's checkpoint folder
LAST = "last.pt"
FINAL = "final.pt"
PROGRESS = "progress.json"
TRAIN_LOCK = ".train.lock"  # held by the process that trains
RUNNER_LOCK = ".lock"  # held by the grid runner that executes the run's notebook
PARTIAL_NOTEBOOK = "train.partial.ipynb"
NOTEBOOK_PARAMETERS = "parameters.yaml"


def home() -> Path:
    """The checkout a grid's relative paths (``results``, ``data_root``) name: ``LTKIT_HOME`` if set, else
    ``REPO``. The CPU campaign trains from a worktree of a fixed commit (``REPO`` is then the worktree) for the
    main checkout, whose results and data its runs serve; it sets ``LTKIT_HOME`` to that checkout."""
    return Path(os.environ.get("LTKIT_HOME") or REPO)


def default_data_root(repo: Path = REPO) -> Path:
    """``LTKIT_DATA`` if set, else the repository's (``repo``'s) ``data/`` folder (git-ignored)."""
    return Path(os.environ.get("LTKIT_DATA") or repo / "data")


def checkpoints_root() -> Path:
    """``LTKIT_CHECKPOINTS`` if set (the CPU campaign sets it, for the runs it launches from its worktree of a
    fixed commit, to :func:`campaign_checkpoints_root`), else the repository's ``checkpoints/`` (git-ignored)."""
    return Path(os.environ.get("LTKIT_CHECKPOINTS") or REPO / "checkpoints")


def user_cache() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/ltkit``: this user's, on this machine; outlives any checkout."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ltkit"


def repository_key(repo: Path = REPO) -> str:
    """What names a repository wherever it is cloned: its first commit (12 hex), the same in every clone of
    it at any path; outside git (an unpacked tarball), a hash of the folder's path."""
    try:
        p = subprocess.run(["git", "-C", str(repo), "rev-list", "--max-parents=0", "HEAD"],
                           capture_output=True, text=True, timeout=30)
        roots = sorted(p.stdout.split()) if p.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        roots = []
    if roots:
        return roots[0][:12]
    return "path-" + hashlib.sha256(str(Path(repo).resolve()).encode()).hexdigest()[:12]


def campaign_checkpoints_root(repo: Path = REPO) -> Path:
    """Where the CPU campaign keeps its checkpoints: ``LTKIT_CHECKPOINTS`` if set, else
    ``<user cache>/<repository key>/checkpoints``. Outside the working tree (laid anew between sessions on
    some machines) and keyed by the repository, not its path, so that a fresh clone of the same repository,
    anywhere on the same machine, resumes each run from its last epoch (issue #38)."""
    env = os.environ.get("LTKIT_CHECKPOINTS")
    return Path(env) if env else user_cache() / repository_key(repo) / "checkpoints"


def default_results_root() -> Path:
    """``LTKIT_RESULTS`` if set (e.g. a scratch folder the tests fill), else the repository's ``results/``."""
    return Path(os.environ.get("LTKIT_RESULTS") or REPO / "results")


def run_path(protocol: str, data_tag: str, model: str, method: str, seed: int) -> str:
    """``<protocol>/<data tag>/<model>/<method>/seed<k>``: a run's folder below any root."""
    return f"{protocol}/{data_tag}/{model}/{method}/seed{seed}"


def sibling_path(path: str, method: str) -> str:
    """The run path of another method with the same protocol, data, model and seed (a stage two's stage one)."""
    parts = path.split("/")
    if len(parts) != len(RUN_PATH_KEYS):
        raise ValueError(f"not a run path: {path!r} (expected {'/'.join('<' + k + '>' for k in RUN_PATH_KEYS)})")
    parts[3] = method
    return "/".join(parts)


def parse_run_dir(run_dir: str | Path) -> dict[str, str | int]:
    """The identity of a run read back from its folder (the last five parts; the root may be anything)."""
    parts = Path(run_dir).parts[-len(RUN_PATH_KEYS):]
    out: dict[str, str | int] = dict(zip(RUN_PATH_KEYS, parts, strict=True))
    out["seed"] = int(str(out["seed"]).removeprefix("seed"))
    return out


def root_of(run_dir: str | Path) -> Path:
    """The root a run folder hangs below (results root or checkpoint root)."""
    return Path(run_dir).parents[len(RUN_PATH_KEYS) - 1]


def sibling_dir(run_dir: str | Path, method: str) -> Path:
    """The folder of another method's run beside ``run_dir`` (same root, protocol, data, model, seed)."""
    d = Path(run_dir)
    return d.parent.parent / method / d.name
