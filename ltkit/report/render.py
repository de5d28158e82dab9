"""Rendering tables for the book: MyST Markdown tables (numbers right-aligned, never wrapped inside
"a ± b", no index column), glued into pages as numbered, captioned tables and figures."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from .names import method_label

_NUMBER = re.compile(r"^\**[+\-−]?\d")  # a cell that reads as a number ('84.20 ± 3.11', '**+1.20** [..]')


def _cell(v: Any, digits: int) -> str:
    """One table cell as Markdown: floats to ``digits`` decimals, missing as '–', booleans yes/no, '|' escaped."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if v is None or v is pd.NA or v is pd.NaT:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.{digits}f}"
    if v is None or (isinstance(v, str) and not v):
        return "–"
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text.replace(" ", "\u00a0") if _NUMBER.match(text) else text  # '84.20 ± 3.11' never wraps


def _numeric_column(col: pd.Series) -> bool:
    """Numbers, or cells that read as numbers ('84.20 ± 3.11', '**+1.20** [..]', '38.32{sup}`1`'): right-aligned."""
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    cells = [str(v) for v in col if isinstance(v, str) and v not in ("", "–")]
    return bool(cells) and all(_NUMBER.match(v) for v in cells)


def md_table(table: pd.DataFrame, caption: str, name: str, empty: str = "no runs yet", digits: int = 2) -> str:
    """A numbered, captioned MyST table (the ``{table}`` directive, labelled ``name`` for ``{numref}``) from a frame.

    A named index becomes ordinary leading columns (no pandas row numbers); floats get ``digits``
    decimals, numeric columns are right-aligned. An empty frame gives a one-cell table saying
    ``empty``, so the label, its number and the text's references exist before any run does.
    A page glues the string (``glue(key, Markdown(...), display=False)``) and shows it with a
    ``{glue:md}`` directive in ``:format: myst`` (myst-nb), which numbers it like any other table.
    """
    t = table.reset_index(drop=all(n is None for n in table.index.names))
    if "method" in t:
        t = t.assign(method=t["method"].map(lambda m: method_label(m) if isinstance(m, str) else m))
    if t.empty:
        t = pd.DataFrame({"": [empty]})
    numeric = [_numeric_column(t[c]) for c in t.columns]
    head = "| " + " | ".join(_cell(str(c), digits) if str(c) else " " for c in t.columns) + " |"
    rule = "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"
    rows = ["| " + " | ".join(_cell(v, digits) for v in r) + " |" for r in t.itertuples(index=False)]
    caption = " ".join(caption.split())
    return "\n".join([f"~~~{{table}} {caption}", f":name: {name}", ":align: left", "", head, rule, *rows, "~~~"])


def glue_table(key: str, table: pd.DataFrame, caption: str, name: str, empty: str = "no runs yet", digits: int = 2,
               after: str = "") -> None:
    """In a book page: :func:`md_table`'s numbered table (and ``after``, Markdown shown below it, such as
    footnotes) glued under ``key`` for a ``{glue:md}`` directive with ``:format: myst`` (myst-nb)."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(key, Markdown(md_table(table, caption, name, empty=empty, digits=digits) + (f"\n\n{after}" if after else "")),
         display=False)


def glue_figure(key: str, fig) -> None:
    """In a book page: a figure glued under ``key`` for a ``{glue:figure}`` directive (which numbers and
    captions it), then closed so the page does not show it a second time."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(key, fig, display=False)
    plt.close(fig)
