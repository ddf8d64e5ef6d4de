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
with a file suffix (see :data:`VARIANTS`); today ``no_smoothing`` (``results_no_smoothing.csv``,
``final_stats_no_smoothing.npz``: evaluated with the Gaussian smoothing layer removed at test
time, trained with it). Each variant a run has gets its own thesis table and fair-threshold
section, and its own rows in ``summary.csv``, ``seeds.csv`` and ``thresholds.csv`` (column
``variant``) and entry under ``runs.<name>.variants`` in ``report.json``. Learning curves,
figures and comparisons are of the ``default`` variant only.

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
import csv
import dataclasses
import io
import json
import math
import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats as sps

from cmseg_jax import errors, metrics, stats

# Table order (segmentation first, then the image-level "Cls-" metrics) as in results.csv.
from cmseg_jax.results import RESULT_METRICS, ROW_TITLES, SPLIT_TITLES, SPLITS  # noqa: E402

SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}
CURVE_METRICS = metrics.METRIC_NAMES + ("cls_mcc", "loss")
# The compact ablation table shows these (thesis table 8.7 has Cls-MCC and MCC).
ABLATION_METRICS = ("cls_mcc", "mcc", "iou", "dice", "precision", "recall")
FORMATS = ("md", "csv", "json")
# Evaluation variants: name -> suffix of its ``results{suffix}.csv`` / ``final_stats{suffix}.npz``.
# ``default`` is the model as trained; the others are extra final evaluations of the same trained
# parameters, written by the sweep only when configured (docs/workdir.md).
VARIANTS = {"default": "", "no_smoothing": "_no_smoothing"}
VARIANT_TITLES = {
    "default": "as trained",
    "no_smoothing": "evaluated without Gaussian smoothing (trained with it)",
}


def metric_title(metric: str) -> str:
    """``"cls_mcc" -> "Cls-MCC"``, ``"precision" -> "Prec"``, ``"loss" -> "Loss"``."""
    base = metric.removeprefix("cls_")
    title = ROW_TITLES.get(base, base.capitalize())
    return f"Cls-{title}" if metric.startswith("cls_") else title


