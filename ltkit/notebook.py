"""What ``notebooks/train.ipynb`` calls: build the config, then show, train or reproduce the run.

Keeping this logic here keeps the notebook short enough to read and re-run by hand, and lets the
tests exercise it without Jupyter. The notebook's parameters cell is the one list of its parameters
(:mod:`ltkit.config.parameters` reads it).

One notebook, three uses (:func:`open_run` decides, and its ``headline`` says which):

* **show**: ``output_dir`` holds a finished run of this very configuration (every committed run's
  notebook, executed as it is, from any clone in any folder): its record is shown (data from the
  recorded counts, curves, metrics, per-class plots, confusions) and nothing is trained or written;
* **reproduce** (``reproduce = True``): that run is trained again into a scratch folder and compared
  with the record (:mod:`ltkit.training.reproduce`, what ``ltkit reproduce`` runs);
* **train**: anything else; a new configuration trains into its own ``output_dir`` (or writes nothing
  without one). A folder holding a finished run of *another* configuration is refused, never overwritten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config.fields import ConfigError, RunConfig
from .config.parameters import config_parameter_names
from .core.io import read_json, read_json_or_empty
from .core.layout import COMPLETE, PROVENANCE
from .runs.portable import relative_path, resolve
from .runs.provenance import now
from .runs.recorded import recorded_data
from .runs.records import RunResult, load_record, record_failure, write_run
from .runs.status import Status, run_status
from .training import reproduce as reproducing
from .training.check import make_config
from .training.pipeline import run


def run_config(params: dict[str, Any], smoke: bool = False, extra: dict[str, Any] | None = None) -> RunConfig:
    """The notebook's parameters (its namespace: the config fields among them are taken) plus ``extra``
    (any other RunConfig field) as a validated RunConfig; ``smoke`` = 1 epoch of 2 steps.

    Reproducing (``reproduce`` and ``output_dir`` among the parameters): the recorded run's configuration, what the
    reproduction trains, whatever the other parameters say. ``papermill run.ipynb out.ipynb -p reproduce True -p
    output_dir <run>`` replaces the executed notebook's injected cell, so the template's defaults stood there and
    the notebook showed them as its configuration while the recorded one trained."""
    if params.get("reproduce") and params.get("output_dir"):
        return reproducing.plan(resolve(params["output_dir"]), smoke=smoke).cfg
    cfg = {k: params[k] for k in config_parameter_names() if k in params}
    cfg.update(extra or {})
    if smoke:
        cfg.update(epochs=1, max_steps=2, bootstrap=100, stage2_epochs=1)
    return make_config(cfg)


class Clock:
    def __init__(self) -> None:
        self.start, self.t0 = now(), time.perf_counter()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.t0


def packed_record(output_dir: str | Path | None, cfg: RunConfig) -> dict | None:
    """The pack a finished run of this very configuration was trained in (provenance ``run.packed``), else None."""
    if not output_dir or run_status(output_dir, cfg.fingerprint()) != Status.DONE:
        return None
    try:
        return read_json(Path(output_dir) / PROVENANCE)["run"].get("packed")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_and_record(cfg: RunConfig, output_dir: str | Path | None, checkpoint_dir: str | Path | None, clock: Clock,
                     ds=None, progress: bool = True):
    """Run and write the results folder; on failure, record it in provenance and re-raise.

    A run that a packed model already trained and recorded (:mod:`ltkit.training.packed`, provenance
    ``run.packed``) is read back instead, so its notebook shows that record without training
    or writing anything (``ltkit grid record`` executes such notebooks after a pack); its
    ``extra['record_of_pack']`` says which pack.
    """
    if packed_record(output_dir, cfg) is not None:
        return load_record(output_dir, cfg)
    try:
        result = run(cfg, ckpt_dir=checkpoint_dir, progress=progress, ds=ds)
    except Exception as exc:
        if output_dir:
            record_failure(output_dir, cfg, clock.start, clock.wall, f"{type(exc).__name__}: {exc}")
        raise
    if output_dir:
        write_run(output_dir, result, clock.start, clock.wall)
    return result


SHOW, TRAIN, REPRODUCE = "show", "train", "reproduce"


@dataclass
class NotebookRun:
    """What the notebook does with its parameters (:func:`open_run`), and the calls its cells make."""

    cfg: RunConfig
    mode: str
    output_dir: Path | None
    checkpoint_dir: Path | None
    headline: str
    record: RunResult | None = None
    reproduction: reproducing.Reproduction | None = None
    report: dict[str, Any] | None = None

    def data(self):
        """The dataset: the recorded counts of a shown run (no image is loaded), else the real data."""
        if self.mode == SHOW:
            return recorded_data(self.output_dir)
        from .training.engine import load_data

        return load_data(self.reproduction.cfg if self.reproduction else self.cfg)

    def result(self, clock: Clock, ds=None, progress: bool = True) -> RunResult:
        """The run's result: read back (show), trained into the scratch folder and compared (reproduce), or
        trained and recorded (train)."""
        if self.mode == SHOW:
            return self.record
        if self.mode == REPRODUCE:
            rep = self.reproduction
            result = reproducing.train(rep, progress=progress, ds=ds)
            self.report = reproducing.compare(rep.run_dir, rep.output_dir, rep.smoke, rep.epochs)
            reproducing.write_report(self.report, rep.output_dir)
            print("\n".join(reproducing.report_lines(self.report)))
            return result
        return train_and_record(self.cfg, self.output_dir, self.checkpoint_dir, clock, ds=ds, progress=progress)


def open_run(cfg: RunConfig, output_dir: str | Path | None, checkpoint_dir: str | Path | None = None,
             reproduce: bool = False, smoke: bool = False) -> NotebookRun:
    """Decide what the notebook does (see the module's docstring). Paths are resolved against the checkout
    that executes the notebook (relative ones, as every committed run records them)."""
    out, ckpt = resolve(output_dir), resolve(checkpoint_dir)
    shown = relative_path(out) if out else None
    if reproduce:
        if out is None:
            raise ConfigError("reproduce = True needs output_dir: the finished run to reproduce (e.g. "
                              "results/cao2019/cifar100_exp100/resnet32/ce/seed0); papermill's -p replaces an executed "
                              "notebook's parameters, so pass -p output_dir <run> too, or run `ltkit reproduce <run>`")
        rep = reproducing.plan(out, smoke=smoke)
        return NotebookRun(rep.cfg, REPRODUCE, out, ckpt, f"Reproducing the recorded run {shown} into the scratch folder "
                           f"{rep.output_dir} (nothing under results/ is written); the comparison follows training.",
                           reproduction=rep)
    if out is not None and run_status(out, cfg.fingerprint()) == Status.DONE:
        return NotebookRun(cfg, SHOW, out, ckpt, f"Recorded run {shown}: this shows its record, training nothing and "
                           f"writing nothing. To re-make it: `ltkit reproduce {shown}` (or reproduce = True).",
                           record=load_record(out, cfg))
    if out is not None and run_status(out) in (Status.DONE, Status.STALE):
        other = read_json_or_empty(out / COMPLETE).get("fingerprint")
        raise ConfigError(f"output_dir {shown} holds a finished run of another configuration (fingerprint {other}; "
                          f"these parameters give {cfg.fingerprint()}): it is never overwritten. Set output_dir to a "
                          "new folder to train this configuration, or restore the recorded parameters to show it")
    where = f"into {shown}" if out else "(output_dir is None: nothing is written)"
    return NotebookRun(cfg, TRAIN, out, ckpt, f"Training {cfg.run_path()} {where}.")
