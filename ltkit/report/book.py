"""Staging the book: every run's executed notebook as a page and its files one click away, the
execution cache dropped when results or the library change, the repository buttons when an
``origin`` is known."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..core.io import atomic_write_text, stat_digest
from ..core.layout import EXECUTED_NOTEBOOK, METRICS, PROVENANCE, REPO, parse_run_dir
from ..metrics import HEADLINE
from ..runs.status import resolve_alias
from .collect import collect, results_root


def refresh_book_cache(build_dir: str | Path | None = None, roots: list[str | Path] | None = None,
                       code: list[str | Path] | None = None) -> bool:
    """Drop the book's execution cache when anything under ``results/`` (or the benchmark figures,
    the published tables in ``book/data``) or the library the pages call (``ltkit/**/*.py``) changed
    since the last build.

    jupyter-book's cache is keyed on a page's code, and Sphinx re-reads only pages
    whose source changed, so without this a rebuilt book would show the tables of
    the previous results, or of the previous version of :mod:`ltkit.report`.
    Returns True when the cache was dropped.
    """
    import shutil

    build = Path(build_dir or REPO / "book" / "_build")
    roots = [Path(r) for r in (roots or [results_root(), REPO / "benchmarks" / "results", REPO / "book" / "data"])]
    files = [f for root in roots if root.exists() for f in sorted(root.rglob("*")) if f.is_file()]
    files += [Path(f) for f in (code if code is not None else sorted((REPO / "ltkit").rglob("*.py")))]
    env = "\n".join(os.environ.get(k, "") for k in ("LTKIT_RESULTS", "LTKIT_DEMO_RESULTS"))
    stamp, digest = build / ".results-stamp", stat_digest(files, env)
    if stamp.exists() and stamp.read_text() == digest:
        return False
    for stale in (".jupyter_cache", ".doctrees", "jupyter_execute"):  # Sphinx skips unchanged pages too
        shutil.rmtree(build / stale, ignore_errors=True)
    build.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return True


RUNS_DIR = REPO / "book" / "runs"  # staged copies of the executed notebooks (git-ignored)


RUNS_STATIC = REPO / "book" / "_static" / "runs"  # their metrics.json and history.csv, served as files


def run_slug(row: dict | pd.Series) -> str:
    """A run's flat page name: ``<protocol>__<data>__<model>__<method>__seed<k>``."""
    return "__".join([str(row["protocol"]), str(row["data"]), str(row["model"]), str(row["method"]),
                      f"seed{row['seed']}"])


def stage_runs(root: str | Path | None = None, dest: Path = RUNS_DIR, static: Path = RUNS_STATIC) -> pd.DataFrame:
    """Copy every run's executed notebook into the book (one page per run, titled by the run) and its
    ``metrics.json`` / ``history.csv`` beside the HTML; write ``index.json``, what the Runs appendix lists.

    The notebooks live in ``results/``, outside the book's source: this is the staging step that
    ``make book`` runs before building. Earlier staged copies are removed first, so a deleted run
    disappears from the book.
    """
    import shutil

    import nbformat

    df = collect(root or results_root())
    for d in (dest, static):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    rows = []
    for _, row in (df.iterrows() if len(df) else iter(())):
        slug, src = run_slug(row), resolve_alias(row["path"])
        commit = row.get("git_commit")
        entry = {k: row.get(k) for k in ("protocol", "data", "model", "method", "seed", "status")}
        entry.update({"slug": slug, "balanced_top1": row.get(HEADLINE), "device": row.get("device_name"),
                      "wall_seconds": row.get("wall_seconds"), "commit": commit[:10] if isinstance(commit, str) else "",
                      "page": None, "files": []})
        if src != Path(row["path"]):  # an alias: its CE run's page and files stand for it
            entry["page"] = entry["files_of"] = run_slug(parse_run_dir(src))
            entry["files"] = [n for n in (METRICS, "history.csv") if (src / n).exists()]
            rows.append(entry)
            continue
        entry["files_of"] = slug
        nb = src / EXECUTED_NOTEBOOK
        title = f"# Run {row['protocol']} / {row['data']} / {row['model']} / {row['method']} / seed {row['seed']}"
        recorded = nb.exists() or (src / PROVENANCE).exists()
        card = _card(src) if recorded else None  # a folder of unfinished attempts only: no page, so no card
        if nb.exists():
            book_nb = nbformat.read(str(nb), as_version=4)
            first = next((c for c in book_nb.cells if c.cell_type == "markdown"), None)
            if first is not None:  # every run's notebook starts "# One training run": give its page its name
                lines = first.source.splitlines()
                first.source = "\n".join([title, *lines[1:]] if lines and lines[0].startswith("# ") else [title, *lines])
            put_card(book_nb, card)
            nbformat.write(book_nb, str(dest / f"{slug}.ipynb"))
            entry["page"] = slug
        elif card:  # recorded without a notebook (the pipeline check): its card
            # is its page; a folder holding only the spend of unfinished attempts gets no page (its row says "missing")
            page = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(title + "\n\nThis run was recorded "
                                                                                 "without an executed notebook.")])
            put_card(page, card)
            nbformat.write(page, str(dest / f"{slug}.ipynb"))
            entry["page"] = slug
        for name in (METRICS, "history.csv"):
            if (src / name).exists():
                (static / slug).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, static / slug / name)
                entry["files"].append(name)
        rows.append(entry)
    index = pd.DataFrame(rows)
    (dest / "index.json").write_text(index.to_json(orient="records"))
    if not any(dest.glob("*.ipynb")):  # the appendix's toctree globs runs/*: give it a page to find
        (dest / "no-runs.md").write_text("# No run notebooks yet\n\n`make demo` (CPU) or `make run-all` (GPU) writes "
                                         "them; `make book` copies them here.\n")
    return index