# ----------------------------------------------------------------------------------------------
# Reading a workdir
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything the report needs from one workdir.

    Attributes:
        name: label used in the report and file names.
        workdir: the directory read.
        seeds: ``(S,)`` seed ids; every per-seed array below is in this order.
        diverged: seed ids that diverged (their values are NaN in ``values``).
        values: split -> metric -> ``(S,)`` float64 final (or latest) values.
        source: where ``values`` came from, in words.
        info: ``run.json`` (empty dict for a run still in progress).
        epochs: rows of ``metrics.jsonl`` (empty when absent).
        final_stats: arrays of ``final_stats.npz`` or None.
        examples: arrays of ``examples.npz`` or None.
        notes: things the reader should know (missing files, skipped lines, ...).
        variant: which evaluation ``values`` and ``final_stats`` are of (a key of
            :data:`VARIANTS`).
        variants: the run's extra evaluation variants present in the workdir, name -> a
            :class:`Run` that shares everything but ``values``, ``source``, ``final_stats``,
            ``notes`` and ``variant`` (and has no ``variants`` of its own).
    """

    name: str
    workdir: pathlib.Path
    seeds: list[int]
    diverged: list[int]
    values: dict[str, dict[str, np.ndarray]]
    source: str
    info: dict
    epochs: list[dict]
    final_stats: dict[str, np.ndarray] | None
    examples: dict[str, np.ndarray] | None
    notes: list[str]
    variant: str = "default"
    variants: dict[str, Run] = dataclasses.field(default_factory=dict)

    @property
    def ok_mask(self) -> np.ndarray:
        """``(S,)`` bool: seed did not diverge."""
        bad = set(self.diverged)
        return np.array([s not in bad for s in self.seeds], dtype=bool)


def read_results_csv(path: pathlib.Path) -> dict[int, dict[str, dict[str, float]]]:
    """``results.csv`` -> seed -> split -> metric -> value (``nan`` parsed as NaN).

    Raises:
        IOFailure: the file is not a results table (naming it and the first bad line).
    """
    out: dict[int, dict[str, dict[str, float]]] = {}
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            missing = {"seed", "split", "metric", "value"} - set(reader.fieldnames or ())
            if missing:
                raise KeyError(", ".join(sorted(missing)))
            for row in reader:
                value = float(row["value"]) if row["value"].strip() else math.nan
                split = out.setdefault(int(row["seed"]), {}).setdefault(row["split"], {})
                split[row["metric"]] = value
        except (KeyError, ValueError, TypeError, AttributeError, csv.Error) as e:
            raise errors.IOFailure(
                f"{path}: line {reader.line_num}: not a results table (columns seed, split, "
                f"metric, value; {type(e).__name__}: {errors.first_line(e)})"
            ) from None
    return out


def read_metrics_jsonl(path: pathlib.Path) -> tuple[list[dict], int]:
    """Rows of ``metrics.jsonl`` and how many lines could not be parsed.

    A run still being written can end in a half-written line; it is skipped, not fatal.
    """
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(row, dict) or not {"epoch", "seed", "split"} <= row.keys():
            bad += 1
            continue
        rows.append(row)
    return rows, bad


def _row_value(row: dict, metric: str) -> float:
    """A metric of a jsonl row as float; NaN when missing, null or the seed diverged."""
    value = row.get(metric)
    if value is None or row.get("diverged", False):
        return math.nan
    return float(value)


def last_complete_epoch(rows: list[dict]) -> tuple[int | None, bool]:
    """The latest epoch that has a row for every (seed, split) seen in the file.

    Returns:
        ``(epoch, complete)``; when no epoch is complete (a single, partly written epoch), the
        latest epoch with ``complete=False``; ``(None, False)`` for no rows.
    """
    if not rows:
        return None, False
    wanted = {(r["seed"], r["split"]) for r in rows}
    by_epoch: dict[int, set] = {}
    for r in rows:
        by_epoch.setdefault(int(r["epoch"]), set()).add((r["seed"], r["split"]))
    complete = [e for e, keys in by_epoch.items() if keys >= wanted]
    if complete:
        return max(complete), True
    return max(by_epoch), False


def _load_npz(path: pathlib.Path, notes: list[str]) -> dict[str, np.ndarray] | None:
    if not path.exists():
        notes.append(f"no {path.name}")
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:  # truncated file, object arrays, ...
        notes.append(f"could not read {path.name}: {err}")
        return None


def _unique_names(workdirs: Sequence[pathlib.Path]) -> list[str]:
    names = [w.name for w in workdirs]
    if len(set(names)) == len(names):
        return names
    return [f"{w.parent.name}/{w.name}" if names.count(w.name) > 1 else w.name for w in workdirs]


def load_run(workdir: str | pathlib.Path, name: str | None = None) -> Run:
    """Reads one sweep workdir (finished or partial; see ``docs/workdir.md``).

    Args:
        workdir: the sweep's ``--workdir``.
        name: label for the report; defaults to the directory name.

    Returns:
        A :class:`Run` of the ``default`` variant; extra evaluation variants found in the workdir
        (``results{suffix}.csv`` / ``final_stats{suffix}.npz``, see :data:`VARIANTS`) are in its
        ``variants``.

    Raises:
        FileNotFoundError: neither ``results.csv`` nor a usable ``metrics.jsonl`` exists.
    """
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise errors.IOFailure(f"{workdir}: no such directory")
    notes: list[str] = []
    info = _read_json(workdir / "run.json")
    config = _read_json(workdir / "config.json")
    if not info:
        notes.append("no run.json: run in progress or interrupted")

    epochs: list[dict] = []
    if (workdir / "metrics.jsonl").exists():
        epochs, bad = read_metrics_jsonl(workdir / "metrics.jsonl")
        if bad:
            notes.append(f"skipped {bad} unreadable line(s) of metrics.jsonl")

    # Seed order: run.json, then config.json, then whatever the result files contain.
    seeds: list[int] = [int(s) for s in info.get("seeds", config.get("seeds", []))]
    diverged = {int(s) for s in info.get("diverged", [])}
    diverged |= {int(r["seed"]) for r in epochs if r.get("diverged", False)}

    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    if (workdir / "results.csv").exists():
        per_seed = read_results_csv(workdir / "results.csv")
        source = "results.csv (final)"
    else:
        epoch, complete = last_complete_epoch(epochs)
        if epoch is None:
            raise errors.IOFailure(
                f"{workdir}: not a sweep workdir (neither results.csv nor rows in metrics.jsonl)"
            )
        total = info.get("num_epochs", _nested_get(config, ("train", "epochs")))
        source = f"metrics.jsonl, epoch {epoch}" + (f" of {total}" if total else "")
        if not complete:
            source += " (incomplete: not every seed and split logged)"
        for r in epochs:
            if int(r["epoch"]) == epoch:
                split = per_seed.setdefault(int(r["seed"]), {}).setdefault(r["split"], {})
                split.update({m: _row_value(r, m) for m in RESULT_METRICS if m in r})
    for seed in per_seed:
        if seed not in seeds:
            seeds.append(seed)

    bad_seeds = sorted(diverged & set(seeds))
    values = _values_array(per_seed, seeds, bad_seeds, notes)
    final_stats = _load_npz(workdir / "final_stats.npz", notes)
    examples = _load_npz(workdir / "examples.npz", notes)
    run = Run(
        name=name or workdir.name,
        workdir=workdir,
        seeds=seeds,
        diverged=bad_seeds,
        values=values,
        source=source,
        info=info,
        epochs=epochs,
        final_stats=final_stats,
        examples=examples,
        notes=notes,
    )
    for variant, suffix in VARIANTS.items():
        if suffix:
            extra = _load_variant(run, variant, suffix)
            if extra is not None:
                run.variants[variant] = extra
    return run


def _values_array(
    per_seed: dict[int, dict[str, dict[str, float]]],
    seeds: Sequence[int],
    bad_seeds: Sequence[int],
    notes: list[str],
) -> dict[str, dict[str, np.ndarray]]:
    """seed -> split -> metric -> value as split -> metric -> ``(S,)`` in ``seeds`` order.

    Diverged seeds' values become NaN; seeds absent from ``per_seed`` are NaN and noted.
    """
    present = {m for by_split in per_seed.values() for row in by_split.values() for m in row}
    metric_names = [m for m in RESULT_METRICS if m in present]
    bad = np.isin(seeds, bad_seeds)
    values = {}
    for split in SPLITS:
        values[split] = {}
        for m in metric_names:
            v = np.array([per_seed.get(s, {}).get(split, {}).get(m, math.nan) for s in seeds])
            values[split][m] = np.where(bad, np.nan, v)
    missing = [s for s in seeds if s not in per_seed]
    if missing:
        notes.append(f"seeds without any result: {missing}")
    return values


def _load_variant(run: Run, variant: str, suffix: str) -> Run | None:
    """The extra evaluation ``variant`` of ``run`` from ``results{suffix}.csv`` and
    ``final_stats{suffix}.npz``; None when the workdir has neither (a note on ``run`` when it has
    only the npz: the sweep was interrupted between writing the two)."""
    results_path = run.workdir / f"results{suffix}.csv"
    stats_path = run.workdir / f"final_stats{suffix}.npz"
    if not results_path.exists():
        if stats_path.exists():
            run.notes.append(
                f"{stats_path.name} without {results_path.name}: {variant} not reported"
            )
        return None
    notes: list[str] = []
    per_seed = read_results_csv(results_path)
    unknown = sorted(set(per_seed) - set(run.seeds))
    if unknown:
        notes.append(f"{results_path.name}: ignored seeds not in the run: {unknown}")
    return dataclasses.replace(
        run,
        values=_values_array(per_seed, run.seeds, run.diverged, notes),
        source=f"{results_path.name} (final)",
        final_stats=_load_npz(stats_path, notes),
        notes=notes,
        variant=variant,
        variants={},
    )


def _read_json(path: pathlib.Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _nested_get(d: dict, keys: Sequence[str]):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# ----------------------------------------------------------------------------------------------
# Computations
# ----------------------------------------------------------------------------------------------


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
                    grid[s_index[int(r["seed"])], e_index[int(r["epoch"])]] = _row_value(r, metric)
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


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _save(fig: Figure, path: pathlib.Path) -> None:
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no GUI backend, no pyplot state
    fig.savefig(path, dpi=100)


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


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def _p(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _num(value: float, digits: int = 3) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def thesis_table_markdown(run: Run, summary: dict | None = None) -> str:
    """The thesis' results table (tables 8.1-8.6) for one run, with the seed count stated."""
    summary = summary or summary_table(run)
    num_ok = int(run.ok_mask.sum())
    metric_names = [m for m in RESULT_METRICS if m in run.values["train"]]
    rows = []
    for m in metric_names:
        cells = [metric_title(m)]
        for split in SPLITS:
            s = summary[split][m]
            cell = stats.format_cell(s["mean"], s["std"], s["median"])
            cells.append(cell if s["n"] == num_ok else f"{cell} [n={s['n']}]")
        rows.append(cells)
    header = ["", *(SPLIT_TITLES[s] for s in SPLITS)]
    lines = [
        f"Seeds: n = {num_ok} of {len(run.seeds)}"
        + (f"; {len(run.diverged)} diverged: {run.diverged}" if run.diverged else "")
        + f". Values from {run.source}. Cells: mean ± std (median) over seeds, std with ddof = 1;"
        " a cell over fewer seeds says [n=..].",
        "",
        *_md_table(header, rows),
    ]
    return "\n".join(lines)


