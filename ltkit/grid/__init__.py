"""Grids: a YAML file of runs (:mod:`.spec`), planned without training (:mod:`.plan`, :mod:`.packing`),
executed run by run (:mod:`.execute`, :mod:`.processes`) by an executor (:mod:`.executors`: ``local``
or submitit, :mod:`.submitit`), and the CPU campaign, a long queue of grid runs in the background
(:mod:`.campaign`). Importing this package, :mod:`.spec` or :mod:`.plan` imports no torch."""

from .plan import Outcome, plan, progress
from .spec import Grid, grid_from_spec, load_grid

__all__ = ["Grid", "Outcome", "grid_from_spec", "load_grid", "plan", "progress"]
