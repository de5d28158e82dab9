"""Bad input gives one clear line that names the value and what is accepted, before anything trains; offline,
a grid stops in seconds; a disk error fails a run, not the grid."""

import json
import time
from pathlib import Path

import pytest
from conftest import SYN_SMALL, cli, small_spec, write_grid

from ltkit.config.fields import ConfigError
from ltkit.grid.spec import Grid, grid_from_spec, load_grid

REPO = Path(__file__).resolve().parents[1]
SYN = SYN_SMALL
spec, write = small_spec, write_grid


# --------------------------------------------------------------------------- security


















# --------------------------------------------------------------------------- kills and signals








# --------------------------------------------------------------------------- done, stale, aliases












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
    import ltkit.grid.execute as grid_mod
    from ltkit.grid.executors import run_grid

    g = grid_from_spec(spec(tmp_path, methods=["ce", "bs"]))

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(grid_mod, "atomic_write_text", full_disk)
    summary = run_grid(g, stagger=0)
    assert len(summary["failed"]) == 2
    prov = json.loads((g.run_dir(g.runs[0]) / "provenance.json").read_text())
    assert prov["status"] == "failed" and "No space left" in prov["error"]


# --------------------------------------------------------------------------- folder data








def test_grid_dataclass_is_unchanged_for_callers(tmp_path):
    g = Grid("n", tmp_path, [])
    assert g.ckpt_root.name.startswith("n-")


def test_runs_per_gpu_follow_the_measured_peak_memory():
    from ltkit.grid.executors import run_memory_gib

    big, small = run_memory_gib(["convnext_base", "resnet32"]), run_memory_gib(["resnet32"])
    assert big > 17 and small == 2.0  # ConvNeXt-Base's measured 17 GiB peak decides a mixed grid
    assert run_memory_gib(["mobilenet_v2"]) < run_memory_gib(["convnext_base"])


def test_offline_grid_stops_before_any_run_with_one_message(tmp_path, monkeypatch):
    """The thesis grid offline: one check per backbone and data source, in seconds, nothing written."""
    import ltkit.models.weights as models_mod
    from ltkit.grid.executors import run_grid

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(models_mod, "reachable", lambda url: False)
    g = load_grid(REPO / "configs" / "thesis.yaml", {"data_root": str(tmp_path / "nodata")}, tmp_path / "res")
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        run_grid(g)
    msg = str(err.value)
    assert time.time() - t0 < 60 and "\n" not in msg
    for needle in ("cannot start the grid", "LTKIT_DATA", "TORCH_HOME", "HF_HOME", "resnet50", "mobilenet_v2",
                   "convnext_base", "vit_b_16", "ltkit fetch"):
        assert needle in msg, needle
    assert not (tmp_path / "res").exists()  # no failed-run folders


def test_offline_data_stops_the_cli_in_seconds(tmp_path):
    s = spec(tmp_path)
    s["base"].update(dataset="cifar100", data_root=str(tmp_path / "nodata"), source_params={})
    r = cli("grid", "run", write(tmp_path, s), timeout=120)
    assert r.returncode == 2 and "cannot start the grid: cifar100: no data under" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1



def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`ltkit ... | head` (the reader closes the pipe before ltkit writes) exits 141 like any Unix tool, with
    nothing on stderr: it printed a BrokenPipeError traceback from `print` (or at exit, from the flush)."""
    import os
    import subprocess
    import sys

    good = write(tmp_path, spec(tmp_path, seeds=[0, 1]))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the child starts: its first write meets a broken pipe
    try:
        p = subprocess.run([sys.executable, "-m", "ltkit.cli", "grid", "list", str(good)], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write_end)
    assert p.returncode == 141 and p.stderr == "", p.stderr
    r = cli("grid", "list", good)  # the same command into a pipe that is read: its whole output, rc 0
    assert r.returncode == 0 and "seed" in r.stdout, r.stderr


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(monkeypatch):
    """Only a closed stdout reader is quiet: a broken pipe to a child process (say) must not pass for one."""
    from ltkit import cli as cli_module

    def dispatch(argv):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_module, "_dispatch", dispatch)
    with pytest.raises(BrokenPipeError):
        cli_module.main(["grid", "list", "x.yaml"])
