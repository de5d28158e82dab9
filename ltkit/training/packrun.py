"""``python -m ltkit.training.packrun PARAMS.yaml``: train a pack of runs (:func:`.pipeline.run_pack`) and
write each run's results folder, as the notebook does for a single run.

The grid runner starts it as a child process (so Ctrl-C, SIGTERM and a killed runner stop it as
they stop a notebook). ``PARAMS.yaml`` holds ``runs`` (resolved configs), ``checkpoint_dirs`` and
``output_dirs``, one each per run. A run that diverges gets its failure recorded; the others'
results are written whatever happens to it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ..core.io import yaml_load
from ..runs.provenance import now
from ..runs.records import record_failure, write_run
from .check import make_config
from .pipeline import run_pack

_log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ltkit.training.packrun PARAMS.yaml", file=sys.stderr)
        return 2
    spec = yaml_load(Path(args[0]).read_text(encoding="utf-8"))
    cfgs = [make_config(r) for r in spec["runs"]]  # resolved by the grid that wrote them, checked again here
    outs = [Path(d) for d in spec["output_dirs"]]
    start, t0 = now(), time.perf_counter()
    try:
        results = run_pack(cfgs, spec["checkpoint_dirs"], progress=spec.get("progress", True))
    except Exception as exc:  # the pack as a whole failed (data, memory): every run records it
        for cfg, out in zip(cfgs, outs, strict=True):
            record_failure(out, cfg, start, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
        raise
    wall = time.perf_counter() - t0
    failed = 0
    for cfg, out, res in zip(cfgs, outs, results, strict=True):
        if isinstance(res, Exception):
            record_failure(out, cfg, start, wall, f"{type(res).__name__}: {res}")
            failed += 1
        else:
            write_run(out, res, start, wall)  # wall: the pack's, shared by its runs
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
