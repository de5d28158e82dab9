"""A run's folder in ``results/``: its status (the one judge of *done*), its provenance, writing and
reading its files. No torch at import."""

from .status import Status, load_metrics, mark_complete, run_status

__all__ = ["Status", "load_metrics", "mark_complete", "run_status"]
