"""Tables, figures and statistical comparisons from sweep workdirs.

Usage::

    python -m cmseg_jax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR \\
        [--format md|csv|json] [--alpha 0.05] [--threshold_metric mcc]

Reads workdirs in the format of ``docs/workdir.md``, finished or not, and always writes
``REPORT_DIR/report.md`` with its PNG figures (matplotlib's Agg canvas; no display needed).
``--format csv`` additionally writes the tables as CSV files (``summary.csv``, ``seeds.csv``,
``thresholds.csv``, ``curves.csv``, ``comparisons.csv``); ``--format json`` writes all of it as
``report.json`` (NaN written as ``null``).

Evaluation variants: besides the model as trained (variant ``default``: ``results.csv``,
``final_stats.npz``), a sweep may write extra final evaluations of the same trained parameters
with a file suffix (see :data:`cmseg_jax.workdir.VARIANTS`); today ``no_smoothing``
(``results_no_smoothing.csv``, ``final_stats_no_smoothing.npz``: evaluated with the Gaussian
smoothing layer removed at test time, trained with it). Each variant a run has gets its own
thesis table and fair-threshold section, and its own rows in ``summary.csv``, ``seeds.csv``
and ``thresholds.csv`` (column ``variant``) and entry under ``runs.<name>.variants`` in
``report.json``. Learning curves, figures and comparisons are of the ``default`` variant only.

Per run:

* the thesis table: rows Acc/MCC/IoU/Dice/Prec/Rec and Cls-*, columns Training/Validation/Testing,
  cells ``mean ± std (median)`` over seeds (std with ``ddof=1``). Values come from
  ``results.csv`` when it exists, else from the last complete epoch of ``metrics.jsonl``.
  Diverged seeds (listed by ``run.json`` or flagged in ``metrics.jsonl``) are counted, listed and
  their values set to NaN; a cell whose ``n`` differs from the run's is marked ``[n=..]``;
* a histogram of MCC per seed (training blue, validation orange, testing red);
* learning curves: per metric and epoch the mean over seeds with a 95 % t-interval band;
* a heat-map grid from ``examples.npz``: rows best / median / worst seed (by validation MCC),
  columns image, ground truth, liver score, thresholded prediction;
* threshold-free and fair-threshold evaluation (Choe et al., CVPR 2020) from ``final_stats.npz``:
  PxAP per seed and split, and the metrics at a threshold chosen per seed on the *validation*
  histograms only (maximising ``--threshold_metric``), applied unchanged to the test split, next
  to the metrics at the model's own (fixed) threshold;
* the thesis table and the threshold evaluation again for every extra evaluation variant present.

Across runs (the first RUN_DIR is the baseline): for each metric and split, Mood's median test,
Welch's t-test, Anderson-Darling normality per group and which median is higher
(:func:`cmseg_jax.stats.compare`), with a compact thesis-style ablation table (table 8.7).
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

from cmseg_jax import errors, io_utils, metrics
from cmseg_jax.report.build import build_report

FORMATS = ("md", "csv", "json")


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (module docstring). Returns the exit status: 0 ok, 1 unreadable workdir, 2 usage."""
    parser = errors.ArgumentParser(
        prog="python -m cmseg_jax.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="sweep workdirs; the first is the baseline"
    )
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        action="append",
        default=None,
        help="md (default; always written), csv or json; may be repeated",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level")
    parser.add_argument(
        "--threshold_metric",
        choices=metrics.METRIC_NAMES,
        default="mcc",
        help="metric the validation-chosen threshold maximises",
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha {args.alpha}: must be between 0 and 1")
    return errors.run_main(_main, args)


def _main(args: argparse.Namespace) -> int:
    io_utils.check_creatable(args.out, f"--out={args.out}", directory=True)
    build_report(args.run_dirs, args.out, args.format or ["md"], args.alpha, args.threshold_metric)
    print(pathlib.Path(args.out) / "report.md")
    return 0
