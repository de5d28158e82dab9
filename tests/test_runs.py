"""What a run is (ltkit.runs.status, the one judge): done needs complete.json, stale, aliases of CE runs; the
book and the grid give the same answer."""

from pathlib import Path

import pytest
import yaml
from conftest import SYN_SMALL, cli, small_spec, write_grid

from ltkit.core.io import atomic_write_json
from ltkit.grid.plan import plan
from ltkit.grid.spec import grid_from_spec, load_grid
from ltkit.training.check import make_config

REPO = Path(__file__).resolve().parents[1]
SYN = SYN_SMALL
spec, write = small_spec, write_grid


def test_metrics_alone_is_not_done(tmp_path):
    from ltkit.runs.status import mark_complete, run_status

    d = tmp_path / "p" / "d" / "m" / "ce" / "seed0"
    atomic_write_json(d / "metrics.json", {"balanced.top1": 0.5, "selected_epoch": 0, "epochs": 1})
    assert run_status(d) == "missing"  # killed between metrics.json and the end of the notebook
    mark_complete(d, "abc")
    assert run_status(d, "abc") == "done" and run_status(d, "other") == "stale"


@pytest.mark.slow
def test_edited_grid_reports_stale_and_force_reruns(tmp_path):
    s = spec(tmp_path, methods=["ce", "bs"])
    path = write(tmp_path, s)
    g = load_grid(path)
    try:
        assert cli("grid", "run", path).returncode == 0
        s["base"]["lr"] = 1e-3
        path.write_text(yaml.safe_dump(s).replace("0.001", "1e-3"))  # written as people write it
        r = cli("grid", "run", path)
        assert r.returncode == 1 and "stale" in r.stderr and "--force" in r.stderr
        assert "stale" in cli("grid", "status", path).stdout
        assert cli("grid", "run", path, "--force").returncode == 0
        assert {st for _, st, _ in plan(load_grid(path))} == {"done"}
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)


def test_no_alias_to_a_ce_run_with_another_configuration(tmp_path):
    s = spec(tmp_path, methods=[{"loss": "ce", "lr": 0.05}, "wce"])
    s["base"]["imb_factor"] = 1
    g = grid_from_spec(s)
    assert [t for _, _, t in plan(g)] == [None, None]  # WCE is CE here, but the CE entry has another lr
    same = grid_from_spec({**s, "methods": ["ce", "wce"]})
    assert plan(same)[1][2] is not None


def test_alias_of_a_failed_or_edited_ce_run_is_not_shown_as_done(tmp_path):
    from ltkit.runs.records import record_failure, write_alias
    from ltkit.runs.status import mark_complete, run_status

    cfg = make_config({"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "loss": "wce", "seed": 0,
                       "imb_factor": 1})
    ce_cfg = make_config({**cfg.to_dict(), "loss": "ce", "method": None})
    root = tmp_path / "res"
    ce_dir, alias_dir = root / ce_cfg.run_path(), root / cfg.run_path()
    write_alias(alias_dir, cfg, ce_cfg.run_path(), "test", ce_cfg.fingerprint())
    record_failure(ce_dir, ce_cfg, "start", 1.0, "boom")
    assert run_status(alias_dir, cfg.fingerprint()) == "alias-pending"  # the CE run failed: nothing stands for it
    atomic_write_json(ce_dir / "metrics.json", {"balanced.top1": 0.5, "selected_epoch": 0, "epochs": 1})
    mark_complete(ce_dir, "fingerprint-of-an-edited-ce-run")
    assert run_status(alias_dir, cfg.fingerprint()) == "alias-pending"  # CE now has another configuration
    mark_complete(ce_dir, ce_cfg.fingerprint())
    assert run_status(alias_dir, cfg.fingerprint()) == "alias"
    assert run_status(alias_dir, "another") == "stale"