def fair_threshold_markdown(fair: dict, exclude_seeds: Sequence[int] = ()) -> str:
    """Summary table of PxAP and fixed- vs validation-chosen-threshold metrics.

    Args:
        fair: output of :func:`fair_threshold_evaluation`.
        exclude_seeds: diverged seed ids, labelled as such in the per-seed table.
    """
    splits = fair["splits"]
    cols = [(s, kind) for s in ("val", "test") if s in splits for kind in ("fixed", "chosen")]
    header = [""] + [
        f"{SPLIT_TITLES[s]} @ {'fixed' if k == 'fixed' else 'val-chosen'}" for s, k in cols
    ]

    def cell(values):
        s = stats.summarize(values)
        return stats.format_cell(s["mean"], s["std"], s["median"])

    rows = [
        ["PxAP"]
        + [cell(fair["pxap"][:, splits.index(s)]) if k == "fixed" else "—" for s, k in cols]
    ]
    for m in metrics.METRIC_NAMES:
        rows.append([metric_title(m)] + [cell(fair[k][m][:, splits.index(s)]) for s, k in cols])
    thr = stats.summarize(fair["threshold"])
    lines = [
        f"Threshold chosen per seed on the validation split only (maximising "
        f"{metric_title(fair['metric'])}), then applied unchanged to test: "
        f"{stats.format_cell(thr['mean'], thr['std'], thr['median'])} over n = {thr['n']} seeds. "
        "PxAP is threshold-free. Validation @ val-chosen is optimistic by construction.",
        "",
        *_md_table(header, rows),
        "",
        "PxAP over all splits: "
        + ", ".join(f"{SPLIT_TITLES[s]} {cell(fair['pxap'][:, i])}" for i, s in enumerate(splits)),
    ]
    diverged = {int(s) for s in exclude_seeds}
    per_seed = [
        [
            f"{int(seed)} (diverged)" if int(seed) in diverged else str(int(seed)),
            _num(fair["threshold"][i]),
            *(_num(fair["pxap"][i, j]) for j in range(len(splits))),
            _num(fair["fixed"][fair["metric"]][i, splits.index("test")]),
            _num(fair["chosen"][fair["metric"]][i, splits.index("test")]),
        ]
        for i, seed in enumerate(fair["seeds"])
    ]
    name = metric_title(fair["metric"])
    seed_header = [
        "seed",
        "val threshold",
        *(f"PxAP {s}" for s in splits),
        f"test {name} @ fixed",
        f"test {name} @ val-chosen",
    ]
    lines += [
        "",
        "<details><summary>Per seed</summary>",
        "",
        *_md_table(seed_header, per_seed),
        "",
        "</details>",
    ]
    return "\n".join(lines)


