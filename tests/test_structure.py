"""The package's layering: every import (function-local ones included) points to a lower layer.

The list below is the architecture section of the README, bottom layer first; a
module may import only modules of lower layers, so there is no import cycle and a
reader can learn the package from the bottom up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "ltkit"

LAYERS = [
    ["registry", "io", "layout", "stats"],                   # no ltkit imports
    ["runconfig", "splits", "envlock", "hardware"],          # plain data: a run's settings, the split arithmetic
    ["folder", "loader", "losses", "models", "metrics", "checkpoint"],  # building blocks
    ["data", "results"],                                     # sources and protocols -> LTDataset; a run's folder
    ["engine"],                                              # device, model, predict, features, evaluate
    ["train"],                                               # the stage-one loop
    ["packed"],                                              # many small runs trained as one model
    ["procedures"],                                          # how a model is obtained: train, two experts, stage two
    ["config"],                                              # make_config: a config checked against every registry
    ["pipeline"],                                            # run(config): one whole run
    ["notebook", "packrun"],                                 # what the notebook calls; a pack's process
    ["grid"],                                                # the grid runner
    ["submit", "report", "campaign"],                        # Slurm / submitit; book tables and figures; CPU campaign
    ["cli"],
]


def _imports(path: Path) -> set[str]:
    """The ltkit modules a file imports, anywhere in it (relative or absolute)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 or mod.startswith("ltkit"):
                base = mod.removeprefix("ltkit").lstrip(".")
                if base:
                    out.add(base.split(".")[0])
                else:  # from . import x
                    out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ltkit."))
    modules = {p.stem for p in PKG.glob("*.py")}
    return out & modules


def test_every_module_has_one_layer():
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed))
    assert set(placed) == {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}


@pytest.mark.parametrize("module", [m for layer in LAYERS for m in layer])
def test_imports_point_down(module):
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    up = sorted(m for m in _imports(PKG / f"{module}.py") if level[m] >= level[module])
    assert not up, f"ltkit.{module} (layer {level[module]}) imports {up} from its own layer or above"


def test_the_readme_lists_the_same_layers():
    """The README's architecture section is this list, in this order (so neither can drift)."""
    import re

    text = (PKG.parent / "README.md").read_text()
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n\d+\. ", "\n1. " + section.split("\n1. ", 1)[1])[1:]
    names = {m for layer in LAYERS for m in layer}
    listed = [[w for w in re.findall(r"(?:^\s*|· )`(\w+)`", item, flags=re.M) if w in names] for item in items]
    assert listed == LAYERS
