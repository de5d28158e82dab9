"""The environment is a lock, not ranges; what is declared is used and what is used is declared."""

import ast
import re
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

from ltkit.core.envlock import LOCK, lock_status, read_lock

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# distribution name -> the module it is imported as, where they differ
MODULE = {"pyyaml": "yaml", "pillow": "PIL", "jupyter-book": "jupyter_book", "huggingface-hub": "huggingface_hub", "ipython": "IPython"}
# tools used from the command line or as a plugin rather than imported: where they are used
INVOKED = {"pytest": "Makefile", "ruff": "Makefile", "jupyter-book": "Makefile", "ipykernel": "Makefile", "ghp-import": "Makefile",
           "papermill": "ltkit/grid/execute.py", "hypothesis": "tests/test_grid.py"}


def _declared() -> list[Requirement]:
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    return [Requirement(d) for d in deps]


def test_every_declared_dependency_is_locked_within_its_range():
    pins = read_lock()
    for req in _declared():
        name = req.name.lower()
        assert name in pins, f"{name} is declared but not in {LOCK.name}: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert pip == ["-r requirements.lock", "-e ."]  # no ranges of its own that could drift from the lock
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    header = LOCK.read_text().splitlines()[0]
    assert f"Python {python.split('=')[1]}," in header


def test_this_environment_is_the_lock():
    """What `make setup` installed is exactly the lock (a stale venv or a hand install shows here)."""
    status = lock_status()
    assert len(status["lock_sha256"]) == 64
    assert status["lock_mismatches"] == [], status["lock_mismatches"][:10]


def _imports(paths: list[Path]) -> set[str]:
    found = set()
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_declared_dependencies_are_used_and_used_ones_declared():
    code = list((REPO / "ltkit").rglob("*.py")) + list((REPO / "benchmarks").glob("*.py"))
    tests = list((REPO / "tests").glob("*.py"))
    used = _imports(code)
    for req in _declared():
        name = req.name.lower()
        module = MODULE.get(name, name.replace("-", "_"))
        if name in INVOKED:
            assert re.search(rf"\b{re.escape(module if name != 'jupyter-book' else 'jupyter-book')}\b",
                             (REPO / INVOKED[name]).read_text()), f"{name} is declared but not used"
            continue
        assert module in used or module in _imports(tests), f"{name} is declared but never imported"
    stdlib = set(sys.stdlib_module_names)
    declared_modules = {MODULE.get(r.name.lower(), r.name.lower().replace("-", "_")) for r in _declared()}
    third_party = {m for m in used | _imports(tests) if m not in stdlib and m not in {"ltkit", "benchmarks", "conftest"}}
    undeclared = third_party - declared_modules
    assert not undeclared, f"imported but not declared: {sorted(undeclared)}"


def test_tqdm_draws_a_widget_bar_in_jupyterlab():
    """Issue #36: without ipywidgets, tqdm.auto in a notebook prints "IProgress not found" instead of a bar."""
    import ipywidgets
    from tqdm import notebook

    assert ipywidgets.__version__ and notebook.IProgress is not None
