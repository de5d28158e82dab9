"""Tried as a hostile but fair user would: checkpoints that carry code, names and links that escape their folder,
files others must read, a commit that is never guessed."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import SYN_SMALL, cli, small_spec, write_grid

from ltkit.config.fields import ConfigError
from ltkit.core.io import atomic_write_json
from ltkit.grid.plan import plan
from ltkit.grid.spec import grid_from_spec, load_grid

REPO = Path(__file__).resolve().parents[1]
SYN = SYN_SMALL
spec, write = small_spec, write_grid


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_checkpoint_with_a_pickle_payload_never_runs(tiny_cfg, tmp_path):
    from ltkit.training.checkpoint import CheckpointError
    from ltkit.training.pipeline import run

    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "evil": _Payload(str(marker))}, ckpt / "last.pt")
    with pytest.raises(CheckpointError, match="not a plain-tensor checkpoint"):
        run(tiny_cfg, ckpt_dir=ckpt, progress=False)
    assert not marker.exists()
    # the same for a stage-one checkpoint read by a stage-two method
    s1 = tmp_path / "ce" / "seed0"
    s1.mkdir(parents=True)
    with open(s1 / "final.pt", "wb") as fh:
        pickle.dump({"evil": _Payload(str(marker))}, fh)
    with pytest.raises(CheckpointError, match=r"final.pt: not a (plain-tensor|readable) checkpoint.*re-run 'ce' with --force"):
        run({**tiny_cfg, "procedure": "la_posthoc", "stage1": "ce"}, ckpt_dir=tmp_path / "lap" / "seed0", progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "..", ".hidden", ""])
def test_grid_name_cannot_escape_the_checkpoint_folder(tmp_path, name):
    with pytest.raises(ConfigError, match="bad value for 'name'"):
        grid_from_spec(spec(tmp_path, name=name) if name else {**spec(tmp_path), "name": name or 5})


def test_symlinked_lock_is_never_followed(tmp_path):
    g = grid_from_spec(spec(tmp_path))
    ck = g.ckpt_dir(g.runs[0])
    ck.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (ck / ".lock").symlink_to(victim)
    try:
        assert plan(g)[0][1] == "missing"  # status probe: reads nothing through the link, writes nothing
        from ltkit.grid.execute import execute_run

        assert execute_run(g, g.runs[0]) == "busy"
        assert victim.read_text() == "precious"
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)


def test_status_probes_write_nothing(tmp_path):
    path = write(tmp_path, spec(tmp_path, methods=["ce", "bs"]))
    g = load_grid(path)
    for action in ("list", "status"):
        r = cli("grid", action, path)
        assert r.returncode == 0, r.stderr
    assert not g.ckpt_root.exists() and not g.results.exists()


def test_results_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_json(tmp_path / "p.json", {"a": 1})
        assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_checkpoints_are_keyed_by_results_folder(tmp_path):
    a = grid_from_spec(spec(tmp_path), results=tmp_path / "r1")
    b = grid_from_spec(spec(tmp_path), results=tmp_path / "r2")
    assert a.ckpt_dir(a.runs[0]) != b.ckpt_dir(b.runs[0])


def test_commit_is_never_HEAD_outside_a_repository(tmp_path, monkeypatch):
    from ltkit.runs.provenance import environment, git_commit

    monkeypatch.delenv("LTKIT_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path)["commit"] == "unknown"
    monkeypatch.setenv("LTKIT_GIT_COMMIT", "a" * 40)
    env = environment()
    assert env["git"]["commit"] == "a" * 40 and len(env["packages_sha256"]) == 64
