"""Packed training (ltkit.packed): N runs as one model give each run what it gets alone.

Two backends. ``loop`` (the CPU default) runs each run's backbone on views of the stacked
weights with the kernels of a run trained alone: every run's weights, history, metrics and
predictions equal its single run's *exactly*, which checks all the bookkeeping (seeds,
samplers, augmentation streams, SEQL's draws, LDAM's cosine head, the DRW switch, the
optimiser state, checkpoints).

``vmap`` (the GPU default) runs the N backbones as grouped convolutions. Its forward is
bit-identical, but the weight gradients sum the same ~65,000 products per weight (batch x
pixels) in another order: about 1e-5 relative after one step (float32's epsilon times the
square root of the terms), which training then carries along, most of all through LDAM,
whose scale s = 30 multiplies every logit difference. Stated tolerance, after 3 epochs of
2 steps (lr 0.01): every weight tensor within RTOL = 1e-2 of its own scale plus ATOL = 2e-5
(measured: at most 1.6e-3, LDAM-DRW), training losses within 1e-3 (measured: 3e-5), and
identical predictions on every test image of the final models.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltkit.config.fields import pack_key
from ltkit.training.check import make_config
from ltkit.training.engine import load_data, make_context, pick_device
from ltkit.training.packed import train_pack
from ltkit.training.packing import packable
from ltkit.training.pipeline import run

RTOL, ATOL = 1e-2, 2e-5


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.double(), b.double()
    return float((a - b).abs().max()) <= RTOL * float(a.abs().max()) + ATOL


def _cfgs(tiny_cfg):
    base = {**tiny_cfg, "epochs": 3, "max_steps": 2, "model": "tiny_cnn", "optimizer": "sgd", "lr": 0.01,
            "protocol": "cao2019"}
    return [make_config({**base, "loss": "ce", "seed": 0}),
            make_config({**base, "loss": "ldam_drw", "sampler": "sqrt", "seed": 1}),  # cosine head, DRW switch
            make_config({**base, "loss": "seql", "sampler": "class_balanced", "seed": 2}),  # draws at random
            make_config({**base, "loss": "focal", "sampler": "progressive", "seed": 3})]


def _contexts(cfgs):
    ds = load_data(cfgs[0])
    ctx0 = make_context(cfgs[0], ds, pick_device("cpu"))
    return [dataclasses.replace(ctx0, cfg=c) for c in cfgs]


HISTORY = ["epoch", "lr", "train_loss", "train_acc", "images", "launch", "val_top1", "val_balanced_acc", "test_top1"]


def test_a_pack_trains_each_run_exactly_as_it_trains_alone(tiny_cfg, tmp_path):
    cfgs = _cfgs(tiny_cfg)
    assert len({pack_key(c) for c in cfgs}) == 1 and all(packable(c) is None for c in cfgs)
    packed = train_pack(_contexts(cfgs), [tmp_path / c.method for c in cfgs], progress=False)  # CPU: loop
    for cfg, fit in zip(cfgs, packed, strict=True):
        alone = run(cfg, progress=False, keep_model=True)
        a, b = alone.model.state_dict(), fit.model.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (cfg.method, k)
        cols = [c for c in HISTORY if c in alone.history]
        assert alone.history[cols].equals(fit.history[cols]), cfg.method
        assert alone.metrics["selected_epoch"] == fit.selected_epoch
        ctx = _contexts([cfg])[0]
        for split in ctx.tests.values():
            assert torch.equal(ctx.predict(alone.model, split), ctx.predict(fit.model, split))
        assert (tmp_path / cfg.method / "last.pt").exists()  # single-run checkpoint format, per run


def test_the_vmap_backend_agrees_within_the_stated_tolerance(tiny_cfg):
    cfgs = _cfgs(tiny_cfg)
    loop = train_pack(_contexts(cfgs), [None] * len(cfgs), progress=False, backend="loop")
    vmap = train_pack(_contexts(cfgs), [None] * len(cfgs), progress=False, backend="vmap")
    for cfg, a_fit, b_fit in zip(cfgs, loop, vmap, strict=True):
        a, b = a_fit.model.state_dict(), b_fit.model.state_dict()
        for k in a:
            assert _close(a[k], b[k]), (cfg.method, k)
        assert np.allclose(a_fit.history["train_loss"], b_fit.history["train_loss"], rtol=1e-3, atol=0), cfg.method
        ctx = _contexts([cfg])[0]
        for split in ctx.tests.values():  # the same predictions, except on numerical ties (top-2 gap < 1e-3)
            la, lb = ctx.predict(a_fit.model, split), ctx.predict(b_fit.model, split)
            top2 = la.topk(2, dim=1).values
            clear = (top2[:, 0] - top2[:, 1]) > 1e-3
            assert torch.equal(la.argmax(1)[clear], lb.argmax(1)[clear]) and clear.float().mean() > 0.9


def test_a_killed_pack_resumes_to_the_same_weights(tiny_cfg, tmp_path, monkeypatch):
    """Kill the pack during epoch 2 of 3 (its checkpoints hold epoch 1), re-launch: same as uninterrupted."""
    import ltkit.training.packed as P

    cfgs = _cfgs(tiny_cfg)
    full = train_pack(_contexts(cfgs), [tmp_path / "a" / c.method for c in cfgs], progress=False)
    ck = [tmp_path / "b" / c.method for c in cfgs]
    real = P.validate

    def killed(ctx, model, epoch, tb=None):
        if epoch == 2:
            raise KeyboardInterrupt  # as Ctrl-C or a kill during the epoch
        return real(ctx, model, epoch, tb)

    monkeypatch.setattr(P, "validate", killed)
    with pytest.raises(KeyboardInterrupt):
        train_pack(_contexts(cfgs), ck, progress=False)
    monkeypatch.undo()
    resumed = train_pack(_contexts(cfgs), ck, progress=False)
    for c, f, r in zip(cfgs, full, resumed, strict=True):
        for k, v in f.model.state_dict().items():
            assert torch.equal(v, r.model.state_dict()[k]), (c.method, k)  # same kernels both times: exact
        assert r.history["launch"].tolist() == [1, 1, 2]
        assert f.history["train_loss"].tolist() == r.history["train_loss"].tolist()


class _NaNLoss(nn.Module):
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y) * float("nan")


def test_a_diverging_run_leaves_its_pack(tiny_cfg, tmp_path, monkeypatch):
    import ltkit.training.packed as P

    cfgs = _cfgs(tiny_cfg)[:2]
    cfgs[1] = dataclasses.replace(cfgs[1], loss="ce", loss_params={"nan": True}, classifier="linear")
    real = P.create_loss
    monkeypatch.setattr(P, "create_loss", lambda name, counts, **p: _NaNLoss() if p.pop("nan", False)
                        else real(name, counts, **p))
    out = train_pack(_contexts(cfgs), [tmp_path / "ok", tmp_path / "nan"], progress=False)
    monkeypatch.undo()
    assert isinstance(out[1], P.NonFiniteLoss) and "rest of its pack goes on" in str(out[1])
    alone = run(cfgs[0], progress=False, keep_model=True)
    for k, v in alone.model.state_dict().items():
        assert torch.equal(v, out[0].model.state_dict()[k]), k


def test_what_cannot_be_packed_says_why(tiny_cfg):
    assert "procedure" in packable(make_config({**tiny_cfg, "procedure": "crt", "stage1": "ce"}))
    assert "oversample" in packable(make_config({**tiny_cfg, "sampler": "oversample"}))
    a, b = make_config({**tiny_cfg, "lr": 0.1}), make_config({**tiny_cfg, "lr": 0.2})
    assert pack_key(a) != pack_key(b)
    with pytest.raises(ValueError, match="share data, model and recipe"):
        train_pack(_contexts([a]) + _contexts([b]), [None, None], progress=False)


def test_run_pack_writes_each_runs_results_as_a_single_run_does(tiny_cfg, tmp_path):
    import json

    from ltkit.runs.records import write_run
    from ltkit.training.pipeline import run_pack

    cfgs = _cfgs(tiny_cfg)[:2]
    results = run_pack(cfgs, [tmp_path / "ck" / c.method for c in cfgs], progress=False)
    for cfg, res in zip(cfgs, results, strict=True):
        alone = run(cfg, progress=False)
        assert pd.Series(res.metrics).equals(pd.Series(alone.metrics))  # every metric and interval, exactly
        assert res.per_class.equals(alone.per_class)
        write_run(tmp_path / "res" / cfg.method, res, "start", 1.0)
        prov = json.loads((tmp_path / "res" / cfg.method / "provenance.json").read_text())
        assert prov["run"]["packed"]["size"] == 2 and "ce/seed0" in prov["run"]["packed"]["with"]
        assert (tmp_path / "ck" / cfg.method / "final.pt").exists()


def test_the_grid_packs_what_it_can_and_writes_the_same_results(tmp_path):
    """pack: 3 on a grid of CE, BS, LDAM-DRW and a stage two: the three stage-one runs train as one
    pack (one process), the stage two starts from the packed CE run's checkpoint, and every number
    equals the same grid run unpacked."""
    import json
    import shutil

    from conftest import grid_spec

    from ltkit.config.fields import ConfigError
    from ltkit.grid.execute import lacks_notebook, record_notebooks
    from ltkit.grid.executors import run_grid
    from ltkit.grid.plan import plan
    from ltkit.grid.spec import grid_from_spec
    from ltkit.report.collect import collect

    methods = ["ce", "bs", "ldam_drw", {"procedure": "la_posthoc", "stage1": "ce"}]
    src = {"num_classes": 6, "train_per_class": 60, "test_per_class": 10}
    got = {}
    for pack in (3, "off"):
        s = grid_spec(tmp_path / str(pack), src, prefix=f"pk{pack}", methods=methods, pack=pack)
        s["base"]["epochs"] = 2
        g = grid_from_spec(s)
        try:
            summary = run_grid(g, stagger=0, notebooks=pack == "off")
            assert len(summary["done"]) == 4, summary
            assert {st for _, st, _ in plan(g)} == {"done"}
            if pack == 3:  # the packed runs' notebooks: executed afterwards, showing the record, changing nothing
                lacking = {r.method for r in g.runs if lacks_notebook(g, r)}
                assert lacking == {"ce", "bs", "ldam_drw"}
                files = {r.method: {f: (g.run_dir(r) / f).read_bytes() for f in ("metrics.json", "provenance.json")}
                         for r in g.runs}
                rec = record_notebooks(g, stagger=0)
                assert sorted(rec["done"]) == sorted(g.run_dir(r).relative_to(g.results).as_posix()
                                                     for r in g.runs if r.method in lacking)
                for r in g.runs:
                    assert {f: (g.run_dir(r) / f).read_bytes() for f in files[r.method]} == files[r.method]
                    cells = json.loads((g.run_dir(r) / "train.ipynb").read_text())["cells"]
                    shown = json.dumps([o for c in cells for o in c.get("outputs", [])])  # outputs, not code
                    assert ("packed into one model" in shown) == (r.method in lacking) and "balanced" in shown
                assert not any(lacks_notebook(g, r) for r in g.runs)
            df = collect(g.results).set_index("method").sort_index()
            got[pack] = df
            provs = {r.method: json.loads((g.run_dir(r) / "provenance.json").read_text()) for r in g.runs}
            packed = {m for m, p in provs.items() if "packed" in p["run"]}
            assert packed == ({"ce", "bs", "ldam_drw"} if pack == 3 else set())
        finally:
            shutil.rmtree(g.ckpt_root, ignore_errors=True)
    cols = [c for c in got["off"].columns if c.startswith(("balanced.", "lt.", "val.")) or c == "selected_epoch"]
    assert got[3][cols].equals(got["off"][cols])
    with pytest.raises(ConfigError, match="bad value for 'pack': 'lots'"):
        grid_from_spec(grid_spec(tmp_path, src, pack="lots"))


def test_packs_are_made_of_runs_that_resume_from_the_same_epoch(tiny_cfg):
    """A run that diverged at epoch 3 of a pack killed at epoch 7 trains alone, not with the others."""
    from ltkit.grid.packing import pack_runs

    cfgs = _cfgs(tiny_cfg)
    epoch = {c.method: (3 if c.method == "seql" else 7) for c in cfgs}
    items = pack_runs(cfgs, 8, lambda c: epoch[c.method])
    assert sorted(len(i) for i in items) == [1, 3]
    assert [c.method for i in items if len(i) == 1 for c in i] == ["seql"]
    assert all(len(i) == 1 for i in pack_runs(cfgs, 1))  # pack: off
    assert sorted(len(i) for i in pack_runs(cfgs, 3)) == [1, 3]  # at most 3 per pack
