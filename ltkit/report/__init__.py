"""Report: what the book and the run notebook show, all read from ``results/``.

:mod:`.collect` (runs into a table, done as :mod:`ltkit.runs.status` judges it) · :mod:`.names`
(labels and order of methods, from the registries) · :mod:`.tables` (mean ± std, comparisons,
intervals) · :mod:`.published` (the papers' numbers beside ours) · :mod:`.prose` (generated
sentences) · :mod:`.render` (MyST tables, glue) · :mod:`.figures` · :mod:`.book` (staging the book).
The book's pages use the names re-exported here (``from ltkit import report; report.collect(...)``).
"""

from ..core.layout import REPO
from ..runs.status import resolve_alias
from .book import BOOK_CONFIG, RUNS_DIR, prepare_book, refresh_book_cache, repository_config, repository_url, stage_runs
from .cards import card_markdown, notebook_card, recipe_differences, run_card, update_notebook_card
from .collect import collect, curves, failed, finished, results_root, split_legacy
from .compute import attempts_table, compute_table, projections
from .figures import (
    bars,
    facet_bars,
    no_runs_figure,
    plot_class_distribution,
    plot_curves,
    plot_history,
    plot_per_class,
)
from .names import THESIS_LOSS_ORDER, method_label, method_order, ordered
from .prose import against_ce_summary, findings, published_sentences
from .published import against_published, published, published_pivot, published_summary, source_note
from .render import glue_figure, glue_table, md_table
from .tables import (
    CATEGORIES,
    SHOT,
    across,
    across_long,
    bold_best,
    compare_to_baseline,
    comparison_table,
    mean_std,
    mean_std_table,
    relative_accuracy_table,
    tidy,
    variance_sources,
)

__all__ = ["across", "across_long", "against_ce_summary", "against_published", "attempts_table", "bars", "bold_best", "BOOK_CONFIG",
           "card_markdown", "CATEGORIES", "collect", "compare_to_baseline", "comparison_table", "compute_table", "curves",
           "facet_bars", "failed", "findings", "finished", "glue_figure", "glue_table", "md_table", "mean_std",
           "mean_std_table", "method_label", "method_order", "no_runs_figure", "notebook_card", "ordered",
           "plot_class_distribution", "plot_curves",
           "plot_history", "plot_per_class", "prepare_book", "projections", "published", "published_pivot", "published_summary",
           "published_sentences", "recipe_differences", "refresh_book_cache", "relative_accuracy_table", "REPO",
           "repository_config", "repository_url", "resolve_alias", "results_root", "run_card", "RUNS_DIR", "SHOT",
           "source_note", "split_legacy", "stage_runs", "THESIS_LOSS_ORDER", "tidy", "update_notebook_card", "variance_sources"]
