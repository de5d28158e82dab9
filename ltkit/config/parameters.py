"""The run notebook's parameters: the one list of what papermill passes to ``notebooks/train.ipynb``.

The notebook's ``parameters`` cell is that list (read here from the file, no Jupyter needed); the
grid writes those names as papermill parameters and every other configuration field under ``extra``.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path

from ..core.layout import NOTEBOOK
from .fields import FIELDS


@cache
def parameter_names(notebook: Path = NOTEBOOK) -> tuple[str, ...]:
    """The names the notebook's ``parameters`` cell assigns, in order (papermill injects values for them)."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return tuple(t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name))


def config_parameter_names() -> tuple[str, ...]:
    """The notebook's parameters that are RunConfig fields (the rest steer the notebook: output_dir, smoke, ...)."""
    return tuple(k for k in parameter_names() if k in FIELDS)