RUN_CARD_TAG = "run-card"  # the run notebook's cell that shows the card


def _card(run_dir: Path) -> str | None:
    from .cards import card_markdown

    try:
        return card_markdown(run_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged record must not stop the book; the page says so
        return f"**Run card**: could not be generated from this run's files ({type(exc).__name__}: {exc})"


CARD_CELLS = {"card-heading", "run-card", "card-update"}  # the notebook's own card cells (keys: metadata ltkit_cell)


def put_card(nb, card: str | None) -> None:
    """Open a run's page with ``card`` (regenerated from the run's files now, so later attempts are counted): a
    cell right after the title, above the parameters and the code; the notebook's own card cells are left out
    of the page (they would show it a second time)."""
    import nbformat

    if not card:
        return
    nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("ltkit_cell") not in CARD_CELLS
                and RUN_CARD_TAG not in c.get("metadata", {}).get("tags", [])]
    at = next((i + 1 for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), 0)
    nb.cells.insert(at, nbformat.v4.new_markdown_cell(card))


BOOK_CONFIG = REPO / "book" / "_config.yml"


REPOSITORY_CONFIG = REPO / "book" / "_build" / "_config.repository.yml"  # `make book` passes it when it exists


def repository_url(cwd: str | Path = REPO) -> str | None:
    """Where the repository lives, for the book's buttons: ``LTKIT_REPOSITORY_URL``, else git's ``origin``
    as an https address (``git@github.com:o/r.git`` -> ``https://github.com/o/r``); None without one."""
    import subprocess

    url = os.environ.get("LTKIT_REPOSITORY_URL")
    if not url:
        try:
            out = subprocess.run(["git", "remote", "get-url", "origin"], cwd=cwd, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        url = out.stdout.strip() if out.returncode == 0 else ""
    url = re.sub(r"^git@([^:]+):", r"https://\1/", url.strip()).removesuffix(".git")
    return url if url.startswith(("https://", "http://")) else None


def repository_config(url: str | None, src: Path = BOOK_CONFIG, dest: Path = REPOSITORY_CONFIG) -> Path | None:
    """The book's config with the repository, issues and edit-this-page buttons pointing at ``url``
    (written to ``dest``, returned); without a URL, ``dest`` is removed and the book has no such buttons
    (a made-up address would be worse than none)."""
    import yaml

    if not url:
        dest.unlink(missing_ok=True)
        return None
    cfg = yaml.safe_load(src.read_text())
    cfg["repository"] = {"url": url, "path_to_book": "book", "branch": "main"}
    cfg.setdefault("html", {}).update(use_repository_button=True, use_issues_button=True, use_edit_page_button=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, yaml.safe_dump(cfg, sort_keys=False))
    return dest


def prepare_book() -> bool:
    """Before ``jupyter-book build``: stage the runs' notebooks, write the repository buttons' config
    (when the checkout has a remote), then drop a stale execution cache."""
    stage_runs()
    repository_config(repository_url())
    return refresh_book_cache()