def ablation_markdown(comparisons: dict[str, list[dict]], alpha: float) -> str:
    """Thesis table 8.7 (test split, Mood's p) plus Welch and full per-metric detail."""
    if not comparisons:
        return ""
    first = next(iter(comparisons.values()))
    present = {r["metric"] for r in first}
    compact = [m for m in ABLATION_METRICS if m in present]

    def mark(row: dict, test: str) -> str:
        text = _p(row[f"{test}_p"])
        if row[f"{test}_significant"]:
            text += " (*)"
        higher = row["higher_median" if test == "mood" else "higher_mean"]
        return text + {"baseline": " ↑", "other": " ↓"}.get(higher, "")

    lines = [
        f"(*) significant at α = {alpha}; ↑ baseline higher, ↓ alternative higher (median for "
        "Mood, mean for Welch). Welch results marked † are only trustworthy where both groups "
        "pass Anderson-Darling (†: at least one group fails or could not be tested).",
        "",
        "Testing split, Mood's median test p-value:",
        "",
    ]
    table = []
    for other, rows in comparisons.items():
        by_key = {(r["metric"], r["split"]): r for r in rows}
        table.append([other] + [mark(by_key[(m, "test")], "mood") for m in compact])
    lines += _md_table(["Alternative model", *(f"{metric_title(m)}: p" for m in compact)], table)
    lines += ["", "Testing split, Welch t-test p-value:", ""]
    table = []
    for other, rows in comparisons.items():
        by_key = {(r["metric"], r["split"]): r for r in rows}
        cells = []
        for m in compact:
            r = by_key[(m, "test")]
            cells.append(mark(r, "welch") + ("" if r["welch_valid"] else " †"))
        table.append([other, *cells])
    lines += _md_table(["Alternative model", *(f"{metric_title(m)}: p" for m in compact)], table)

    def ad(row: dict, group: str) -> str:
        normal = row[f"ad_{group}_normal"]
        verdict = {True: "normal", False: "not normal", None: "n/a"}[normal]
        return (
            f"{_num(row[f'ad_{group}_statistic'], 2)} / "
            f"{_num(row[f'ad_{group}_critical_5'], 2)} {verdict}"
        )

    header = [
        "Metric",
        "Split",
        "n (B/A)",
        "median B",
        "median A",
        "higher median",
        "Mood p",
        "Welch p",
        "AD B: A² / crit 5 %",
        "AD A: A² / crit 5 %",
        "notes",
    ]
    for other, rows in comparisons.items():
        detail = [
            [
                metric_title(r["metric"]),
                SPLIT_TITLES[r["split"]],
                f"{r['n_baseline']}/{r['n_other']}",
                _num(r["median_baseline"]),
                _num(r["median_other"]),
                r["higher_median"],
                _p(r["mood_p"]) + (" (*)" if r["mood_significant"] else ""),
                _p(r["welch_p"]) + (" (*)" if r["welch_significant"] else ""),
                ad(r, "baseline"),
                ad(r, "other"),
                "; ".join(r["notes"]),
            ]
            for r in rows
        ]
        lines += [
            "",
            f"<details><summary>All metrics and splits: {other} (A) vs baseline (B)</summary>",
            "",
            *_md_table(header, detail),
            "",
            "</details>",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Machine-readable output
# ----------------------------------------------------------------------------------------------


def _jsonable(obj):
    """numpy -> Python, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, pathlib.Path):
        return str(obj)
    return obj


def _csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in _jsonable(list(row))])
    return out.getvalue()


def _csv_files(report: dict) -> dict[str, str]:
    summary, seeds, thresholds, curves = [], [], [], []
    for name, run in report["runs"].items():
        diverged = set(run["diverged"])
        # The run's own entry is the default variant; extra variants have the same keys.
        for content in (run, *run["variants"].values()):
            variant = content["variant"]
            for split, by_metric in content["summary"].items():
                for m, s in by_metric.items():
                    summary.append(
                        [name, variant, split, m, s["mean"], s["std"], s["median"]]
                        + [s["n"], s["n_nan"]]
                    )
            for split, by_metric in content["values"].items():
                for m, vals in by_metric.items():
                    for seed, v in zip(run["seeds"], vals, strict=True):
                        seeds.append([name, variant, seed, split, m, v, seed in diverged])
            fair = content.get("fair_threshold")
            if fair:
                for i, seed in enumerate(fair["seeds"]):
                    for j, split in enumerate(fair["splits"]):
                        row = [name, variant, seed, split, fair["threshold"][i]]
                        row += [fair["pxap"][i][j]]
                        row += [fair["fixed"][m][i][j] for m in metrics.METRIC_NAMES]
                        row += [fair["chosen"][m][i][j] for m in metrics.METRIC_NAMES]
                        thresholds.append(row)
        for m, by_split in run["curves"].items():
            for split, c in by_split.items():
                for k, epoch in enumerate(c["epoch"]):
                    curves.append(
                        [name, m, split, epoch, c["mean"][k], c["low"][k], c["high"][k], c["n"][k]]
                    )
    comparisons = report["comparisons"]
    comp_keys = list(comparisons[0]) if comparisons else []
    comp_rows = [
        [("; ".join(r[k]) if k == "notes" else r[k]) for k in comp_keys] for r in comparisons
    ]
    return {
        "summary.csv": _csv_text(
            ["run", "variant", "split", "metric", "mean", "std", "median", "n", "n_nan"], summary
        ),
        "seeds.csv": _csv_text(
            ["run", "variant", "seed", "split", "metric", "value", "diverged"], seeds
        ),
        "thresholds.csv": _csv_text(
            ["run", "variant", "seed", "split", "val_threshold", "pxap"]
            + [f"{m}_fixed" for m in metrics.METRIC_NAMES]
            + [f"{m}_val_threshold" for m in metrics.METRIC_NAMES],
            thresholds,
        ),
        "curves.csv": _csv_text(
            ["run", "metric", "split", "epoch", "mean", "ci95_low", "ci95_high", "n"], curves
        ),
        "comparisons.csv": _csv_text(comp_keys, comp_rows),
    }


# ----------------------------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _variant_content(run: Run, threshold_metric: str) -> dict:
    """The per-variant part of a run's report entry (an extra evaluation variant's
    ``report.json`` entry under ``runs.<name>.variants``)."""
    fair = None
    if run.final_stats is not None:
        fair = fair_threshold_evaluation(run.final_stats, threshold_metric, run.diverged)
    return {
        "variant": run.variant,
        "title": VARIANT_TITLES[run.variant],
        "source": run.source,
        "notes": run.notes,
        "values": run.values,
        "summary": summary_table(run),
        "fair_threshold": fair,
    }


def build_report(
    workdirs: Sequence[str | pathlib.Path],
    out: str | pathlib.Path,
    formats: Sequence[str] = ("md",),
    alpha: float = 0.05,
    threshold_metric: str = "mcc",
) -> dict:
    """Reads ``workdirs`` and writes the report into ``out``.

    Args:
        workdirs: sweep workdirs; the first is the baseline of the comparisons.
        out: report directory (created).
        formats: any of ``"md"`` (always written), ``"csv"``, ``"json"``.
        alpha: significance level.
        threshold_metric: metric maximised on validation to choose the fair threshold.

    Returns:
        The report's content as a JSON-ready dict (also written as ``report.json`` for ``json``).
    """
    out = pathlib.Path(out)
    paths = [pathlib.Path(w) for w in workdirs]
    runs = [load_run(p, n) for p, n in zip(paths, _unique_names(paths), strict=True)]
    out.mkdir(parents=True, exist_ok=True)

    md = [
        "# cmseg_jax report",
        "",
        f"Runs: {', '.join(f'`{r.name}`' for r in runs)}. Baseline for comparisons: "
        f"`{runs[0].name}`. Significance level α = {alpha}.",
    ]
    report: dict = {"alpha": alpha, "baseline": runs[0].name, "runs": {}, "comparisons": []}
    for run in runs:
        slug = _slug(run.name)
        summary = summary_table(run)
        curves = learning_curves(run)
        fair = None
        if run.final_stats is not None:
            fair = fair_threshold_evaluation(run.final_stats, threshold_metric, run.diverged)
        variants = {v: _variant_content(r, threshold_metric) for v, r in run.variants.items()}
        figures = {}
        for kind, plot in (
            ("mcc_hist", lambda p, r=run: plot_mcc_histogram(r, p)),
            ("curves", lambda p, r=run, c=curves: plot_learning_curves(r, c, p)),
            ("examples", lambda p, r=run: plot_examples(r, p)),
        ):
            path = out / f"{slug}_{kind}.png"
            if plot(path):
                figures[kind] = path.name

        info = run.info
        md += ["", f"## Run `{run.name}`", "", f"- workdir: `{run.workdir}`"]
        if info:
            md += [
                f"- epochs: {info.get('epochs_completed', '?')} of {info.get('num_epochs', '?')}",
                f"- data: {info.get('data', '?')}",
                f"- device: {info.get('device', '?')}",
            ]
        md.append(
            f"- diverged seeds ({len(run.diverged)}, excluded from every statistic below): "
            + (", ".join(map(str, run.diverged)) if run.diverged else "none")
        )
        md += [f"- note: {n}" for n in run.notes]
        md += ["", "### Results", "", thesis_table_markdown(run, summary)]
        for v, content in variants.items():
            notes = [f"- note: {n}" for n in content["notes"]]
            md += ["", f"### Results, {VARIANT_TITLES[v]}", "", *notes, *([""] if notes else [])]
            md.append(thesis_table_markdown(run.variants[v], content["summary"]))
        if "mcc_hist" in figures:
            md += ["", "### MCC per seed", "", f"![MCC histogram]({figures['mcc_hist']})"]
        if "curves" in figures:
            md += [
                "",
                "### Learning curves",
                "",
                "Mean over non-diverged seeds per logged epoch, band = 95 % t-interval.",
                "",
                f"![learning curves]({figures['curves']})",
            ]
        if "examples" in figures:
            md += ["", "### Examples", "", f"![examples]({figures['examples']})"]
        if fair is not None:
            md += [
                "",
                "### Threshold-free and fair-threshold evaluation (Choe et al. 2020)",
                "",
                fair_threshold_markdown(fair, run.diverged),
            ]
        for v, content in variants.items():
            if content["fair_threshold"] is not None:
                md += [
                    "",
                    f"### Threshold-free and fair-threshold evaluation, {VARIANT_TITLES[v]}",
                    "",
                    fair_threshold_markdown(content["fair_threshold"], run.diverged),
                ]
        report["runs"][run.name] = {
            "workdir": str(run.workdir),
            "seeds": run.seeds,
            "diverged": run.diverged,
            "source": run.source,
            "info": info,
            "notes": run.notes,
            "values": run.values,
            "summary": summary,
            "curves": curves,
            "fair_threshold": fair,
            "figures": figures,
            "variant": run.variant,
            "variants": variants,
        }

    if len(runs) > 1:
        comparisons = {r.name: compare_runs(runs[0], r, alpha) for r in runs[1:]}
        report["comparisons"] = [row for rows in comparisons.values() for row in rows]
        md += ["", f"## Comparison with baseline `{runs[0].name}`", ""]
        # Comparing a run in progress with a finished one compares different epochs: say so.
        md += [
            f"- note: `{r.name}` values come from {r.source}"
            for r in runs
            if not r.source.startswith("results.csv")
        ]
        md += ["", ablation_markdown(comparisons, alpha)]

    report = _jsonable(report)
    (out / "report.md").write_text("\n".join(md) + "\n")
    if "json" in formats:
        (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    if "csv" in formats:
        for filename, text in _csv_files(report).items():
            (out / filename).write_text(text)
    return report


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
    build_report(args.run_dirs, args.out, args.format or ["md"], args.alpha, args.threshold_metric)
    print(pathlib.Path(args.out) / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
