"""The package's plan: subpackages by responsibility, layered one way, no import cycles (function-local
imports included), and planning a grid without torch.

The layer list below is the README's architecture section, bottom first; a package (or top-level
module) may import only from lower layers or from itself, and inside a package the modules import
each other without a cycle, so a reader can learn ltkit from the bottom up and the folder list reads
as the architecture.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ltkit"

LAYERS = [
    ["core"],                                    # registry, io, layout, stats, hardware, envlock: no torch
    ["config"],                                  # a run's fields and their roles, the notebook's parameters
    ["data", "losses", "models", "metrics"],     # registries and building blocks (torch only where they compute)
    ["runs"],                                    # a run's folder: status, provenance, records
    ["training"],                                # engine, checkpoint, loop, packed, procedures, check, pipeline
    ["notebook"],                                # what notebooks/train.ipynb calls
    ["grid"],                                    # spec, plan, packing, execute, processes, executors, campaign
    ["report"],                                  # collect, names, tables, published, prose, render, figures, book
    ["cli"],
]
LEVEL = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _unit(path: Path) -> str:
    """The package (or top-level module) a file belongs to."""
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """The ltkit modules a file imports anywhere in it (function-local and TYPE_CHECKING imports included),
    as dotted names below ``ltkit`` ('' for the package root)."""
    here = _module(path).split(".") if _module(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("ltkit"):
                parts = node.module.split(".")[1:]
            else:
                continue
            mod = ".".join(parts)
            for alias in node.names:  # `from . import x` / `from .grid import campaign`: a module, if it is one
                sub = f"{mod}.{alias.name}" if mod else alias.name
                out.add(sub if (PKG / sub.replace(".", "/")).with_suffix(".py").exists()
                        or (PKG / sub.replace(".", "/")).is_dir() else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("ltkit."))
    return out


FILES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_one_layer():
    units = {_unit(p) for p in FILES} - {"__init__"}
    assert units == set(LEVEL), f"placed in no layer: {sorted(units - set(LEVEL))}; gone: {sorted(set(LEVEL) - units)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    unit = _unit(path)
    if unit == "__init__":
        return
    bad = []
    for mod in _imports(path):
        target = mod.split(".")[0] if mod else "__init__"
        if target in ("__init__", ""):
            continue  # the package root: its version only
        if target != unit and LEVEL[target] >= LEVEL[unit]:
            bad.append(mod)
    assert not bad, f"ltkit/{path.relative_to(PKG)} ({unit}, layer {LEVEL[unit]}) imports {sorted(bad)} from its own layer or above"


def test_every_ltkit_import_names_a_module_that_exists():
    """A relative import left behind by a move (``from .checkpoint import ...`` in a package that has none)
    fails only when its function runs: find it here."""
    modules = {_module(p) for p in FILES}
    missing = sorted(f"{p.relative_to(PKG)}: {m}" for p in FILES for m in _imports(p) if m and m not in modules)
    assert not missing, missing


def test_no_import_cycle_inside_a_package():
    graph = {_module(p): {m for m in _imports(p) if m and m != _module(p)} for p in FILES}
    mods = set(graph)
    graph = {m: {t for t in ts if t in mods and t.split(".")[0] == m.split(".")[0] and "." in m} for m, ts in graph.items()}
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in graph.get(m, ()):
            if seen.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t):], t]) if t in path
                                     else f"import cycle through {t}")
            if t not in seen:
                visit(t, [*path, t])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])


def test_the_readme_shows_the_same_plan():
    """The README's architecture section lists these packages, one line each, in this order."""
    import re

    text = (PKG.parent / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    listed = [(n, name) for name, n in re.findall(r"^  (\w+)(?:/|\.py)\s+layer (\d+)", section, flags=re.M)]
    layers: dict[int, list[str]] = {}
    for num, name in listed:
        layers.setdefault(int(num), []).append(name)
    assert [layers[k] for k in sorted(layers)] == LAYERS


def test_planning_a_grid_imports_no_torch(tmp_path):
    """`ltkit grid status` / `grid list` (and the campaign's status) read the registries, never torch."""
    code = ("import sys; from ltkit.cli import main; "
            "rc = main(['grid', 'status', 'configs/cao2019-cifar100-if100.yaml', '--results', sys.argv[1]]); "
            "rc2 = main(['grid', 'list', 'configs/thesis.yaml', '--results', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc, rc2)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                       cwd=PKG.parent, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "NO-TORCH 0 0"
