"""Checkpoints (ltkit.training.checkpoint): a stage two refuses another configuration's or an unreadable stage
one; divergence is caught where the loss stays finite."""

from pathlib import Path

import pytest
import torch
from conftest import SYN_SMALL, small_spec, write_grid

from ltkit.grid.spec import grid_from_spec
from ltkit.training.check import make_config

REPO = Path(__file__).resolve().parents[1]
SYN = SYN_SMALL
spec, write = small_spec, write_grid


def test_stage_one_checkpoint_of_another_configuration_is_refused(tmp_path):
    from ltkit.grid.execute import _stage1_problem

    s = spec(tmp_path, methods=["ce", {"method": "lap", "procedure": "la_posthoc", "stage1": "ce"}])
    g = grid_from_spec(s)
    other = make_config({**g.runs[0].to_dict(), "lr": 0.5})
    ck = g.ckpt_dir(g.runs[0])
    theirs = g.campaign_ckpt_dir(g.runs[0])  # a stage one the campaign trained: its final.pt in the user cache
    try:
        assert "is missing" in _stage1_problem(g, g.runs[1]) and "campaign" not in _stage1_problem(g, g.runs[1])
        theirs.mkdir(parents=True)
        torch.save({"model": {}}, theirs / "final.pt")
        msg = _stage1_problem(g, g.runs[1])
        assert f"{ck / 'final.pt'} is missing" in msg and f"the campaign's checkpoint of that run is {theirs / 'final.pt'}" in msg
        root = theirs.parents[len(Path(g.runs[0].run_path()).parts)]
        assert msg.endswith(f"LTKIT_CHECKPOINTS={root} (or queue it in the campaign)")
        assert make_grid_with_root(s, root).ckpt_dir(g.runs[0]) == theirs  # what that setting makes it read
        ck.mkdir(parents=True)
        final = {"model": {}, "model_name": "tiny_cnn", "config": {}}
        torch.save({**final, "fingerprint": other.fingerprint()}, ck / "final.pt")
        assert "another configuration" in _stage1_problem(g, g.runs[1])
        (ck / "final.pt").write_bytes((ck / "final.pt").read_bytes()[:40])
        msg = _stage1_problem(g, g.runs[1])
        assert "not a readable checkpoint: truncated or corrupt" in msg and str(ck / "final.pt") in msg
        torch.save({"model": {}}, ck / "final.pt")
        assert "lacks model_name, fingerprint, config" in _stage1_problem(g, g.runs[1])
        torch.save({**final, "fingerprint": g.runs[0].fingerprint()}, ck / "final.pt")
        assert _stage1_problem(g, g.runs[1]) is None
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)
        shutil.rmtree(theirs.parents[len(Path(g.runs[0].run_path()).parts) - 1], ignore_errors=True)


def make_grid_with_root(s: dict, root: Path):
    """The same grid as a stage two sees it with ``LTKIT_CHECKPOINTS=root``."""
    g = grid_from_spec(s)
    g.checkpoints = root
    return g


def test_finite_divergence_is_caught(tiny_cfg, monkeypatch):
    import ltkit.training.loop as tr
    from ltkit.models.factories import create_model
    from ltkit.training.checkpoint import non_finite_state
    from ltkit.training.pipeline import run

    m = create_model("tiny_cnn", 4)
    m.features[0][1].running_var.fill_(float("inf"))
    assert non_finite_state(m) == ["features.0.1.running_var"]
    monkeypatch.setattr(tr, "DIVERGED_LOSS", 1e-9)
    with pytest.raises(tr.NonFiniteLoss, match="diverged at epoch 0: mean loss"):
        run(tiny_cfg, progress=False)
