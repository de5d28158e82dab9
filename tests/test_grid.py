import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import grid_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltkit.config.fields import ConfigError
from ltkit.core.io import LockHeld, run_lock
from ltkit.grid.executors import run_grid
from ltkit.grid.plan import plan
from ltkit.grid.spec import grid_from_spec, load_grid
from ltkit.report.collect import collect

REPO = Path(__file__).resolve().parents[1]
SYN = {"num_classes": 10, "train_per_class": 60, "test_per_class": 10}


def spec(tmp_path, **kw):
    return grid_spec(tmp_path, SYN, "t", **kw)


def grid_file(tmp_path, s) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def test_grid_typo_fails_before_training(tmp_path):
    bad = spec(tmp_path, methods=["ce", "balanced_softmax"])
    with pytest.raises(ConfigError, match="'balanced_softmax'.*accepted"):
        grid_from_spec(bad)
    with pytest.raises(ConfigError, match="unknown grid key"):
        grid_from_spec({**spec(tmp_path), "sedes": [1]})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["epochs", "lr", "imb_factor", "batch_size", "loss", "model", "seed",
                                        "sampler", "bogus"]),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=6), st.none(),
                                 st.booleans()), max_size=3))
def test_config_loader_fuzz(tmp_path, overrides):
    """Any input either loads or fails with a ConfigError that names the bad key; nothing else escapes."""
    s = spec(tmp_path)
    s["base"] = {**s["base"], **overrides}
    try:
        grid_from_spec(s)
    except ConfigError as exc:
        assert "accepted" in str(exc) or "needs" in str(exc)


def test_dedupe_on_balanced_data(tmp_path):
    s = spec(tmp_path, methods=["ce", "wce", "cb", "bs", "seql", "focal", "ldam"])
    s["base"]["imb_factor"] = 1
    g = grid_from_spec(s)
    aliased = {cfg.method for cfg, _, t in plan(g) if t is not None}
    assert aliased == {"wce", "cb", "bs", "seql"}
    s["base"]["imb_factor"] = 5
    # long-tailed counts: only SEQL, whose rarest class here is still above lambda, stays CE
    assert {cfg.method for cfg, _, t in plan(grid_from_spec(s)) if t is not None} == {"seql"}
    assert not any(t is not None for _, _, t in plan(g, dedupe=False))


def test_run_lock_excludes_second_holder(tmp_path):
    with run_lock(tmp_path / ".lock"):
        with pytest.raises(LockHeld):
            with run_lock(tmp_path / ".lock"):
                pass
    with run_lock(tmp_path / ".lock"):
        pass


