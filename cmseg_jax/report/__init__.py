"""Tables, figures and statistical comparisons from sweep workdirs.

``python -m cmseg_jax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR`` (:mod:`.cli`, where the
report's content is described). The package's parts: :mod:`.runs` reads a workdir through
:mod:`cmseg_jax.workdir`, :mod:`.analysis` computes, :mod:`.figures` draws, :mod:`.render`
writes markdown, CSV and JSON, :mod:`.build` puts a report together.
"""

from cmseg_jax.report.analysis import (
    CURVE_METRICS,
    compare_runs,
    fair_threshold_evaluation,
    learning_curves,
    summary_table,
    t_interval,
)
from cmseg_jax.report.build import build_report
from cmseg_jax.report.cli import FORMATS, main
from cmseg_jax.report.figures import plot_examples, plot_learning_curves, plot_mcc_histogram
from cmseg_jax.report.render import (
    ABLATION_METRICS,
    ablation_markdown,
    fair_threshold_markdown,
    thesis_table_markdown,
)
from cmseg_jax.report.runs import VARIANT_TITLES, Run, last_complete_epoch, load_run

__all__ = [
    "ABLATION_METRICS",
    "CURVE_METRICS",
    "FORMATS",
    "VARIANT_TITLES",
    "Run",
    "ablation_markdown",
    "build_report",
    "compare_runs",
    "fair_threshold_evaluation",
    "fair_threshold_markdown",
    "last_complete_epoch",
    "learning_curves",
    "load_run",
    "main",
    "plot_examples",
    "plot_learning_curves",
    "plot_mcc_histogram",
    "summary_table",
    "t_interval",
    "thesis_table_markdown",
]
