"""A grid file: a YAML that declares runs (a base, axes, seeds, methods), read and checked in full.

    name: demo
    results: results/demo            # where run folders go
    base: {protocol: cao2019, dataset: synthetic, model: tiny_cnn, epochs: 8}
    axes: {model: [tiny_cnn]}         # optional cartesian product over config fields
    seeds: [0, 1]
    methods: [ce, bs, {method: focal_g1, loss: focal, loss_params: {gamma: 1}},
              {method: lap, procedure: la_posthoc, stage1: ce}, two_expert]

A method given as a bare name is a loss (``bs``) or a procedure (``two_expert``); ``extends:
other.yaml`` takes another grid and changes what this one states. Every run is checked when the grid
is loaded (:func:`ltkit.training.check.make_config`), so a typo fails before anything starts.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config.fields import ConfigError, RunConfig
from ..core.io import yaml_load
from ..core.layout import campaign_checkpoints_root, checkpoints_root
from ..core.layout import home as default_home
from ..training.check import make_config
from ..training.procedures import PROCEDURES

GRID_KEYS = {"extends", "name", "description", "results", "base", "axes", "seeds", "methods", "slurm", "runs_per_gpu",
             "pack"}


PACK_AUTO = 32  # runs per pack when ``pack: auto`` finds a GPU (issue #15's largest measured size)


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass
class Grid:
    name: str
    results: Path
    runs: list[RunConfig]
    slurm: dict[str, Any] = field(default_factory=dict)
    runs_per_gpu: int | str = "auto"
    path: Path | None = None
    pack: int | str = "auto"  # auto: up to PACK_AUTO runs per pack on a GPU, none on a CPU; off; or a number >= 2
    checkpoints: Path | None = None  # the checkpoint root (default: layout.checkpoints_root())
    home: Path | None = None  # the checkout its relative paths name (default: layout.home())

    def run_dir(self, cfg: RunConfig) -> Path:
        return self.results / cfg.run_path()

    @property
    def ckpt_root(self) -> Path:
        """``checkpoints/<name>-<8 hex of the results folder>``: the same grid with two ``--results``
        folders keeps two sets of checkpoints. A results folder inside the checkout (:func:`layout.home`) is
        keyed by its path relative to it, so that another clone of the repository (the campaign's checkpoints
        are in a per-user cache, :func:`layout.campaign_checkpoints_root`) finds the same checkpoints."""
        res = self.results.resolve()
        try:
            where = res.relative_to((self.home or default_home()).resolve()).as_posix()
        except ValueError:
            where = str(res)
        key = hashlib.sha256(where.encode()).hexdigest()[:8]
        return (self.checkpoints or checkpoints_root()) / f"{self.name}-{key}"

    def ckpt_dir(self, cfg: RunConfig) -> Path:
        return self.ckpt_root / cfg.run_path()

    def campaign_ckpt_root(self) -> Path | None:
        """The campaign's checkpoint root for this checkout (the per-user cache, what ``LTKIT_CHECKPOINTS`` names
        to start from the campaign's checkpoints), where that is not this grid's own root; None where the two are
        one (the campaign's own runs, or ``LTKIT_CHECKPOINTS`` set)."""
        if self.checkpoints is not None:
            return None
        root = campaign_checkpoints_root(self.home or default_home())
        return None if root.resolve() == checkpoints_root().resolve() else root

    def campaign_ckpt_dir(self, cfg: RunConfig) -> Path | None:
        """The same run's checkpoint folder under the campaign's root (:meth:`campaign_ckpt_root`): a plain
        ``ltkit grid run`` or ``grid status`` in the checkout then sees a run the campaign is training (and leaves
        it alone) instead of calling it missing and training it a second time."""
        root = self.campaign_ckpt_root()
        return None if root is None else root / self.ckpt_root.name / cfg.run_path()


def _read_spec(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"grid file {path} does not exist (grids live in configs/)")
    if not path.is_file():
        raise ConfigError(f"grid file {path} is a directory, not a YAML file (grids live in configs/*.yaml)")
    try:
        spec = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"grid file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"grid file {path} is not valid YAML{where}: {what} (plain YAML only: no !!python tags)") \
            from None
    if spec is None:
        raise ConfigError(f"grid file {path} is empty (expected at least 'methods:' and 'base:'; see configs/demo.yaml)")
    return spec


def _resolve_extends(spec: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """``extends: other.yaml`` (beside this file): that grid, with this file's keys on top and
    its ``base`` merged field by field, so a variant states only what differs (e.g. the IF)."""
    if not isinstance(spec, dict) or "extends" not in spec:
        return spec
    parent_path = (path.parent / str(spec["extends"])).resolve()
    if parent_path in seen or parent_path == path.resolve():
        chain = " -> ".join(p.name for p in (*seen, path.resolve(), parent_path))
        raise ConfigError(f"grid file {path}: 'extends' goes round in a circle ({chain})")
    parent = _resolve_extends(_read_spec(parent_path), parent_path, (*seen, path.resolve()))
    if not isinstance(parent, dict):
        raise ConfigError(f"grid file {parent_path} (extended by {path}) is not a mapping")
    child = {k: v for k, v in spec.items() if k != "extends"}
    merged = {**parent, **child}
    if isinstance(parent.get("base"), dict) and isinstance(child.get("base"), dict):
        merged["base"] = {**parent["base"], **child["base"]}
    if "name" not in child:
        merged.pop("name", None)  # a variant is named after its own file, never its parent's
    return merged


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None, results: str | Path | None = None,
              home: Path | None = None) -> Grid:
    """Read and fully validate a grid file; ``overrides`` apply to every run (e.g. a tiny CI setting);
    ``home``: the checkout its relative ``results`` and ``data_root`` name (default: ``layout.home()``)."""
    path = Path(path)
    return grid_from_spec(_resolve_extends(_read_spec(path), path), overrides, results, path, home)


def grid_from_spec(spec: dict, overrides: dict | None = None, results: str | Path | None = None,
                   path: Path | None = None, home: Path | None = None) -> Grid:
    if not isinstance(spec, dict):
        raise ConfigError(f"a grid must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {', '.join(map(repr, unknown))} (accepted: {', '.join(sorted(GRID_KEYS))})")
    name = spec.get("name") or (path.stem if path else "grid")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"bad value for 'name': {name!r} (accepted: letters, digits, '_', '-', '.', starting with "
                          "a letter or digit, no '..' and no '/': it names the grid's checkpoint folder)")
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"bad value for 'base': {base!r} (accepted: a mapping of config fields)")
    base = dict(base)
    axes = spec.get("axes") or {}
    seeds = spec.get("seeds", [base.get("seed", 42)])
    methods = spec.get("methods", ["ce"])
    if methods == [] or methods is None:
        raise ConfigError("bad value for 'methods': an empty list (accepted: a non-empty list of loss names or "
                          "mappings; leave the key out for plain CE)")
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"bad value for 'axes': {axes!r} (accepted: a mapping of field -> non-empty list)")
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"bad value for 'seeds': {seeds!r} (accepted: a non-empty list of integers >= 0)")
    if not isinstance(methods, list):
        raise ConfigError(f"bad value for 'methods': {methods!r} (accepted: a list of loss names or mappings)")
    runs: list[RunConfig] = []
    keys = list(axes)
    checkout = home or default_home()
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds):
        raise ConfigError(f"bad value for 'seeds': {seeds!r} (accepted: a non-empty list of integers >= 0)")
    for seed in seeds:  # seed-major order: a grid cut short still covers every method once
        for combo, m in itertools.product(itertools.product(*(axes[k] for k in keys)), methods):
            mdict = ({"procedure": m} if m in PROCEDURES else {"loss": m}) if isinstance(m, str) else dict(m)
            params = {**base, **dict(zip(keys, combo, strict=True)), **mdict, "seed": seed, **(overrides or {})}
            if isinstance(params.get("data_root"), str) and not Path(params["data_root"]).is_absolute():
                # like 'results': relative to the checkout, made absolute here, since the notebook runs in notebooks/
                params["data_root"] = os.path.abspath(checkout / params["data_root"])  # symlinks kept: a folder's tag
            try:
                runs.append(make_config(params))
            except ConfigError as exc:
                what = mdict.get("method") or mdict.get("procedure") or mdict.get("loss") or mdict.get("label")
                where = f"{path or 'grid'}: method {what!r}, seed {seed}"
                raise ConfigError(f"{where}: {exc}") from None
    labels = {(r.run_path()) for r in runs}
    if len(labels) != len(runs):
        clash = sorted(set(keys) & set(overrides or {}))
        hint = (f"--set {', '.join(clash)} overrides the grid's axis {', '.join(map(repr, clash))}, so its values "
                "collapse into one; drop the axis or the --set" if clash else "give methods distinct 'method' names")
        raise ConfigError(f"{path or 'grid'}: two runs share a results folder; {hint}")
    for r in runs:
        if r.stage1 and r.stage1_path() not in labels:
            raise ConfigError(f"{path or 'grid'}: {r.method!r} starts from stage one {r.stage1!r}, which the grid lacks")
    res = Path(results or spec.get("results") or f"results/{name}")
    if not res.is_absolute():
        res = checkout / res
    return Grid(name, res, runs, dict(spec.get("slurm") or {}), spec.get("runs_per_gpu", "auto"), path,
                check_pack(spec.get("pack", "auto")), home=checkout)


def check_pack(value: Any) -> int | str:
    """The ``pack`` setting: ``auto``, ``off`` or a pack size >= 2 (a YAML ``off`` reads as false)."""
    if value is False:
        value = "off"
    if value in ("auto", "off") or (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 2:
        return int(value)
    raise ConfigError(f"bad value for 'pack': {value!r} (accepted: auto, off, or a number of runs >= 2)")
