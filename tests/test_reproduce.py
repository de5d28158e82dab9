"""Issue #36: every committed run re-opens anywhere in seconds (show mode), and re-makes itself only on request
(``ltkit reproduce``), from a copy of the repository in another folder, with real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import SYN_SMALL

from ltkit.core.layout import COMPLETE, EXECUTED_NOTEBOOK, METRICS, PROVENANCE
from ltkit.runs.portable import absolute_paths, make_run_portable, portable_text, relative_path, resolve

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (REPO / "results").rglob(COMPLETE) if "pipeline-check" not in p.parts)


def _copy_repo(dest: Path) -> Path:
    """The repository's code, notebook, configs and committed results in another folder (no .git, no venv)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("ltkit", "notebooks", "configs", "results"):
        shutil.copytree(REPO / sub, dest / sub, ignore=ignore)
    shutil.rmtree(dest / "results" / "demo", ignore_errors=True)
    return dest


def _env(copy: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """The copy's ltkit (kernels included: PYTHONPATH), no CIFAR data reachable, checkpoints in a scratch folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("LTKIT_DATA", "LTKIT_RESULTS", "LTKIT_CHECKPOINTS")}
    (tmp / "no-data").mkdir(exist_ok=True)
    env.update(PYTHONPATH=str(copy), LTKIT_HOME=str(copy), LTKIT_DATA=str(tmp / "no-data"), OMP_NUM_THREADS="1",
               LTKIT_CHECKPOINTS=str(tmp / "ckpt"), **extra)
    return env


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _execute(nb: Path, cwd: Path, env: dict[str, str], timeout: int = 300) -> nbformat.NotebookNode:
    """Execute a notebook as it is (``jupyter execute``: what Run All does), saving the result elsewhere."""
    out = cwd / f"executed-{nb.parent.parent.name}-{nb.parent.name}.ipynb"
    p = subprocess.run([sys.executable, "-m", "jupyter", "execute", str(nb), "--output", str(out)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return nbformat.read(str(out), as_version=4)


def _text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", ""))
            parts += [str(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def _cli(copy: Path, env: dict[str, str], *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ltkit.cli", *map(str, args)], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    return _copy_repo(tmp_path_factory.mktemp("elsewhere") / "checkout")


# --------------------------------------------------------------------------- committed runs, shown


@pytest.mark.parametrize("run_dir", COMMITTED or [pytest.param(None, marks=pytest.mark.skip(reason="none committed"))],
                         ids=lambda p: "/".join(p.parts[-2:]) if p else "none")
def test_every_committed_notebook_shows_its_record_without_data_training_or_writing(run_dir, copy, tmp_path):
    """A committed run's notebook, executed as it is from a copy in another folder with no CIFAR data reachable,
    shows the recorded numbers and its card, trains nothing and writes nothing (hashes and mtimes unchanged)."""
    rel = run_dir.relative_to(REPO)
    here = copy / rel
    before = _snapshot(here)
    nb = _execute(here / EXECUTED_NOTEBOOK, tmp_path, _env(copy, tmp_path))
    assert _snapshot(here) == before
    assert not (tmp_path / "ckpt").exists() and not (copy / "checkpoints").exists()
    text = _text(nb)
    top1 = json.loads((here / METRICS).read_text())["balanced.top1"]
    assert f"{top1:.4f}" in text and "Recorded run" in text and "Run card" in text
    assert nb.cells[0].source.splitlines()[-1].startswith("**Recorded run**")  # its first cell says so


@pytest.mark.parametrize("run_dir", COMMITTED or [pytest.param(None, marks=pytest.mark.skip(reason="none committed"))],
                         ids=lambda p: "/".join(p.parts[-2:]) if p else "none")
def test_a_committed_record_names_no_folder_of_the_machine_that_made_it(run_dir):
    assert absolute_paths(run_dir) == []
    nb = nbformat.read(str(run_dir / EXECUTED_NOTEBOOK), as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'output_dir = "results/' in injected.source
    prov = json.loads((run_dir / PROVENANCE).read_text())
    assert prov["dataset"]["meta"]["origin"].startswith("$LTKIT_DATA/") and len(prov["dataset"]["meta"]["origin_sha256"]) == 64


# --------------------------------------------------------------------------- the migration


def test_the_migration_changes_path_strings_only(tmp_path):
    """A record made at another path (a checkout, a data folder and a venv of another machine) comes out portable;
    its numbers, fingerprint and every other file are byte for byte the same."""
    src = COMMITTED[0] if COMMITTED else pytest.skip("no committed run")
    run = tmp_path / "results" / src.relative_to(REPO / "results")
    shutil.copytree(src, run)
    other = "/home/someone/work/ltkit"
    prov = json.loads((run / PROVENANCE).read_text())
    prov["command"] = f"{other}/.venv/bin/python -m papermill {other}/notebooks/train.ipynb {other}/checkpoints/g/x.ipynb"
    prov["dataset"]["meta"]["origin"] = "/srv/datasets/cifar100"
    del prov["dataset"]["meta"]["origin_sha256"]
    (run / PROVENANCE).write_text(json.dumps(prov, indent=2, sort_keys=True))
    nb = json.loads((run / EXECUTED_NOTEBOOK).read_text())
    nb["metadata"]["papermill"]["parameters"]["output_dir"] = f"{other}/results/{prov['run_path']}"
    cell = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    cell["source"] = [f'output_dir = "{other}/results/{prov["run_path"]}"\n',
                      f'checkpoint_dir = "/scratch/ckpt/{prov["run_path"]}"\n']
    nb["cells"][-1].setdefault("outputs", []).append(
        {"output_type": "stream", "name": "stderr", "text": [f"{other}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: "
                                                             "TqdmWarning: IProgress not found\n"]})
    (run / EXECUTED_NOTEBOOK).write_text(json.dumps(nb))
    others = {p.name: p.read_bytes() for p in run.iterdir() if p.name not in (PROVENANCE, EXECUTED_NOTEBOOK)}
    assert absolute_paths(run)
    make_run_portable(run, ckpt_root=Path("/scratch/ckpt"))
    assert absolute_paths(run) == []
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name not in (PROVENANCE, EXECUTED_NOTEBOOK)} == others
    new = json.loads((run / PROVENANCE).read_text())
    assert new["fingerprint"] == prov["fingerprint"] and new["parameters"] == prov["parameters"]
    assert new["command"] == ".venv/bin/python -m papermill notebooks/train.ipynb checkpoints/g/x.ipynb"
    assert new["dataset"]["meta"]["origin"] == "$LTKIT_DATA/cifar100"
    assert {k: v for k, v in new.items() if k not in ("command", "dataset")} == \
        {k: v for k, v in prov.items() if k not in ("command", "dataset")}
    inj = next(c for c in json.loads((run / EXECUTED_NOTEBOOK).read_text())["cells"]
               if "injected-parameters" in c["metadata"].get("tags", []))
    assert "".join(inj["source"]) == f'output_dir = "results/{prov["run_path"]}"\ncheckpoint_dir = None\n'


def test_portable_paths_resolve_against_the_checkout_that_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("LTKIT_HOME", str(tmp_path / "a"))
    assert relative_path(tmp_path / "a" / "results" / "x") == "results/x"
    assert relative_path("/elsewhere/results/x") == "/elsewhere/results/x"
    assert resolve("results/x") == tmp_path / "a" / "results" / "x" and resolve(None) is None
    assert portable_text("see https://github.com/o/r and 3/4 img/s") == "see https://github.com/o/r and 3/4 img/s"
    assert portable_text(f"{tmp_path}/a/results/x done", root=tmp_path / "a") == "results/x done"


# --------------------------------------------------------------------------- a small grid run, shown and reproduced


def _grid(copy: Path, name: str, seeds: list[int]) -> Path:
    base = {"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 5, "epochs": 1,
            "bootstrap": 20, "source_params": SYN_SMALL, "precision": "fp32"}
    spec = {"name": name, "results": f"results/{name}", "base": base, "seeds": seeds,
            "methods": ["ce", {"procedure": "la_posthoc", "stage1": "ce"}]}
    path = copy / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_a_demo_run_shows_from_another_folder_and_reproduces_into_scratch_only(copy, tmp_path):
    env = _env(copy, tmp_path)
    grid = _grid(copy, "repro", [0])
    p = _cli(copy, env, "grid", "run", grid, "--jobs", "1", "--threads", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    run = copy / "results" / "repro" / "cao2019" / "synthetic_exp5" / "tiny_cnn" / "ce" / "seed0"
    nb = json.loads((run / EXECUTED_NOTEBOOK).read_text())
    assert nb["metadata"]["papermill"]["parameters"]["output_dir"] == "results/repro/cao2019/synthetic_exp5/tiny_cnn/ce/seed0"
    assert absolute_paths(run) == [] and absolute_paths(run.parent.parent / "la_posthoc" / "seed0") == []

    # shown: from another folder, nothing trained or written (stage one and stage two)
    for r in (run, run.parent.parent / "la_posthoc" / "seed0"):
        before = _snapshot(copy / "results" / "repro")
        shown = _execute(r / EXECUTED_NOTEBOOK, tmp_path, env)
        assert _snapshot(copy / "results" / "repro") == before and "Recorded run" in _text(shown)

    # reproduced: only into the scratch folder, inside the run's own interval (one seed)
    before = _snapshot(copy / "results")
    p = _cli(copy, env, "reproduce", run.relative_to(copy))
    assert p.returncode == 0, p.stdout + p.stderr
    assert _snapshot(copy / "results") == before
    report = json.loads(next((tmp_path / "ckpt" / "reproduce" / "full").rglob("reproduce.json")).read_text())
    assert report["verdict"] == "inside" and report["metrics"]["top1"]["difference"] == pytest.approx(0, abs=1e-9)
    assert "INSIDE" in p.stdout and "cpu_model" in p.stdout

    # the same from the notebook (reproduce = True, as a reader sets it in JupyterLab): compared, printed, not written
    before = _snapshot(copy / "results")
    nb = nbformat.read(str(run / EXECUTED_NOTEBOOK), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "reproduce = False" in params.source
    params.source = params.source.replace("reproduce = False", "reproduce = True")  # the reader's edit
    edited = tmp_path / "edited" / "train.ipynb"
    edited.parent.mkdir()
    nbformat.write(nb, str(edited))
    text = _text(_execute(edited, tmp_path, env))
    assert "Reproducing the recorded run" in text and "INSIDE the spread" in text and "reproduction" in text
    assert _snapshot(copy / "results") == before

    # the same through papermill: its -p replaces the recorded parameters cell, so the template's defaults (another
    # imbalance factor, other data) stood there; the notebook shows and trains the recorded configuration all the same
    def papermill(*params: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "papermill", str(run / EXECUTED_NOTEBOOK), str(tmp_path / "pm.ipynb"),
                               "-k", "python3", *params], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    p = papermill("-p", "reproduce", "True", "-p", "output_dir", str(run.relative_to(copy)))
    assert p.returncode == 0, p.stderr[-2000:]
    out = nbformat.read(str(tmp_path / "pm.ipynb"), as_version=4)
    shown = next(c for c in out.cells if c.source.startswith("pd.Series(cfg.to_dict()"))
    table = {line.split()[0]: line.split()[-1] for line in shown.outputs[0]["data"]["text/plain"].splitlines()[1:]}
    assert float(table["imb_factor"]) == json.loads((run / PROVENANCE).read_text())["parameters"]["imb_factor"] == 5
    assert "INSIDE the spread" in _text(out) and _snapshot(copy / "results") == before
    p = papermill("-p", "reproduce", "True")  # no output_dir: the error says what papermill did and what to pass
    assert p.returncode != 0 and "-p output_dir <run>" in p.stderr + (tmp_path / "pm.ipynb").read_text()

    # its stage two reproduces from the reproduced stage one
    p = _cli(copy, env, "reproduce", (run.parent.parent / "la_posthoc" / "seed0").relative_to(copy))
    assert p.returncode == 0, p.stdout + p.stderr

    # a committed number edited to a wrong one: outside, exit 1
    m = json.loads((run / METRICS).read_text())
    m.update({"balanced.top1": 0.99, "balanced.top1_ci_low": 0.985, "balanced.top1_ci_high": 0.995})
    (run / METRICS).write_text(json.dumps(m))
    p = _cli(copy, env, "reproduce", run.relative_to(copy))
    assert p.returncode == 1 and "OUTSIDE" in p.stdout, p.stdout + p.stderr

    # --smoke says what it is
    p = _cli(copy, env, "reproduce", run.relative_to(copy), "--smoke")
    assert p.returncode == 0 and "smoke check" in p.stdout and "not a reproduction" in p.stdout, p.stdout + p.stderr


@pytest.mark.slow
def test_the_template_still_trains_a_new_configuration_and_never_overwrites_a_finished_one(copy, tmp_path):
    env = _env(copy, tmp_path)
    grid = _grid(copy, "edit", [0])
    assert _cli(copy, env, "grid", "run", grid, "--only", "ce", "--jobs", "1", "--threads", "1").returncode == 0
    run = "results/edit/cao2019/synthetic_exp5/tiny_cnn/ce/seed0"
    before = _snapshot(copy / run)
    params = {"dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 5, "epochs": 2, "seed": 0,
              "extra": {"source_params": SYN_SMALL, "bootstrap": 20, "precision": "fp32"}}
    for out, ok in ((run, False), ("results/edit/new-config", True)):
        p = subprocess.run([sys.executable, "-m", "papermill", str(copy / "notebooks" / "train.ipynb"),
                            str(tmp_path / "out.ipynb"), "-k", "python3", "-y", yaml.safe_dump({**params, "output_dir": out})],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert (p.returncode == 0) == ok, p.stderr[-2000:]
        if not ok:
            assert "never overwritten" in p.stderr + (tmp_path / "out.ipynb").read_text()
    assert _snapshot(copy / run) == before
    assert (copy / "results" / "edit" / "new-config" / METRICS).exists()


# --------------------------------------------------------------------------- bad input: one line, nothing written


def test_reproduce_refuses_what_it_cannot_reproduce_and_writes_nothing(copy, tmp_path):
    env = _env(copy, tmp_path)
    cases = {"not-a-run": copy / "configs", "missing": copy / "results" / "nope"}
    failed = tmp_path / "results" / "x" / "d" / "m" / "ce" / "seed0"
    failed.mkdir(parents=True)
    (failed / PROVENANCE).write_text(json.dumps({"status": "failed", "error": "RuntimeError: diverged"}))
    cases["failed"] = failed
    unfinished = tmp_path / "results" / "x" / "d" / "m" / "bs" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "spend.json").write_text(json.dumps({"attempts": []}))
    (unfinished / PROVENANCE).write_text(json.dumps({"status": "running"}))
    cases["unfinished"] = unfinished
    in_flight = tmp_path / "results" / "x" / "d" / "m" / "cb" / "seed2"  # as the campaign commits one: spend.json only
    in_flight.mkdir(parents=True)
    (in_flight / "spend.json").write_text(json.dumps({"attempts": [{"outcome": "interrupted"}]}))
    cases["in-flight"] = in_flight
    expect = {"not-a-run": "not a run folder", "missing": "not a folder", "failed": "failed run",
              "unfinished": "not finished", "in-flight": "not finished (only spend.json"}
    for name, path in cases.items():
        p = _cli(copy, env, "reproduce", path)
        assert p.returncode == 2 and expect[name] in p.stderr and len(p.stderr.strip().splitlines()) == 1, (name, p.stderr)
    if COMMITTED:  # a real cao2019 run with no CIFAR reachable: the data is named, nothing starts
        p = _cli(copy, env, "reproduce", COMMITTED[0].relative_to(REPO))
        assert p.returncode == 2 and "cifar100" in p.stderr.lower() and len(p.stderr.strip().splitlines()) == 1, p.stderr
        # a stage two without its reproduced stage one: told to reproduce that first
        s2 = next((r for r in COMMITTED if r.parent.name == "la_posthoc"), None)
        if s2 is not None:
            p = _cli(copy, env, "reproduce", s2.relative_to(REPO))
            assert p.returncode == 2 and "reproduce its stage one first" in p.stderr
        # a run whose grid moved on: stale, named with the command that re-trains it
        grid = copy / "configs" / "cao2019-cifar100-if100.yaml"
        text = grid.read_text()
        try:
            grid.write_text(text.replace("imb_type: exp}", "imb_type: exp, warmup_epochs: 4}"))
            p = _cli(copy, env, "reproduce", COMMITTED[0].relative_to(REPO))
            assert p.returncode == 2 and "no longer matches its grid" in p.stderr, p.stderr
        finally:
            grid.write_text(text)
    assert not (tmp_path / "ckpt").exists()


def test_a_run_page_opens_with_its_card_above_the_portable_parameters(tmp_path):
    """Appendix C: each committed run's page starts with its title and card, then the parameters (portable)."""
    from ltkit.report.book import stage_runs

    if not COMMITTED:
        pytest.skip("no committed run")
    index = stage_runs(REPO / "results", dest=tmp_path / "runs", static=tmp_path / "static")
    page = tmp_path / "runs" / f"{index[index['method'] == 'ce'].iloc[0]['slug']}.ipynb"
    nb = nbformat.read(str(page), as_version=4)
    assert nb.cells[0].source.startswith("# Run cao2019") and nb.cells[1].source.startswith("**Run card**")
    assert "parameters" in nb.cells[2].metadata.get("tags", []) and "injected-parameters" in nb.cells[3].metadata["tags"]
    assert 'output_dir = "results/cao2019/' in nb.cells[3].source and "/work/" not in page.read_text()
    assert sum("**Run card**" in c.source for c in nb.cells if c.cell_type == "markdown") == 1
