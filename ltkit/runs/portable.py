"""Portable records: a committed run names no folder of the machine that made it.

A run's folder is committed and read from any clone, in any folder (issue #36). Re-executing its
notebook reads the injected parameters (``output_dir``, ``checkpoint_dir``, ``data_root``): they are
written relative to the checkout (:func:`ltkit.core.layout.home`) and resolved against the checkout
that executes the notebook (:func:`resolve`). Provenance keeps the paths inside the checkout relative
to it, and names a folder outside it by the environment variable that points there
(``$LTKIT_DATA``, ``$LTKIT_CHECKPOINTS``) plus, for data, a hash of its content (:func:`data_digest`).

The same rules, applied to a record written before they existed, are :func:`make_run_portable` (the
one-off migration ``ltkit results portable`` runs): it rewrites path strings only, never a number or a
fingerprint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..core.io import atomic_write_json, atomic_write_text, read_json_or_empty
from ..core.layout import EXECUTED_NOTEBOOK, PROVENANCE, home, root_of

DATA_VAR, CKPT_VAR = "$LTKIT_DATA", "$LTKIT_CHECKPOINTS"
NOTEBOOK_PATH_PARAMETERS = ("output_dir", "checkpoint_dir", "data_root")
# an absolute POSIX path of two or more parts, as it appears in a command line, a JSON string or a warning
_ABSOLUTE = re.compile(r"(?<![\w.$~/:-])/(?:[\w.+@-]+/)+[\w.+@-]*")
TEXT_TYPES = ("text/plain", "text/markdown", "text/html")


def relative_path(path: str | Path | None, root: Path | None = None) -> str | None:
    """``path`` relative to the checkout ``root`` (default :func:`home`) where it lies inside it (POSIX form),
    else unchanged (a results folder elsewhere is the user's own, named as they gave it)."""
    if path is None or str(path) == "":
        return None
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to((root or home()).resolve()).as_posix() or "."
    except ValueError:
        return str(path)


def resolve(path: str | Path | None, root: Path | None = None) -> Path | None:
    """A recorded path made usable here: relative ones against the checkout that executes (``root`` or
    :func:`home`), ``$LTKIT_DATA`` / ``$LTKIT_CHECKPOINTS`` expanded where set; None stays None."""
    if path is None or str(path) == "":
        return None
    text = os.path.expandvars(str(path))
    p = Path(text)
    return p if p.is_absolute() else (root or home()) / p


def data_digest(folder: str | Path) -> str | None:
    """A content hash of a data folder: SHA256 of its ``SHA256SUMS`` (which lists a hash per file), else None
    (no cheap content hash: a folder dataset's images are hashed by the subset digest instead)."""
    sums = Path(folder) / "SHA256SUMS"
    try:
        return hashlib.sha256(sums.read_bytes()).hexdigest()
    except OSError:
        return None


def _roots(root: Path, data_root: Path | None, ckpt_root: Path | None) -> list[tuple[str, str]]:
    """(absolute prefix, portable replacement), longest prefix first."""
    pairs = [(str(root.resolve()), "")]
    if str(root) != str(root.resolve()):
        pairs.append((str(root), ""))
    for folder, var in ((data_root, DATA_VAR), (ckpt_root, CKPT_VAR)):
        if folder is not None:
            pairs.append((str(Path(folder)), var))
            pairs.append((str(Path(folder).resolve()), var))
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def portable_text(text: str, root: Path | None = None, data_root: Path | None = None,
                  ckpt_root: Path | None = None) -> str:
    """``text`` with every absolute path made portable: inside the checkout, relative to it; inside the data
    or checkpoint root, ``$LTKIT_DATA/...`` / ``$LTKIT_CHECKPOINTS/...``; the Python interpreter (of a
    virtual environment outside the checkout, say) by its name; any other absolute path by its last part
    (``.../name``): a record must not name the folders of the machine that made it."""
    root = root or home()
    pairs = _roots(root, data_root, ckpt_root)

    def one(m: re.Match) -> str:
        s = m.group(0)
        for prefix, repl in pairs:
            if s == prefix:
                return repl or "."
            if s.startswith(prefix + "/"):
                rest = s[len(prefix) + 1:]
                return f"{repl}/{rest}" if repl else rest
        if re.search(r"/bin/python[\d.]*$", s):
            return Path(s).name
        return f".../{Path(s).name}" if Path(s).name else "..."

    return _ABSOLUTE.sub(one, text)


def portable_parameters(params: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """A notebook's parameters with its path parameters relative to the checkout; a folder outside it that
    re-execution does not need (the checkpoints of a finished run) becomes None."""
    out = dict(params)
    for key in NOTEBOOK_PATH_PARAMETERS:
        if out.get(key):
            rel = relative_path(out[key], root)
            out[key] = rel if rel and not Path(rel).is_absolute() else (None if key == "checkpoint_dir" else rel)
    return out


def portable_provenance(prov: dict[str, Any], root: Path | None = None, data_root: Path | None = None,
                        ckpt_root: Path | None = None) -> dict[str, Any]:
    """Provenance with portable paths (:func:`portable_text` on every string; the data folder named by
    ``$LTKIT_DATA`` and its content hash). Numbers, fingerprints and parameters other than paths unchanged."""
    out = copy.deepcopy(prov)
    meta = ((out.get("dataset") or {}).get("meta") or {})
    origin = meta.get("origin")
    if isinstance(origin, str) and Path(origin).is_absolute():
        digest = data_digest(origin)
        if digest and "origin_sha256" not in meta:
            meta["origin_sha256"] = digest
    if data_root is None and isinstance(origin, str) and Path(origin).is_absolute():
        data_root = Path(origin).parent  # a dataset's folder lies in the data root ($LTKIT_DATA/<dataset>)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return portable_text(v, root, data_root, ckpt_root)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    keep = out.pop("slurm_log", None)  # the cluster's log file: where its user finds it, named as Slurm wrote it
    out = walk(out)
    if "slurm_log" in prov:
        out["slurm_log"] = keep
    params = out.get("parameters")
    if isinstance(params, dict) and isinstance(params.get("data_root"), str) and params["data_root"] == ".":
        params["data_root"] = None
    return out


def _set_injected(source: str, params: dict[str, Any]) -> str:
    """The injected-parameters cell's source with the path parameters' values replaced (papermill writes one
    ``name = value`` line per parameter, values as Python literals)."""
    lines = []
    for line in source.splitlines():
        m = re.match(r"^(\w+) = ", line)
        if m and m.group(1) in NOTEBOOK_PATH_PARAMETERS:
            v = params.get(m.group(1))
            line = f"{m.group(1)} = {json.dumps(v) if v is not None else 'None'}"
        lines.append(line)
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")


def portable_notebook(nb: dict[str, Any], root: Path | None = None, data_root: Path | None = None,
                      ckpt_root: Path | None = None) -> dict[str, Any]:
    """An executed run notebook (as JSON) with portable injected parameters, papermill metadata and outputs
    (stream text such as warnings naming a virtual environment's files)."""
    nb = copy.deepcopy(nb)
    pm = nb.get("metadata", {}).get("papermill")
    params = None
    if isinstance(pm, dict):
        if isinstance(pm.get("parameters"), dict):
            params = pm["parameters"] = portable_parameters(pm["parameters"], root)
        for key in ("input_path", "output_path", "cwd"):
            if isinstance(pm.get(key), str):
                pm[key] = portable_text(pm[key], root, data_root, ckpt_root)
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags:
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            params = portable_parameters(injected_values(src), root)  # the cell's own values, made portable
            cell["source"] = _lines(_set_injected(src, params)) if isinstance(cell["source"], list) else \
                _set_injected(src, params)
        for out in cell.get("outputs", []) or []:
            def fix(v: str | list[str]) -> str | list[str]:
                text = portable_text("".join(v) if isinstance(v, list) else v, root, data_root, ckpt_root)
                return _lines(text) if isinstance(v, list) else text

            if isinstance(out.get("text"), (str, list)):
                out["text"] = fix(out["text"])
            for kind in TEXT_TYPES:
                if isinstance(out.get("data", {}).get(kind), (str, list)):
                    out["data"][kind] = fix(out["data"][kind])
            if out.get("output_type") == "error":
                out["traceback"] = [portable_text(t, root, data_root, ckpt_root) for t in out.get("traceback", [])]
    return nb


def _lines(text: str) -> list[str]:
    """Text as a notebook stores it on disk: a list of lines, each but the last ending in a newline."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def injected_values(source: str) -> dict[str, Any]:
    """The path parameters (:data:`NOTEBOOK_PATH_PARAMETERS`) papermill wrote into a notebook's
    injected-parameters cell, ``source`` being that cell's text: what the notebook, executed as it is, will read."""
    import ast

    out = {}
    for line in source.splitlines():
        m = re.match(r"^(\w+) = (.*)$", line)
        if m and m.group(1) in NOTEBOOK_PATH_PARAMETERS:
            try:
                out[m.group(1)] = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                pass
    return out


def absolute_paths(run_dir: str | Path) -> list[str]:
    """The absolute paths a run's provenance and notebook still name (``ltkit results portable --check``; the
    committed-results tests): empty for a portable record."""
    run_dir = Path(run_dir)
    found = []
    for name in (PROVENANCE, EXECUTED_NOTEBOOK):
        f = run_dir / name
        if f.exists():
            text = f.read_text(encoding="utf-8")
            if name == EXECUTED_NOTEBOOK:  # outputs may hold figures (base64): look at the text parts only
                nb = json.loads(text)
                parts = [json.dumps(nb.get("metadata", {}))]
                for c in nb.get("cells", []):
                    parts.append("".join(c.get("source", [])))
                    for o in c.get("outputs", []) or []:
                        parts.append("".join(o.get("text", [])) if "text" in o else "")
                        parts += ["".join(o.get("data", {}).get(k, "")) for k in TEXT_TYPES]
                        parts.extend(o.get("traceback", []))
                text = "\n".join(parts)
            found += [f"{name}: {m.group(0)}" for m in _ABSOLUTE.finditer(text)
                      if not m.group(0).startswith("/.../")]
    return found


def make_run_portable(run_dir: str | Path, root: Path | None = None, data_root: Path | None = None,
                      ckpt_root: Path | None = None, template: dict[str, Any] | None = None) -> list[str]:
    """Rewrite one run's provenance and notebook with portable paths (the one-off migration of records made
    before issue #36); returns the files it changed. In provenance only strings that are paths change; the
    notebook also gets its recorded-run line and, given ``template`` (``notebooks/train.ipynb``), the
    template's code cells around its own outputs (:func:`adopt_template`)."""
    run_dir = Path(run_dir)
    root = root or _recorded_home(run_dir) or home()
    changed = []
    prov_file, nb_file = run_dir / PROVENANCE, run_dir / EXECUTED_NOTEBOOK
    if prov_file.exists():
        prov = json.loads(prov_file.read_text(encoding="utf-8"))
        new = portable_provenance(prov, root, data_root, ckpt_root)
        if new != prov:
            atomic_write_json(prov_file, new)
            changed.append(str(prov_file))
    if nb_file.exists():
        raw = nb_file.read_text(encoding="utf-8")
        nb = json.loads(raw)
        new = portable_notebook(nb, root, data_root, ckpt_root)
        if template is not None:
            new = adopt_template(new, template) or new
        run_path = read_json_or_empty(prov_file).get("run_path")
        if run_path:  # named as from the checkout: <results folder>/<run path>
            new = recorded_notebook(new, f"{root_of(run_dir).name}/{run_path}")
        if new != nb:
            atomic_write_text(nb_file, notebook_json(new))
            changed.append(str(nb_file))
    return changed


def notebook_json(nb: dict[str, Any]) -> str:
    """A notebook as nbformat writes it (sorted keys, indent 1, UTF-8), so a rewrite changes only what changed."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False, separators=(",", ": "))


def _recorded_home(run_dir: Path) -> Path | None:
    """The checkout that made a record, read from it: the injected ``output_dir`` is
    ``<checkout>/<results>/<run path>`` (the results folder named ``results``, as every grid in configs/ has it)."""
    try:
        nb = json.loads((run_dir / EXECUTED_NOTEBOOK).read_text(encoding="utf-8"))
        out = nb["metadata"]["papermill"]["parameters"]["output_dir"]
        prov = json.loads((run_dir / PROVENANCE).read_text(encoding="utf-8"))
        depth = len(Path(prov["run_path"]).parts)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    p = Path(out)
    if not p.is_absolute() or len(p.parents) <= depth:
        return None
    results = p.parents[depth - 1]
    return results.parent if results.name == "results" else None


RECORDED_MARK = "**Recorded run**"


def recorded_header(run_path: str) -> str:
    """The one line a committed run's notebook opens with (below its title)."""
    return (f"{RECORDED_MARK} `{run_path}`: executed as it is, this notebook shows the record (training nothing, writing "
            f"nothing); `ltkit reproduce {run_path}` (or `reproduce = True`) re-makes it in a scratch folder and compares.")


def recorded_notebook(nb: dict[str, Any], run_path: str | None) -> dict[str, Any]:
    """``nb`` with its first (Markdown) cell's text after the title replaced by :func:`recorded_header`, and
    ``output_dir`` (the injected parameter and papermill's record of it) set to ``run_path``: a recorded notebook
    names the run it records. A forced re-run executes into a staging folder under the checkpoints and moves its
    files in afterwards; named there, the committed notebook found no finished run and, executed as it is,
    trained (or, without the data, failed) instead of showing the record."""
    if not run_path:
        return nb
    pm = nb.get("metadata", {}).get("papermill")
    if isinstance(pm, dict) and isinstance(pm.get("parameters"), dict) and "output_dir" in pm["parameters"]:
        pm["parameters"]["output_dir"] = run_path
    for cell in nb.get("cells", []):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if re.search(r"^output_dir = ", src, re.M):
                new = _set_injected(src, {**injected_values(src), "output_dir": run_path})
                cell["source"] = _lines(new) if isinstance(cell["source"], list) else new
    first = next((c for c in nb.get("cells", []) if c.get("cell_type") == "markdown"), None)
    if first is None:
        return nb
    src = "".join(first["source"]) if isinstance(first["source"], list) else first["source"]
    title = src.splitlines()[0] if src.startswith("# ") else "# One training run"
    text = f"{title}\n\n{recorded_header(run_path)}"
    first["source"] = _lines(text)
    return nb


# The cells of notebooks/train.ipynb before each cell carried its key (metadata ``ltkit_cell``): how a record
# executed from that version is recognised, cell by cell (its first line, or its tag), for :func:`adopt_template`.
_LEGACY_CELLS = (
    ("tag", "parameters", "parameters"), ("tag", "injected-parameters", "injected"), ("tag", "run-card", "run-card"),
    ("start", "# One training run", "header"), ("start", "%matplotlib inline", "config"),
    ("start", "## Run card", "card-heading"), ("start", "## Data", "data-heading"), ("start", "ds = load_data(cfg)", "data"),
    ("start", "## Training", "train-heading"), ("start", "result = notebook.train_and_record", "train"),
    ("start", "## Learning curves", "curves-heading"), ("start", "if len(result.history)", "curves"),
    ("start", "## Metrics", "metrics-heading"), ("start", "rows = []", "metrics"),
    ("start", "## Per-class accuracy", "per-class-heading"), ("start", "for split in result.predictions:", "per-class"),
    ("start", "## Where the tail classes go", "confusions-heading"),
    ("start", "from ltkit.metrics import confusion_pairs", "confusions"),
    ("start", "# the run card at the top of this notebook", "card-update"),
)


def _cell_key(cell: dict[str, Any]) -> str | None:
    key = cell.get("metadata", {}).get("ltkit_cell")
    if key:
        return key
    tags = cell.get("metadata", {}).get("tags", [])
    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    for how, mark, k in _LEGACY_CELLS:
        if (how == "tag" and mark in tags) or (how == "start" and src.startswith(mark)):
            return k
    return None


def adopt_template(nb: dict[str, Any], template: dict[str, Any]) -> dict[str, Any] | None:
    """An executed run notebook re-cast in the current template's cells: each template cell carries the outputs
    of the record's cell with the same key (the record's setup cell showed the configuration: those outputs go
    to the template's configuration cell); the injected parameters and the notebook's metadata are the
    record's. The outputs are the record's own (the numbers as the run printed them); the code is the
    template's, so that executing the record again runs code this ltkit still has. None where a cell of
    the record is not recognised (left as it is)."""
    old: dict[str, dict[str, Any]] = {}
    for cell in nb.get("cells", []):
        key = _cell_key(cell)
        if key is None or key in old:
            return None
        old[key] = cell
    if "injected" not in old:
        return None
    cells = []
    for t in template["cells"]:
        key = t.get("metadata", {}).get("ltkit_cell")
        cell = copy.deepcopy(t)
        src = old.get(key)
        if cell["cell_type"] == "code":
            cell["outputs"] = copy.deepcopy(src.get("outputs", [])) if src else []
            cell["execution_count"] = src.get("execution_count") if src else None
        if src is not None:  # the record's execution times and papermill status, with the template's key and tags
            cell["metadata"] = {**src.get("metadata", {}), **cell.get("metadata", {})}
        cells.append(cell)
        if key == "parameters":
            cells.append(copy.deepcopy(old["injected"]))
    out = copy.deepcopy(nb)
    out["cells"] = cells
    return out
