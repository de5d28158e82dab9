"""Tried as a hostile but fair user would: checkpoints that carry code, paths that escape, kills and
signals at bad moments, stale results, and bad input that must give one clear line."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import grid_spec

from ltkit.config import ConfigError, make_config
from ltkit.grid import Grid, grid_from_spec, load_grid, plan
from ltkit.io import atomic_write_json, is_locked

REPO = Path(__file__).resolve().parents[1]
SYN = {"num_classes": 6, "train_per_class": 40, "test_per_class": 8}


def spec(tmp_path, **kw):
    return grid_spec(tmp_path, SYN, "h", **{"methods": ["ce"], **kw})


def write(tmp_path, s, name="g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(s) if not isinstance(s, str) else s)
    return p


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ltkit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# --------------------------------------------------------------------------- security


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_checkpoint_with_a_pickle_payload_never_runs(tiny_cfg, tmp_path):
    from ltkit.checkpoint import CheckpointError
    from ltkit.pipeline import run

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
        from ltkit.grid import execute_run

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
    from ltkit.results import environment, git_commit

    monkeypatch.delenv("LTKIT_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path)["commit"] == "unknown"
    monkeypatch.setenv("LTKIT_GIT_COMMIT", "a" * 40)
    env = environment()
    assert env["git"]["commit"] == "a" * 40 and len(env["packages_sha256"]) == 64


# --------------------------------------------------------------------------- kills and signals


def _wait(pred, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


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
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


# --------------------------------------------------------------------------- done, stale, aliases


def test_metrics_alone_is_not_done(tmp_path):
    from ltkit.results import mark_complete, run_status

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


def test_stage_one_checkpoint_of_another_configuration_is_refused(tmp_path):
    from ltkit.grid import _stage1_problem

    s = spec(tmp_path, methods=["ce", {"method": "lap", "procedure": "la_posthoc", "stage1": "ce"}])
    g = grid_from_spec(s)
    other = make_config({**g.runs[0].to_dict(), "lr": 0.5})
    ck = g.ckpt_dir(g.runs[0])
    try:
        assert "is missing" in _stage1_problem(g, g.runs[1])
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


def test_finite_divergence_is_caught(tiny_cfg, monkeypatch):
    import ltkit.train as tr
    from ltkit.checkpoint import non_finite_state
    from ltkit.models import create_model
    from ltkit.pipeline import run

    m = create_model("tiny_cnn", 4)
    m.features[0][1].running_var.fill_(float("inf"))
    assert non_finite_state(m) == ["features.0.1.running_var"]
    monkeypatch.setattr(tr, "DIVERGED_LOSS", 1e-9)
    with pytest.raises(tr.NonFiniteLoss, match="diverged at epoch 0: mean loss"):
        run(tiny_cfg, progress=False)


# --------------------------------------------------------------------------- bad input: one clear line


BAD_GRIDS = {
    "malformed": ("methods: [ce, bs\nbase: {", "not valid YAML at line"),
    "python_tag": ("methods: !!python/object/apply:os.system ['touch /tmp/x']\n", "not valid YAML"),
    "empty": ("", "is empty"),
    "methods_empty": ("methods: []\n", "an empty list"),
    "executor_key": ("executor: slurm\nmethods: [ce]\n", "unknown grid key(s) 'executor'"),
    "typo_source": ("base: {protocol: cao2019, dataset: synthetic, model: tiny_cnn, source_params: {num_clases: 4}}\n",
                    "bad key 'num_clases' in source_params"),
    "typo_model": ("base: {protocol: cao2019, dataset: synthetic, model: tiny_cnn, model_params: {widht: 4}}\n",
                   "bad key 'widht' in model_params"),
}


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_bad_grid_file_is_one_line(tmp_path, case):
    text, match = BAD_GRIDS[case]
    r = cli("grid", "list", write(tmp_path, text))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, r.stderr


def test_bad_paths_and_flags_are_one_line(tmp_path):
    good = write(tmp_path, spec(tmp_path, seeds=[0, 1]))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"methods: [\xff\xfe]\n")
    cases = [(("grid", "list", binary), "not UTF-8"), (("grid", "list", tmp_path), "is a directory"),
             (("grid", "list", tmp_path / "nope.yaml"), "does not exist"),
             (("grid", "list", good, "--seeds", "0,x"), "bad value for --seeds: '0,x'"),
             (("grid", "list", good, "--seeds", "7"), "accepted: the grid's seeds 0, 1"),
             (("grid", "list", good, "--only", "bs"), "bad value for --only: bs (accepted: ce)"),
             (("grid", "run", good, "--jobs", "0"), "'0' is not an integer >= 1"),
             (("grid", "list", good, "--set", "seed=3", "--set", "epochs"), "accepted: key=value")]
    for args, match in cases:
        r = cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and match in r.stderr, (args, r.stderr)


def test_scientific_notation_is_a_number(tmp_path):
    g = load_grid(write(tmp_path, "base: {protocol: cao2019, dataset: synthetic, model: tiny_cnn, lr: 1e-3}\n"
                                  "methods: [ce]\n"))
    assert g.runs[0].lr == 0.001


def test_set_that_collapses_an_axis_says_so(tmp_path):
    s = spec(tmp_path, axes={"imb_factor": [10, 100]})
    r = cli("grid", "list", write(tmp_path, s), "--set", "imb_factor=100")
    assert r.returncode == 2 and "--set imb_factor overrides the grid's axis 'imb_factor'" in r.stderr


def test_disk_error_fails_the_run_not_the_grid(tmp_path, monkeypatch):
    import ltkit.grid as grid_mod

    g = grid_from_spec(spec(tmp_path, methods=["ce", "bs"]))

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(grid_mod, "atomic_write_text", full_disk)
    summary = grid_mod.run_grid(g, stagger=0)
    assert len(summary["failed"]) == 2
    prov = json.loads((g.run_dir(g.runs[0]) / "provenance.json").read_text())
    assert prov["status"] == "failed" and "No space left" in prov["error"]


# --------------------------------------------------------------------------- folder data


def _folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for c, n in (("cat", 6), ("dog", 3)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_class_linking_back_into_the_data_is_refused(tmp_path):
    from ltkit.data import DataError
    from ltkit.folder import decode_folder

    root = _folder(tmp_path)
    (root / "loop").symlink_to(root, target_is_directory=True)
    with pytest.raises(DataError, match="symbolic link.*counted twice"):
        decode_folder(root, 8, progress=False)


def test_folder_truncated_cache_is_rebuilt_and_bomb_skipped(tmp_path, monkeypatch):
    from PIL import Image

    from ltkit.folder import decode_folder

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "cat" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4,096 > 2 x 1,000: a "bomb"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        x, y, names, skipped = decode_folder(root, 8, progress=False)
    assert skipped == ["cat/bomb.png"] and len(y) == 9
    (cache,) = (root / ".ltkit-cache").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable.*decoding the images again"):
        x2, y2, _, _ = decode_folder(root, 8, progress=False)
    assert np.array_equal(x, x2)


def test_grid_dataclass_is_unchanged_for_callers(tmp_path):
    g = Grid("n", tmp_path, [])
    assert g.ckpt_root.name.startswith("n-")


def test_runs_per_gpu_follow_the_measured_peak_memory():
    from ltkit.grid import run_memory_gib

    big, small = run_memory_gib(["convnext_base", "resnet32"]), run_memory_gib(["resnet32"])
    assert big > 17 and small == 2.0  # ConvNeXt-Base's measured 17 GiB peak decides a mixed grid
    assert run_memory_gib(["mobilenet_v2"]) < run_memory_gib(["convnext_base"])


def test_offline_grid_stops_before_any_run_with_one_message(tmp_path, monkeypatch):
    """The thesis grid offline: one check per backbone and data source, in seconds, nothing written."""
    import ltkit.models as models_mod
    from ltkit.grid import run_grid

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(models_mod, "_reachable", lambda host: False)
    g = load_grid(REPO / "configs" / "thesis.yaml", {"data_root": str(tmp_path / "nodata")}, tmp_path / "res")
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        run_grid(g)
    msg = str(err.value)
    assert time.time() - t0 < 60 and "\n" not in msg
    for needle in ("cannot start the grid", "LTKIT_DATA", "TORCH_HOME", "HF_HOME", "resnet50", "mobilenet_v2",
                   "convnext_base", "vit_b_16"):
        assert needle in msg, needle
    assert not (tmp_path / "res").exists()  # no failed-run folders


def test_offline_data_stops_the_cli_in_seconds(tmp_path):
    s = spec(tmp_path)
    s["base"].update(dataset="cifar100", data_root=str(tmp_path / "nodata"), source_params={})
    r = cli("grid", "run", write(tmp_path, s), timeout=120)
    assert r.returncode == 2 and "cannot start the grid: cifar100: no data under" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_tensorboard_scalars_for_a_demo_run(tmp_path):
    """The option on: event files appear beside the run's checkpoint and read back as the history."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ltkit.pipeline import run

    cfg = {"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 10, "epochs": 3,
           "source_params": SYN, "bootstrap": 20, "tensorboard": True, "seed": 0}
    r = run(cfg, ckpt_dir=tmp_path / "ck", progress=False)
    ea = EventAccumulator(str(tmp_path / "ck" / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/train_loss", "lr/lr", "val/val_top1", "val/medium", "val/few", "time/epoch_seconds"} <= tags
    loss = [e.value for e in ea.Scalars("train/train_loss")]
    assert [e.step for e in ea.Scalars("train/train_loss")] == [0, 1, 2]
    assert np.allclose(loss, r.history["train_loss"].to_numpy(), rtol=1e-6)
    assert make_config(cfg).fingerprint() == make_config({**cfg, "tensorboard": False}).fingerprint()


def test_alias_of_a_failed_or_edited_ce_run_is_not_shown_as_done(tmp_path):
    from ltkit.results import mark_complete, record_failure, run_status, write_alias

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