@pytest.mark.slow
def test_grid_end_to_end_through_papermill(tmp_path):
    """Runs, skips finished runs, aliases CE twins, records a failure and carries on."""
    s = spec(tmp_path, methods=["ce", "wce", {"method": "boom", "loss": "ce", "lr": 1e30, "optimizer": "sgd"},
                                {"procedure": "la_posthoc", "stage1": "ce",
                                 "procedure_params": {"tau": 1.0}}])
    s["base"]["imb_factor"] = 1  # wce is then CE by construction
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    summary = run_grid(g, stagger=0.2)
    assert sorted(Path(p).parts[-2] for p in summary["done"]) == ["ce", "la_posthoc"]
    assert [Path(p).parts[-2] for p in summary["aliased"]] == ["wce"]
    assert [Path(p).parts[-2] for p in summary["failed"]] == ["boom"]
    df = collect(g.results)
    st_ = dict(zip(df["method"], df["status"], strict=True))
    assert st_ == {"ce": "done", "wce": "alias", "boom": "failed", "la_posthoc": "done"}
    boom = g.results / "cao2019" / "synthetic_balanced" / "tiny_cnn" / "boom" / "seed0"
    prov = json.loads((boom / "provenance.json").read_text())
    assert prov["status"] == "failed" and "NonFiniteLoss" in prov["error"]
    assert (boom / "train.ipynb").exists() and not (boom / "metrics.json").exists()
    ce = g.results / "cao2019" / "synthetic_balanced" / "tiny_cnn" / "ce" / "seed0"
    for f in ("metrics.json", "per_class.csv", "history.csv", "provenance.json", "train.ipynb", "predictions.npz"):
        assert (ce / f).exists(), f
    prov = json.loads((ce / "provenance.json").read_text())
    assert {"git", "torch", "device_name", "start", "end", "wall_seconds", "command", "parameters"} <= set(prov)
    mtime = (ce / "metrics.json").stat().st_mtime
    again = run_grid(load_grid(path), stagger=0.2)
    assert len(again["skipped"]) == 3 and (ce / "metrics.json").stat().st_mtime == mtime
    # the CLI exits non-zero and lists the failure
    cli = subprocess.run([sys.executable, "-m", "ltkit.cli", "grid", "run", str(path)], capture_output=True, text=True)
    assert cli.returncode == 1 and "boom" in cli.stderr
    shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_submitit_debug_executor_runs_grid(tmp_path):
    from ltkit.grid.submitit import RunJob, slurm_parameters, submit_grid

    s = spec(tmp_path, methods=["ce"], slurm={"partition": "gpu", "timeout_min": 30, "array_parallelism": 4})
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    p = slurm_parameters(g)
    assert p["slurm_partition"] == "gpu" and p["timeout_min"] == 30 and p["slurm_array_parallelism"] == 4
    assert p["gpus_per_node"] == 1
    res = submit_grid(g, executor="debug", log_dir=tmp_path / "logs")
    assert res["submitted"] == 1 and not res["failed"]
    assert collect(g.results)["status"].tolist() == ["done"]
    # preemption requeues the same run (which then resumes from its checkpoint)
    from ltkit.grid.submitit import job_runs

    job = RunJob(g.name, str(g.results), job_runs(g, g.runs[0]), g.runs[0].run_path())
    assert job.checkpoint().function.run_path == job.run_path
    # the job carries the resolved configuration: --set overrides reach the node (it never re-reads the YAML)
    g3 = load_grid(path, {"epochs": 3, "imb_factor": 50})
    job3 = RunJob(g3.name, str(g3.results), job_runs(g3, g3.runs[0]), g3.runs[0].run_path())
    path.write_text("name: changed-on-disk\n")  # what the file says later does not matter
    _, cfg3 = job3._grid_and_cfg()
    assert cfg3.epochs == 3 and cfg3.imb_factor == 50 and cfg3.fingerprint() == g3.runs[0].fingerprint()
    with pytest.raises(ConfigError, match="unknown slurm option"):
        slurm_parameters(grid_from_spec(spec(tmp_path, slurm={"partion": "x"})))
    shutil.rmtree(g.ckpt_root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


@pytest.mark.slow
def test_submitit_local_job_preempted_requeued_and_resumed(tmp_path):
    """A submitit-local job gets the preemption signal mid-run: submitit's checkpoint hook requeues it
    and the run resumes from its last epoch (history.csv's ``launch`` goes 1 -> 2, no epoch repeats)."""
    import signal
    import time

    import pandas as pd

    from ltkit.grid.submitit import jobs_file, submit_grid

    s = spec(tmp_path, methods=["ce"])
    s["base"].update(epochs=40, source_params={"num_classes": 10, "train_per_class": 300, "test_per_class": 10})
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    res = submit_grid(g, executor="submitit-local", log_dir=tmp_path / "logs" / "%j", wait=False)
    (run_path, job), = res["jobs"].items()
    assert json.loads(jobs_file(g).read_text())[run_path]["executor"] == "submitit-local"
    last = g.ckpt_dir(g.runs[0]) / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists():
        time.sleep(0.1)
    assert last.exists(), "the job never wrote a checkpoint"
    tasks = _children(job._process.pid)  # the submitit controller's task = the RunJob process
    assert tasks, "no submitit task process found"
    os.kill(tasks[0], signal.SIGUSR2)  # what Slurm sends before preemption / the time limit
    assert job.result() == "done"
    hist = pd.read_csv(g.run_dir(g.runs[0]) / "history.csv")
    assert hist["epoch"].tolist() == list(range(40))
    assert hist["launch"].iloc[0] == 1 and hist["launch"].iloc[-1] == 2, hist["launch"].tolist()
    prov = json.loads((g.run_dir(g.runs[0]) / "provenance.json").read_text())
    assert prov["slurm_log"] and str(tmp_path / "logs") in prov["slurm_log"]
    shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cao2019-cifar100-if100", "cao2019-cifar100-if50", "cao2019-cifar100-if10",
                                  "cao2019-cifar10-if100"])