def test_the_book_and_the_grid_agree_on_what_is_done(tmp_path):
    """One judge (ltkit.runs.status.run_status): a run the grid calls missing, failed or alias-pending is
    not a finished row of the book, and what the grid calls done is."""
    from ltkit.report import collect, finished
    from ltkit.runs.records import record_failure, write_alias
    from ltkit.runs.status import mark_complete

    g = grid_from_spec({**spec(tmp_path, methods=["ce", "bs", "focal", "wce", "cb"]),
                        "base": {**spec(tmp_path)["base"], "imb_factor": 1}})
    runs = {c.method: c for c in g.runs}
    good = {"balanced.top1": 0.5, "selected_epoch": 0, "epochs": 1}
    d = {m: g.run_dir(c) for m, c in runs.items()}
    atomic_write_json(d["ce"] / "metrics.json", good)
    mark_complete(d["ce"], runs["ce"].fingerprint())  # done
    atomic_write_json(d["focal"] / "metrics.json", good)  # killed before complete.json: not done
    record_failure(d["bs"], runs["bs"], "start", 1.0, "boom")  # failed
    write_alias(d["wce"], runs["wce"], runs["ce"].run_path(), "test", runs["ce"].fingerprint())  # alias of a done CE
    write_alias(d["cb"], runs["cb"], runs["ce"].run_path(), "test", "not-the-ce-fingerprint")  # alias pending
    grid_says = {c.method: str(st) for c, st, _ in plan(g, dedupe=False)}
    df = collect(g.results)
    book_says = dict(zip(df["method"], df["status"].astype(str), strict=True))
    assert grid_says == {"ce": "done", "focal": "missing", "bs": "failed", "wce": "alias", "cb": "alias-pending"}
    assert {m: book_says.get(m, "missing") for m in grid_says} == grid_says
    assert sorted(finished(df)["method"]) == ["ce", "wce"]
    assert finished(df).set_index("method").loc["wce", "balanced.top1"] == 0.5  # the alias shows its CE run's number


def test_a_damaged_spend_record_is_kept_aside_and_its_bad_entries_ignored(tmp_path):
    """spend.json edited by hand or truncated: `grid status` still answers (it raised ValueError on a
    non-numeric `seconds`, AttributeError on a non-object entry), the sums skip what is not an attempt, and
    the next attempt never overwrites a file it cannot read: that file is kept aside."""
    import json

    from ltkit.runs.records import attempts, record_spend

    path = write(tmp_path, spec(tmp_path))
    g = load_grid(path)
    run = g.run_dir(g.runs[0])
    run.mkdir(parents=True)
    good = {"outcome": "interrupted", "seconds": 3600.0, "threads": 1, "cores": 2, "gpus": 0, "device": "cpu"}
    (run / "spend.json").write_text(json.dumps({"attempts": [good, 5, {"outcome": "interrupted", "seconds": "x"},
                                                             {"outcome": "failed", "seconds": -1}]}))
    assert attempts(run) == [good]
    r = cli("grid", "status", path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "0.50 device-hours spent over 1 attempt(s)" in r.stdout, r.stdout  # one thread of two cores, one hour
    record_spend(run, {"outcome": "done", "seconds": 1.0})  # appended; the entries it cannot use stay as they were
    assert len(json.loads((run / "spend.json").read_text())["attempts"]) == 5
    (run / "spend.json").write_text('{"attempts": [{"outcome": "interr')  # truncated
    record_spend(run, {"outcome": "done", "seconds": 2.0})
    aside = list(run.glob("spend.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"attempts": [{"outcome": "interr'
    assert json.loads((run / "spend.json").read_text()) == {"attempts": [{"outcome": "done", "seconds": 2.0}]}


def test_a_lost_checkpoint_is_named_only_when_no_checkpoint_of_the_run_is_left(tmp_path):
    """The warning at a start from epoch 0 needs earlier interrupted attempts and no last.pt at all: a run
    that trains several models keeps its parts' checkpoints in sub-folders (two_expert: head/, tail/), and
    resuming one of them is not a lost checkpoint."""
    import json

    from ltkit.grid.execute import lost_checkpoint

    g = load_grid(write(tmp_path, spec(tmp_path)))
    cfg = g.runs[0]
    run, ck = g.run_dir(cfg), g.ckpt_dir(cfg)
    run.mkdir(parents=True)
    assert lost_checkpoint(g, cfg) is None  # never attempted
    (run / "spend.json").write_text(json.dumps({"attempts": [
        {"outcome": "interrupted", "seconds": 1800.0, "from_epoch": 0, "to_epoch": 12},
        {"outcome": "interrupted", "seconds": 1800.0, "from_epoch": 12, "to_epoch": 70}]}))
    msg = lost_checkpoint(g, cfg)
    assert msg and "starts from epoch 0: its 2 earlier interrupted attempt(s) (1.0 h, the furthest at epoch 70)" in msg
    assert str(ck) in msg
    (ck / "head").mkdir(parents=True)
    (ck / "head" / "last.pt").write_bytes(b"x")
    assert lost_checkpoint(g, cfg) is None  # a part's checkpoint resumes
    (ck / "head" / "last.pt").unlink()
    (ck / "last.pt").write_bytes(b"x")
    assert lost_checkpoint(g, cfg) is None
