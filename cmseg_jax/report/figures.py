"""The report's figures (matplotlib's Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

import math
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cmseg_jax import io_utils
from cmseg_jax.report.runs import Run
from cmseg_jax.results import SPLIT_TITLES, SPLITS, metric_title

SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}


def _save(fig: Figure, path: pathlib.Path) -> None:
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no GUI backend, no pyplot state
    with io_utils.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def plot_mcc_histogram(run: Run, path: pathlib.Path, metric: str = "mcc") -> bool:
    """Histogram of per-seed ``metric`` for training / validation / testing (blue/orange/red).

    Returns:
        False (and writes nothing) when the run has no finite value of ``metric``.
    """
    data = {s: run.values[s].get(metric, np.array([])) for s in SPLITS}
    data = {s: v[np.isfinite(v)] for s, v in data.items()}
    everything = np.concatenate(list(data.values()))
    if everything.size == 0:
        return False
    low = min(0.0, math.floor(everything.min() * 10) / 10)
    high = max(1.0, math.ceil(everything.max() * 10) / 10)
    bins = np.linspace(low, high, int(round((high - low) / 0.025)) + 1)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for split in SPLITS:
        if data[split].size:
            ax.hist(
                data[split],
                bins=bins,
                color=SPLIT_COLORS[split],
                alpha=0.6,
                label=f"{SPLIT_TITLES[split]} (n={data[split].size})",
            )
    ax.set_xlabel(metric_title(metric))
    ax.set_ylabel("seeds")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{run.name}: {metric_title(metric)} per seed")
    ax.legend()
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)
    _save(fig, path)
    return True


def plot_learning_curves(run: Run, curves: dict, path: pathlib.Path) -> bool:
    """Per metric: mean over seeds per epoch with its 95 % t-interval band, one line per split."""
    if not curves:
        return False
    names = list(curves)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for i, metric in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for split, c in curves[metric].items():
            color = SPLIT_COLORS[split]
            ax.plot(c["epoch"], c["mean"], color=color, marker=".", label=SPLIT_TITLES[split])
            ax.fill_between(c["epoch"], c["low"], c["high"], color=color, alpha=0.25, lw=0)
        ax.set_title(metric_title(metric))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(f"{run.name}: mean over seeds with 95 % t-interval")
    # Fixed margins instead of tight_layout, which measures every tick label (slow).
    height = 3 * rows  # inches; margins below are in inches too
    fig.subplots_adjust(
        left=0.05, right=0.98, bottom=0.6 / height, top=1 - 0.8 / height, wspace=0.25, hspace=0.6
    )
    _save(fig, path)
    return True


def plot_examples(run: Run, path: pathlib.Path, max_examples: int = 3) -> bool:
    """Rows best / median / worst seed; per example slice the columns image, ground truth,
    liver score and thresholded prediction (``score >= threshold``)."""
    ex = run.examples
    needed = {"images", "masks", "scores", "seeds", "roles", "threshold"}
    if ex is None or not needed <= ex.keys() or ex["scores"].size == 0:
        return False
    num = min(max_examples, ex["images"].shape[0])
    threshold = float(ex["threshold"])
    roles = [str(r) for r in ex["roles"]]
    columns = ("image", "ground truth", "liver score", f"score ≥ {threshold:g}")
    fig = Figure(figsize=(2.2 * 4 * num, 2.3 * len(roles)))
    axes = fig.subplots(len(roles), 4 * num, squeeze=False)
    for r, role in enumerate(roles):
        for e in range(num):
            score = ex["scores"][r, e].astype(np.float32)
            panels = (
                (ex["images"][e], "gray", -1.0, 1.0),
                (ex["masks"][e], "gray", 0.0, 1.0),
                (score, "inferno", 0.0, 1.0),
                ((score >= threshold).astype(np.float32), "gray", 0.0, 1.0),
            )
            for c, (img, cmap, vmin, vmax) in enumerate(panels):
                ax = axes[r, 4 * e + c]
                ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"#{e}: {columns[c]}" if c == 0 else columns[c], fontsize=9)
        axes[r, 0].set_ylabel(f"{role}\nseed {int(ex['seeds'][r])}")
    fig.suptitle(f"{run.name}: test examples (seeds ranked by validation MCC)")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=0.86, wspace=0.04, hspace=0.06)
    _save(fig, path)
    return True


def plot_grid(runs: list[Run], field: str, values: list, path: pathlib.Path, metric="mcc") -> bool:
    """Test ``metric`` per seed against one grid field's value (points), mean ± std (line).

    Args:
        runs: one run per grid point, in the order of ``values``.
        field: the grid field (axis label).
        values: its numeric value at each run.

    Returns:
        False (and writes nothing) without a finite value.
    """
    per_point = [r.values["test"].get(metric, np.array([])) for r in runs]
    per_point = [v[np.isfinite(v)] for v in per_point]
    if not any(v.size for v in per_point):
        return False
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    x = np.asarray(values, float)
    for xi, v in zip(x, per_point, strict=True):
        ax.plot(np.full(v.size, xi), v, "o", color=SPLIT_COLORS["test"], alpha=0.5, ms=4)
    means = np.asarray([v.mean() if v.size else np.nan for v in per_point])
    stds = np.asarray([v.std(ddof=1) if v.size > 1 else 0.0 for v in per_point])
    ax.errorbar(x, means, yerr=stds, color="black", marker="s", capsize=4, label="mean ± std")
    ax.set_xlabel(field)
    ax.set_ylabel(f"test {metric_title(metric)}")
    ax.set_title(f"test {metric_title(metric)} per seed against {field}")
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.91)
    _save(fig, path)
    return True


def plot_ensemble_size(run: Run, path: pathlib.Path, split: str = "test") -> bool:
    """Test MCC and IoU of the ensemble of the first k seeds against k, with the seeds' own
    median (dashed) and range (band) behind it.

    Returns:
        False (and writes nothing) when the run has no ensemble.
    """
    if run.ensemble is None:
        return False
    panels = [m for m in ("mcc", "iou") if m in run.ensemble[split]]
    if not panels:
        return False
    fig = Figure(figsize=(5 * len(panels), 3.8))
    for i, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        curve = np.asarray(run.ensemble[split][metric], np.float64)
        sizes = np.arange(1, curve.size + 1)
        seeds = np.asarray(run.values[split].get(metric, np.array([])), np.float64)
        seeds = seeds[np.isfinite(seeds)]
        if seeds.size:
            ax.axhspan(seeds.min(), seeds.max(), color="0.85", label="seeds: range")
            ax.axhline(np.median(seeds), color="0.4", ls="--", lw=1, label="seeds: median")
        ax.plot(sizes, curve, "o-", color=SPLIT_COLORS[split], ms=3, label="ensemble of k")
        ax.set_xlabel("ensemble size k (first k seeds)")
        ax.set_ylabel(f"{SPLIT_TITLES[split]} {metric_title(metric)}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{run.name}: what more seeds buy")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.88, wspace=0.3)
    _save(fig, path)
    return True