def test_shipped_cao2019_grid_runs_end_to_end_tiny(name, tmp_path):
    """Every method of a shipped grid, seed 0, through papermill on tiny synthetic data (CPU, seconds per run)."""
    tiny = {"dataset": "synthetic", "model": "tiny_cnn", "epochs": 2, "bootstrap": 10, "stage2_epochs": 1,
            "source_params": {"num_classes": 10, "train_per_class": 200, "test_per_class": 5}}
    g = load_grid(REPO / "configs" / f"{name}.yaml", overrides=tiny, results=tmp_path / "results")
    g.name = f"{name}-tiny-{abs(hash(str(tmp_path))) % 10**6}"
    g.runs = [r for r in g.runs if r.seed == 0]
    try:
        summary = run_grid(g, jobs=2, threads=1, stagger=0.2)  # whatever OMP_NUM_THREADS the user exported
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)
    assert not summary["failed"], summary["failed"]
    df = collect(g.results)
    assert set(df["status"]) <= {"done", "alias"} and len(df) == len(g.runs)
    assert df.set_index("method").loc["two_expert", "trainings"] == 2


def test_slurm_submission_writes_the_sbatch_array_and_chains_stage_two(tmp_path, monkeypatch):
    """A fake ``sbatch`` on PATH records what submitit would hand to Slurm: one array per phase,
    the grid's partition / GPUs / time / parallelism, and stage two ``afterok`` on stage one."""
    from ltkit.grid.submitit import jobs_file, submit_grid

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    counter = tmp_path / "n"
    counter.write_text("100")
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(cat {counter}); echo $((n + 1)) > {counter}
echo "=== $@" >> {log}; cat "$1" >> {log}
echo "Submitted batch job $n"
""")
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit only checks that it exists
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    s = spec(tmp_path, methods=["ce", "bs", {"procedure": "la_posthoc", "stage1": "ce"}],
             seeds=[0, 1], slurm={"partition": "gpu", "timeout_min": 90, "array_parallelism": 3, "mem_gb": 20})
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    res = submit_grid(g, executor="slurm", log_dir=tmp_path / "logs" / "%j")
    assert res["submitted"] == 6 and not res["results"]  # slurm: submit and return
    text = log.read_text()
    import re

    first, second = re.split(r"^=== ", text, flags=re.M)[1:]
    for sb in (first, second):
        assert "#SBATCH --partition=gpu" in sb and "#SBATCH --gpus-per-node=1" in sb
        assert "#SBATCH --time=90" in sb and "#SBATCH --mem=20GB" in sb
        assert "#SBATCH --signal=USR2@120" in sb  # signal_delay_s, settable under slurm:
    assert "#SBATCH --array=0-3%3" in first and "dependency" not in first  # 4 stage-one runs
    assert "#SBATCH --array=0-1%2" in second and "#SBATCH --dependency=afterok:100" in second
    records = json.loads(jobs_file(g).read_text())
    assert {r["job_id"] for r in records.values()} == {"100_0", "100_1", "100_2", "100_3", "101_0", "101_1"}
    shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_force_trains_afresh_and_keeps_the_old_result_aside(tmp_path):
    s = spec(tmp_path, methods=["ce"])
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    run_dir = g.run_dir(g.runs[0])
    try:
        assert run_grid(g, stagger=0)["done"]
        first = (run_dir / "metrics.json").read_text()
        summary = run_grid(g, force=True, stagger=0)
        assert summary["done"] == [g.runs[0].run_path()]
        (replaced,) = run_dir.glob("metrics.json.replaced-*")
        assert replaced.read_text() == first
        assert len(list(g.ckpt_dir(g.runs[0]).glob("last.pt.replaced-*"))) == 1
        assert run_grid(g, force=True, stagger=0)["done"]  # --force twice: both old generations are kept
        assert len(list(run_dir.glob("metrics.json.replaced-*"))) == 2
        assert len(list(g.ckpt_dir(g.runs[0]).glob("last.pt.replaced-*"))) == 2
        # trained again from epoch 0 (launch 1), not resumed from the finished checkpoint
        import pandas as pd

        assert pd.read_csv(run_dir / "history.csv")["launch"].tolist() == [1]
        assert json.loads((run_dir / "metrics.json").read_text())["balanced.top1"] == json.loads(first)["balanced.top1"]
        # the forced run executed into a staging folder under its checkpoints: its notebook, moved in, names the run
        # folder it records, so that executed as it is it shows that record (it named the stage, found no finished
        # run there, and trained)
        from ltkit.notebook import SHOW, open_run
        from ltkit.runs.portable import injected_values, relative_path

        nb = json.loads((run_dir / "train.ipynb").read_text())
        injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
        where = relative_path(run_dir)
        assert injected_values("".join(injected["source"]))["output_dir"] == where
        assert nb["metadata"]["papermill"]["parameters"]["output_dir"] == where
        assert open_run(g.runs[0], where).mode == SHOW
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)


@pytest.mark.slow
def test_two_grid_commands_on_one_results_folder_train_each_run_once(tmp_path):
    import pandas as pd

    s = spec(tmp_path, methods=["ce", "focal", "ldam", {"method": "focal2", "loss": "focal", "loss_params": {"gamma": 2}}])
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    cmd = [sys.executable, "-m", "ltkit.cli", "grid", "run", str(path)]
    try:
        a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import time

        time.sleep(3)
        b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outs = [p.communicate(timeout=600) for p in (a, b)]
        assert a.returncode == 0 and b.returncode == 0, [o[1][-2000:] for o in outs]
        done = [int(o[0].rsplit("done ", 1)[1].split(",")[0]) for o in outs]
        assert sum(done) == 4, done  # every run trained by exactly one of the two commands
        for r in g.runs:
            assert pd.read_csv(g.run_dir(r) / "history.csv")["launch"].tolist() == [1]
        assert set(collect(g.results)["status"]) == {"done"}
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)


def test_status_shows_the_epoch_a_partial_run_reached(tmp_path, capsys):
    from ltkit.cli import main
    from ltkit.training.pipeline import run

    s = spec(tmp_path, methods=["ce", "bs"])
    s["base"]["epochs"] = 2
    path = grid_file(tmp_path, s)
    g = load_grid(path)
    try:
        run(g.runs[0], ckpt_dir=g.ckpt_dir(g.runs[0]), progress=False)  # checkpoints, but no results folder
        assert main(["grid", "status", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"partial   {g.runs[0].run_path()}  [epoch 2/2]" in out
        assert f"missing   {g.runs[1].run_path()}\n" in out and "1 missing, 1 partial" in out
    finally:
        shutil.rmtree(g.ckpt_root, ignore_errors=True)


def test_a_grid_extends_another_and_changes_only_what_it_names(tmp_path):
    """The cao2019 variants are the IF 100 grid with the data changed: same methods, seeds and recipe."""
    from ltkit.config.fields import ConfigError
    from ltkit.grid.spec import load_grid

    full = load_grid("configs/cao2019-cifar100-if100.yaml")
    for path, dataset, imb in (("configs/cao2019-cifar100-if50.yaml", "cifar100", 50),
                               ("configs/cao2019-cifar10-if100.yaml", "cifar10", 100)):
        var = load_grid(path)
        assert var.name == Path(path).stem and len(var.runs) == len(full.runs)
        for a, b in zip(full.runs, var.runs, strict=True):
            assert (b.dataset, b.imb_factor) == (dataset, imb)
            assert {**a.to_dict(), "dataset": dataset, "imb_factor": imb} == b.to_dict()
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="goes round in a circle"):
        load_grid(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_grid(tmp_path / "c.yaml")


def test_a_run_the_campaign_is_training_is_running_to_grid_status_and_left_alone_by_grid_run(tmp_path):
    """The campaign keeps its checkpoints in the user's cache; a plain `grid run` / `grid status` in the checkout
    used ./checkpoints only, so a run the campaign was training read 'missing' and a `grid run` trained it a second
    time beside the campaign. Now both look in the campaign's folder too."""
    from conftest import cli, write_grid

    from ltkit.core.layout import campaign_checkpoints_root
    from ltkit.grid.plan import progress

    path = write_grid(tmp_path, grid_spec(tmp_path, SYN, methods=["ce", "bs"]))
    grid = load_grid(path)
    ce = next(c for c in grid.runs if c.method == "ce")
    other = grid.campaign_ckpt_dir(ce)
    assert other is not None and other.is_relative_to(campaign_checkpoints_root()) and other != grid.ckpt_dir(ce)
    other.mkdir(parents=True)
    (other / "progress.json").write_text(json.dumps({"epoch": 3, "epochs": 9, "seconds_per_epoch": 60.0}))
    with run_lock(other / ".train.lock"):  # what the campaign's training process holds
        assert {c.method: str(st) for c, st, _ in plan(grid)} == {"ce": "running", "bs": "missing"}
        assert progress(grid, ce) == "by the campaign: epoch 3/9, ~6 min left"
        proc = cli("grid", "run", path)
        assert proc.returncode == 0, proc.stderr
        assert f"skip {ce.run_path()}: the campaign is training it (its checkpoints in {other})" in proc.stderr
        assert not (grid.run_dir(ce) / "metrics.json").exists() and (grid.run_dir(grid.runs[1]) / "metrics.json").exists()
        status = cli("grid", "status", path).stdout
        assert "running" in status and "by the campaign: epoch 3/9" in status
    own = load_grid(path)
    own.checkpoints = campaign_checkpoints_root()  # the campaign's own grid: one root, nothing else to look at
    assert own.campaign_ckpt_dir(ce) is None
