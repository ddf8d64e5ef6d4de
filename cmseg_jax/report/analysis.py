"""The report's computations: summary tables, t-intervals, learning curves, the fair-threshold
evaluation and run-to-run comparisons (host side; numpy and scipy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from cmseg_jax import metrics, stats
from cmseg_jax.report.runs import Run, row_value
from cmseg_jax.results import RESULT_METRICS, SPLITS

CURVE_METRICS = metrics.METRIC_NAMES + ("cls_mcc", "loss")


def summary_table(run: Run) -> dict[str, dict[str, dict]]:
    """split -> metric -> :func:`cmseg_jax.stats.summarize` of the run's per-seed values."""
    return {
        split: {m: stats.summarize(v) for m, v in run.values[split].items()} for split in SPLITS
    }


def t_interval(values: np.ndarray, axis: int = 0, confidence: float = 0.95) -> dict:
    """Mean and two-sided Student-t confidence interval of the mean, ignoring NaN.

    Args:
        values: array with the sample along ``axis``.
        axis: sample axis.
        confidence: coverage of the interval.

    Returns:
        ``{"mean", "low", "high", "n"}`` arrays over the remaining axes; ``low``/``high`` NaN
        where fewer than 2 values.
    """
    values = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(values), axis=axis)
    safe_n = np.maximum(n, 1)
    total = np.nansum(values, axis=axis)
    mean = np.where(n > 0, total / safe_n, np.nan)
    dev = np.where(np.isnan(values), 0.0, values - np.expand_dims(mean, axis))
    var = np.where(n > 1, np.sum(dev**2, axis=axis) / np.maximum(n - 1, 1), np.nan)
    half = sps.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * np.sqrt(var / safe_n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def learning_curves(run: Run) -> dict[str, dict[str, dict]]:
    """metric -> split -> ``{"epoch": (E,), "mean", "low", "high", "n"}`` from ``metrics.jsonl``.

    Seeds that diverged at any point are left out of every epoch, so each curve follows one fixed
    set of seeds.
    """
    if not run.epochs:
        return {}
    bad = set(run.diverged)
    rows = [r for r in run.epochs if int(r["seed"]) not in bad]
    epochs = sorted({int(r["epoch"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    e_index = {e: i for i, e in enumerate(epochs)}
    s_index = {s: i for i, s in enumerate(seeds)}
    curves: dict[str, dict[str, dict]] = {}
    for metric in CURVE_METRICS:
        if not any(metric in r for r in rows):
            continue
        for split in SPLITS:
            grid = np.full((len(seeds), len(epochs)), np.nan)
            for r in rows:
                if r["split"] == split and metric in r:
                    grid[s_index[int(r["seed"])], e_index[int(r["epoch"])]] = row_value(r, metric)
            if np.all(np.isnan(grid)):
                continue
            curves.setdefault(metric, {})[split] = {"epoch": np.array(epochs)} | t_interval(grid)
    return curves


def fair_threshold_evaluation(
    final_stats: dict[str, np.ndarray], metric: str = "mcc", exclude_seeds: Sequence[int] = ()
) -> dict:
    """PxAP and metrics at a validation-chosen threshold (Choe et al., CVPR 2020).

    The threshold of each seed is chosen on its validation histograms only
    (:func:`cmseg_jax.metrics.best_threshold`), then applied unchanged to every split, so test
    labels never influence it.

    Args:
        final_stats: arrays of ``final_stats.npz``: ``seeds (S,)``, ``splits (3,)``,
            ``confusion (S, 3, 4)``, ``hist_liver (S, 3, B)``, ``hist_background (S, 3, B)``.
        metric: metric maximised on validation (one of ``metrics.METRIC_NAMES``).
        exclude_seeds: seed ids (diverged) whose results are set to NaN.

    Returns:
        ``{"seeds": (S,), "splits": (3,), "threshold": (S,), "pxap": (S, 3),
        "fixed": metric -> (S, 3), "chosen": metric -> (S, 3)}``; ``fixed`` from the stored
        confusion counts (the model's own threshold), ``chosen`` at ``threshold``.
    """
    splits = [str(s) for s in final_stats["splits"]]
    seeds = np.asarray(final_stats["seeds"], dtype=np.int64)
    hist_pos = np.asarray(final_stats["hist_liver"], dtype=np.float64)
    hist_neg = np.asarray(final_stats["hist_background"], dtype=np.float64)
    val = splits.index("val")
    bad = np.isin(seeds, np.asarray(exclude_seeds, dtype=np.int64))

    threshold = metrics.best_threshold(hist_pos[:, val], hist_neg[:, val], metric=metric)
    threshold = np.where(bad, np.nan, threshold)
    # Threshold per seed, broadcast over the split axis.
    chosen_counts = metrics.confusion_at_threshold(
        hist_pos, hist_neg, np.nan_to_num(threshold, nan=0.0)[:, None]
    )
    pxap = metrics.pxap(hist_pos, hist_neg)
    fixed = metrics.metrics_from_confusion(final_stats["confusion"])
    chosen = metrics.metrics_from_confusion(chosen_counts)
    nan_rows = bad[:, None]
    return {
        "seeds": seeds,
        "splits": splits,
        "metric": metric,
        "threshold": threshold,
        "pxap": np.where(nan_rows, np.nan, pxap),
        "fixed": {m: np.where(nan_rows, np.nan, v) for m, v in fixed.items()},
        "chosen": {m: np.where(nan_rows, np.nan, v) for m, v in chosen.items()},
    }


def compare_runs(baseline: Run, other: Run, alpha: float) -> list[dict]:
    """:func:`cmseg_jax.stats.compare` for every metric and split both runs have.

    Returns:
        One flat dict per (metric, split), with ``baseline``, ``other``, ``metric`` and ``split``
        keys added.
    """
    rows = []
    for metric in RESULT_METRICS:
        for split in SPLITS:
            a = baseline.values[split].get(metric)
            b = other.values[split].get(metric)
            if a is None or b is None:
                continue
            row = {"baseline": baseline.name, "other": other.name, "metric": metric}
            rows.append(row | {"split": split} | stats.compare(a, b, alpha=alpha))
    return rows
