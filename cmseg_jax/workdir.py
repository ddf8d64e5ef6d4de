"""The on-disk format of a sweep's workdir (``docs/workdir.md``): its file names, and for each
file the one function that writes it and the one that reads it.

The sweep writes a workdir, the report and predict read it, and the tests build their fixtures,
all through this module. Every writer is atomic (:mod:`cmseg_jax.io_utils`). Readers take the
workdir; files written late in a run's life (every one but ``config.json``) may be absent, and
their readers then return None (``read_metrics``: no rows).

Evaluation variants: besides the model as trained (``default``: ``results.csv``,
``final_stats.npz``), a sweep may write extra final evaluations of the same trained parameters
under a file suffix (:data:`VARIANTS`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
import sys
import zipfile
import zlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from cmseg_jax import errors, io_utils, metrics, variants
from cmseg_jax.config_base import get_base_config, point_name
from cmseg_jax.data.dataset import SPLITS
from cmseg_jax.models import registry
from cmseg_jax.results import RESULT_METRICS, ensemble_table

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.csv"
FINAL_STATS = "final_stats.npz"
EXAMPLES = "examples.npz"
RUN_INFO = "run.json"
SUMMARY = "summary.md"
# Held (flock) by the sweep writing the workdir; names its holder (cmseg_jax/workdir_lock.py).
LOCK = "lock"
# The ensemble of the seeds, by ensemble size: results_ensemble{suffix}.csv and
# final_stats_ensemble{suffix}.npz.
RESULTS_ENSEMBLE = "results_ensemble.csv"
FINAL_STATS_ENSEMBLE = "final_stats_ensemble.npz"
# Evaluation variant -> suffix of its ``results{suffix}.csv`` / ``final_stats{suffix}.npz``
# (the records of :mod:`cmseg_jax.variants`).
VARIANTS = {v.name: v.suffix for v in variants.VARIANTS.values()}
RESULTS_COLUMNS = ("seed", "split", "metric", "value")
ENSEMBLE_COLUMNS = ("size", "split", "metric", "value")
# results_ensemble.csv: the seeds' metrics and the ensemble's pixel average precision.
ENSEMBLE_METRICS = RESULT_METRICS + ("pxap",)
EXAMPLE_ROLES = ("best", "median", "worst")
# Directories: Orbax checkpoints of complete epochs, the checkpoint of an epoch stopped part-way
# (cmseg_jax/checkpoint.py), checkpoints found corrupt on resuming, TensorBoard event files.
CHECKPOINTS_DIR = "checkpoints"
INTERRUPTED_DIR = "interrupted"
CORRUPT_DIR = "corrupt_checkpoints"
TENSORBOARD_DIR = "tensorboard"

PathLike = str | pathlib.Path


def _with_suffix(name: str, variant: str) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}{VARIANTS[variant]}.{ext}"


def results_name(variant: str = "default") -> str:
    """``results.csv`` of the ``default`` variant, ``results{suffix}.csv`` of the others."""
    return _with_suffix(RESULTS, variant)


def final_stats_name(variant: str = "default") -> str:
    """``final_stats.npz`` of the ``default`` variant, ``final_stats{suffix}.npz`` of others."""
    return _with_suffix(FINAL_STATS, variant)


def ensemble_results_name(variant: str = "default") -> str:
    """``results_ensemble{suffix}.csv``."""
    return _with_suffix(RESULTS_ENSEMBLE, variant)


def ensemble_stats_name(variant: str = "default") -> str:
    """``final_stats_ensemble{suffix}.npz``."""
    return _with_suffix(FINAL_STATS_ENSEMBLE, variant)


# ----------------------------------------------------------------------------------------------
# config.json


def config_record(config: ml_collections.ConfigDict, seeds: Sequence[int]) -> dict:
    """The JSON object of ``config.json``: the resolved config plus ``seeds``. Of the networks'
    sub-dicts (``config.model.<arch>``) only the run's own is kept: the others do not describe
    the run."""
    record = json.loads(config.to_json())
    model = record.get("model")
    if isinstance(model, dict):
        arch = model.get("arch", "convmixerseg")
        for name in registry.MODELS:
            if name != arch:
                model.pop(name, None)
    record["seeds"] = [int(s) for s in seeds]
    return record


def write_config(
    workdir: PathLike, config: ml_collections.ConfigDict, seeds: Sequence[int]
) -> None:
    """``config.json`` (:func:`config_record`)."""
    record = config_record(config, seeds)
    io_utils.write_json(pathlib.Path(workdir) / CONFIG, record)


def read_config(workdir: PathLike) -> tuple[ml_collections.ConfigDict, list[int]]:
    """The resolved config and the seed list of a sweep's ``config.json``; one written before the
    networks' fields moved into their sub-dicts comes back in today's form
    (:func:`cmseg_jax.models.registry.upgrade`).

    Raises:
        FileNotFoundError: there is no ``config.json``.
        IOFailure: it is not a sweep's ``config.json`` (naming it).
    """
    path = pathlib.Path(workdir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {workdir} a sweep workdir?")
    try:
        record = registry.upgrade(json.loads(path.read_text()))
        seeds = [int(s) for s in record.pop("seeds")]
        return ml_collections.ConfigDict(record), seeds
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise errors.IOFailure(f"{path}: not a sweep's config.json ({errors.first_line(e)})") from e


# Fields that change how a run is computed (memory layout, recomputation, call granularity,
# caching), not what it computes: a workdir may be resumed with other values.
EXECUTION_FIELDS = frozenset(
    {
        *(field for model in registry.MODELS.values() for field in model.executions),
        "train.seed_chunk",
        "train.seed_layout",
        "train.memory_budget_gb",
        "train.target",
        "train.plan_execution",
        "train.steps_per_call",
        "train.compilation_cache",
    }
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def holds_a_run(workdir: PathLike) -> bool:
    """Whether anything was trained or logged in ``workdir`` (a checkpoint or a result file)."""
    workdir = pathlib.Path(workdir)
    ckpts = workdir / CHECKPOINTS_DIR
    trained = ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())
    logged = any((workdir / n).exists() for n in (METRICS, RESULTS, INTERRUPTED_DIR))
    return trained or logged


def check_same_run(workdir: PathLike, record: dict) -> None:
    """Refuses to mix runs: a workdir holds one config and one seed list (``record``, the
    :func:`config_record` of the run about to start).

    A field the workdir's ``config.json`` does not have yet (added to the config after that run
    started) is accepted at its default value, so existing workdirs keep resuming. Fields in
    :data:`EXECUTION_FIELDS` may differ. A workdir without any checkpoint or result (a start
    that failed) takes the new config.

    Raises:
      IOFailure: ``workdir`` is not a directory, or its config.json cannot be read.
      UsageError: it holds a run with other settings (naming them).
    """
    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG
    if workdir.exists() and not workdir.is_dir():
        raise errors.IOFailure(f"{workdir}: not a directory (--workdir)")
    if not path.exists() or not holds_a_run(workdir):
        return
    try:
        old = config_record(*read_config(workdir))
    except (OSError, errors.IOFailure) as e:
        raise errors.IOFailure(
            f"{path}: unreadable ({errors.first_line(e.__cause__ or e)}); the workdir's run "
            "cannot be identified"
        ) from None
    old, new = _flatten(old), _flatten(record)
    defaults = _flatten(json.loads(get_base_config().to_json()))
    changed = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k)
        and k not in EXECUTION_FIELDS
        and not (k not in old and k in defaults and new.get(k) == defaults[k])
    )
    if changed:
        raise errors.UsageError(
            f"{path}: the workdir holds a run with different settings ({', '.join(changed)}); "
            "use a new --workdir or the original command"
        )


def check_writable(workdir: PathLike) -> None:
    """Fails early (before the data are read) if ``workdir`` cannot be created or written."""
    io_utils.check_creatable(workdir, f"--workdir={workdir}", directory=True)


def check_start(workdir: PathLike, config: ml_collections.ConfigDict, seeds: Sequence[int]):
    """Both checks a run makes before it reads its data: the same run, a writable workdir."""
    check_same_run(workdir, config_record(config, seeds))
    check_writable(workdir)


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def append_metrics(workdir: PathLike, rows: Sequence[dict]) -> None:
    """Adds ``rows`` to ``metrics.jsonl`` by rewriting it atomically (the old lines and the new).

    A write that fails (a full disk) or is killed leaves the previous file, never a torn line.
    """
    path = pathlib.Path(workdir) / METRICS
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    io_utils.write_text(path, old + "".join(json.dumps(row) + "\n" for row in rows))


_ROW_KEYS = {"epoch", "seed", "split"}


def _parse_metrics(path: pathlib.Path) -> tuple[list[tuple[str, dict]], int]:
    """(line, row) of every readable row of ``path`` and the number of lines that are not a JSON
    object with an integer epoch, a seed and a split (torn by a write cut short)."""
    out, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and _ROW_KEYS <= row.keys():
            out.append((line, row))
        else:
            bad += 1
    return out, bad


def read_metrics(workdir: PathLike) -> tuple[list[dict], int]:
    """The rows of ``metrics.jsonl`` (none when it is absent) and how many lines could not be
    parsed: a run still being written can end in a half-written line; it is skipped, not fatal."""
    path = pathlib.Path(workdir) / METRICS
    if not path.exists():
        return [], 0
    lines, bad = _parse_metrics(path)
    return [row for _, row in lines], bad


def truncate_metrics(workdir: PathLike, last_epoch: int) -> None:
    """Drops rows of epochs after ``last_epoch`` (logged before a crash, not checkpointed).

    Unreadable lines (torn by a full disk or a kill) are dropped too, with a one-line warning
    naming the file, so they never block a resume.
    """
    path = pathlib.Path(workdir) / METRICS
    if not path.exists():
        return
    lines, bad = _parse_metrics(path)
    if bad:
        print(
            f"warning: {path}: dropped {bad} unreadable line(s) (a write cut short)",
            file=sys.stderr,
            flush=True,
        )
    kept = [line for line, row in lines if row["epoch"] <= last_epoch]
    io_utils.write_text(path, "".join(line + "\n" for line in kept))


def rewrite_metrics(workdir: PathLike, rows: Sequence[dict]) -> str | None:
    """Rewrites ``metrics.jsonl`` to exactly ``rows`` (those of the epochs a resume starts from,
    kept with their checkpoint), so that a row lost to a torn or cut write is written again.

    Returns:
      A one-line note naming the file when it did not already hold these rows of their epochs
      (unreadable lines dropped, rows restored); None when it did.
    """
    path = pathlib.Path(workdir) / METRICS
    lines, bad = _parse_metrics(path) if path.exists() else ([], 0)
    new = [json.dumps(row) for row in rows]
    last = max((int(row["epoch"]) for row in rows), default=0)
    old = [line for line, row in lines if row["epoch"] <= last]
    io_utils.write_text(path, "".join(line + "\n" for line in new))
    if not bad and old == new:
        return None
    restored = len(set(new) - set(old))
    return (
        f"{path}: dropped {bad} unreadable line(s) (a write cut short), restored {restored} "
        "row(s) from the checkpoint"
    )


def remove_metrics(workdir: PathLike) -> None:
    """Deletes ``metrics.jsonl`` (a run that starts from scratch)."""
    (pathlib.Path(workdir) / METRICS).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# results.csv (and its variants)


def write_results_csv(
    workdir: PathLike,
    seeds: Sequence[int],
    table: dict[str, dict[str, np.ndarray]],
    variant: str = "default",
) -> None:
    """``results{suffix}.csv``: one row per seed × split × metric, values with 6 significant digits.

    Args:
        workdir: the sweep's workdir.
        seeds: ``(S,)`` seed ids.
        table: split -> metric -> ``(S,)`` values (NaN for diverged seeds); its metrics are
            written in the order of :data:`cmseg_jax.results.RESULT_METRICS`.
        variant: evaluation variant (a key of :data:`VARIANTS`).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS)
    for i, seed in enumerate(seeds):
        for split in SPLITS:
            for m in (m for m in RESULT_METRICS if m in table[split]):
                writer.writerow([int(seed), split, m, f"{table[split][m][i]:.6g}"])
    io_utils.write_text(pathlib.Path(workdir) / results_name(variant), out.getvalue())


def read_results_csv(
    workdir: PathLike, variant: str = "default"
) -> dict[int, dict[str, dict[str, float]]] | None:
    """``results{suffix}.csv`` as seed -> split -> metric -> value (``nan`` parsed as NaN); None
    when the file is absent.

    Raises:
        IOFailure: the file is not a results table (naming it and the first bad line).
    """
    path = pathlib.Path(workdir) / results_name(variant)
    if not path.exists():
        return None
    out: dict[int, dict[str, dict[str, float]]] = {}
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            missing = set(RESULTS_COLUMNS) - set(reader.fieldnames or ())
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


GRID_RESULTS = "grid_results.csv"
# A grid sweep: one workdir per grid point, one per program of untraced values.
GRID_DIR = "grid"
PROGRAMS_DIR = "programs"


def point_dir(parent: PathLike, point: dict) -> pathlib.Path:
    """The directory of grid point (or program) ``point`` under ``parent``:
    ``parent/<config_base.point_name(point)>``, or the one a workdir written before the networks'
    sub-dicts named with a field's flat name (``model.hidden=4``) where only that one exists."""
    parent = pathlib.Path(parent)
    path = parent / point_name(point)
    if not path.exists():
        old = {new: old for old, new in registry.legacy_fields().items()}
        legacy = parent / point_name({old.get(f, f): v for f, v in point.items()})
        if legacy.is_dir():
            return legacy
    return path


def write_grid_results(
    workdir: PathLike,
    fields: Sequence[str],
    points: Sequence[tuple[dict, Sequence[int], dict]],
) -> None:
    """``grid_results.csv``: every grid point's results.csv rows, the grid fields as extra columns
    (``seed,<field>...,split,metric,value``; values as in results.csv).

    Args:
        workdir: the grid sweep's workdir.
        fields: the grid fields, in declaration order.
        points: (point {field: value}, seeds (S,), table split -> metric -> (S,)) per point.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["seed", *fields, "split", "metric", "value"])
    for point, seeds, table in points:
        values = [point[f] for f in fields]
        for i, seed in enumerate(seeds):
            for split in SPLITS:
                for m in (m for m in RESULT_METRICS if m in table[split]):
                    writer.writerow([int(seed), *values, split, m, f"{table[split][m][i]:.6g}"])
    io_utils.write_text(pathlib.Path(workdir) / GRID_RESULTS, out.getvalue())


def read_grid_results(workdir: PathLike) -> list[dict] | None:
    """``grid_results.csv`` as rows {column: value} (numbers parsed); None when absent.

    Raises:
        IOFailure: the file is not a grid results table (naming it and the line).
    """
    path = pathlib.Path(workdir) / GRID_RESULTS
    if not path.exists():
        return None
    rows = []
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            if not set(RESULTS_COLUMNS) <= set(reader.fieldnames or ()):
                raise KeyError("seed, split, metric, value")
            for row in reader:
                parsed = {}
                for key, text in row.items():
                    try:
                        parsed[key] = float(text) if key not in ("split", "metric") else text
                    except ValueError:
                        parsed[key] = text
                parsed["seed"] = int(parsed["seed"])
                rows.append(parsed)
        except (KeyError, ValueError, TypeError, csv.Error) as e:
            raise errors.IOFailure(
                f"{path}: line {reader.line_num}: not a grid results table ({errors.first_line(e)})"
            ) from None
    return rows


# ----------------------------------------------------------------------------------------------
# final_stats.npz (and its variants), examples.npz


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray] | None:
    """Every array of ``path``; None when it is absent.

    Raises:
        IOFailure: the file cannot be read (truncated, object arrays, ...); its cause is the
            underlying error.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise errors.IOFailure(f"{path}: unreadable ({errors.first_line(e)})") from e


def write_final_stats(
    workdir: PathLike,
    seeds: Sequence[int],
    confusion: np.ndarray,
    cls_confusion: np.ndarray,
    hist_liver: np.ndarray,
    hist_background: np.ndarray,
    variant: str = "default",
) -> None:
    """``final_stats{suffix}.npz``: final sufficient statistics per seed and split.

    Args:
        workdir: the sweep's workdir.
        seeds: ``(S,)`` seed ids.
        confusion: ``(S, 3, 4)`` pixel tp, fp, fn, tn per seed and split (``SPLITS`` order).
        cls_confusion: ``(S, 3, 4)`` image tp, fp, fn, tn.
        hist_liver: ``(S, 3, B)`` histogram of the liver score on liver pixels.
        hist_background: ``(S, 3, B)`` the same on background pixels.
        variant: evaluation variant (a key of :data:`VARIANTS`).
    """
    hist_liver = np.asarray(hist_liver, np.int64)
    io_utils.write_npz(
        pathlib.Path(workdir) / final_stats_name(variant),
        seeds=np.asarray(seeds, np.int64),
        splits=np.asarray(SPLITS),
        confusion=np.asarray(confusion, np.int64),
        cls_confusion=np.asarray(cls_confusion, np.int64),
        hist_liver=hist_liver,
        hist_background=np.asarray(hist_background, np.int64),
        bin_edges=metrics.bin_edges(hist_liver.shape[-1]),
    )


def read_final_stats(workdir: PathLike, variant: str = "default") -> dict[str, np.ndarray] | None:
    """The arrays of ``final_stats{suffix}.npz`` (keys in ``docs/workdir.md``); None when absent.

    Raises:
        IOFailure: the file cannot be read.
    """
    return _read_npz(pathlib.Path(workdir) / final_stats_name(variant))


# ----------------------------------------------------------------------------------------------
# The ensemble: final_stats_ensemble.npz and results_ensemble.csv (and their variants)


def write_ensemble(
    workdir: PathLike,
    seeds: Sequence[int],
    confusion: np.ndarray,
    cls_confusion: np.ndarray,
    hist_liver: np.ndarray,
    hist_background: np.ndarray,
    variant: str = "default",
) -> dict[str, dict[str, np.ndarray]]:
    """``final_stats_ensemble{suffix}.npz`` and ``results_ensemble{suffix}.csv``: the ensemble of
    the first k seeds, for k = 1 … M.

    Args:
        workdir: the sweep's workdir.
        seeds: ``(M,)`` the seeds averaged, in the order they join (row k - 1: the first k).
        confusion, cls_confusion: ``(M, 3, 4)`` pixel / image tp, fp, fn, tn per size and split.
        hist_liver, hist_background: ``(M, 3, B)`` the ensemble's liver-score histograms.
        variant: evaluation variant (a key of :data:`VARIANTS`).

    Returns:
        The table written: split -> metric of :data:`ENSEMBLE_METRICS` -> ``(M,)`` by size.
    """
    confusion = np.asarray(confusion, np.int64)
    hist_liver = np.asarray(hist_liver, np.int64)
    io_utils.write_npz(
        pathlib.Path(workdir) / ensemble_stats_name(variant),
        sizes=np.arange(1, len(seeds) + 1, dtype=np.int64),
        seeds=np.asarray(seeds, np.int64),
        splits=np.asarray(SPLITS),
        confusion=confusion,
        cls_confusion=np.asarray(cls_confusion, np.int64),
        hist_liver=hist_liver,
        hist_background=np.asarray(hist_background, np.int64),
        bin_edges=metrics.bin_edges(hist_liver.shape[-1]),
    )
    table = ensemble_table(confusion, cls_confusion, hist_liver, hist_background)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ENSEMBLE_COLUMNS)
    for k in range(len(seeds)):
        for split in SPLITS:
            for m in ENSEMBLE_METRICS:
                writer.writerow([k + 1, split, m, f"{table[split][m][k]:.6g}"])
    io_utils.write_text(pathlib.Path(workdir) / ensemble_results_name(variant), out.getvalue())
    return table


def read_ensemble_stats(
    workdir: PathLike, variant: str = "default"
) -> dict[str, np.ndarray] | None:
    """The arrays of ``final_stats_ensemble{suffix}.npz``; None when absent (a workdir written
    before ensembles were evaluated, or with ``eval.ensemble=False``).

    Raises:
        IOFailure: the file cannot be read.
    """
    return _read_npz(pathlib.Path(workdir) / ensemble_stats_name(variant))


def read_ensemble_results(
    workdir: PathLike, variant: str = "default"
) -> dict[int, dict[str, dict[str, float]]] | None:
    """``results_ensemble{suffix}.csv`` as size -> split -> metric -> value; None when absent.

    Raises:
        IOFailure: the file is not an ensemble table (naming it and the first bad line).
    """
    path = pathlib.Path(workdir) / ensemble_results_name(variant)
    if not path.exists():
        return None
    out: dict[int, dict[str, dict[str, float]]] = {}
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            missing = set(ENSEMBLE_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise KeyError(", ".join(sorted(missing)))
            for row in reader:
                value = float(row["value"]) if row["value"].strip() else math.nan
                split = out.setdefault(int(row["size"]), {}).setdefault(row["split"], {})
                split[row["metric"]] = value
        except (KeyError, ValueError, TypeError, AttributeError, csv.Error) as e:
            raise errors.IOFailure(
                f"{path}: line {reader.line_num}: not an ensemble table (columns size, split, "
                f"metric, value; {type(e).__name__}: {errors.first_line(e)})"
            ) from None
    return out


def write_examples(
    workdir: PathLike,
    images: np.ndarray,
    masks: np.ndarray,
    seeds: Sequence[int],
    scores: np.ndarray,
    threshold: float,
) -> None:
    """``examples.npz``: test slices with the liver score of the best / median / worst seed.

    Args:
        workdir: the sweep's workdir.
        images: ``(E, H, W)`` test slices, intensities in [-1, 1].
        masks: ``(E, H, W)`` ground truth (1 = liver).
        seeds: ``(3,)`` the best, median and worst seed (:data:`EXAMPLE_ROLES`).
        scores: ``(3, E, H, W)`` their liver scores in [0, 1] (stored as float16).
        threshold: score threshold of the model's mask.
    """
    io_utils.write_npz(
        pathlib.Path(workdir) / EXAMPLES,
        images=np.asarray(images, np.float32),
        masks=np.asarray(masks, np.uint8),
        seeds=np.asarray(seeds, np.int64),
        roles=np.asarray(EXAMPLE_ROLES),
        scores=np.asarray(scores, np.float16),
        threshold=np.float32(threshold),
    )


def read_examples(workdir: PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of ``examples.npz``; None when absent.

    Raises:
        IOFailure: the file cannot be read.
    """
    return _read_npz(pathlib.Path(workdir) / EXAMPLES)


# ----------------------------------------------------------------------------------------------
# run.json, summary.md


def write_run_info(
    workdir: PathLike,
    seeds: Sequence[int],
    diverged: Sequence[int],
    epochs_completed: int,
    num_epochs: int,
    data: str,
    device: str,
    xla: dict | None = None,
) -> None:
    """``run.json``, written when a run has finished; ``diverged`` are seed ids; ``xla``: the
    XLA flags the run's backend started with (:func:`cmseg_jax.xla_flags.record`)."""
    info = {
        "seeds": [int(s) for s in seeds],
        "diverged": [int(s) for s in diverged],
        "epochs_completed": int(epochs_completed),
        "num_epochs": int(num_epochs),
        "data": str(data),
        "device": str(device),
    }
    if xla is not None:
        info["xla"] = dict(xla)
    io_utils.write_json(pathlib.Path(workdir) / RUN_INFO, info)


def read_run_info(workdir: PathLike) -> dict | None:
    """``run.json`` as a dict; None when absent (a run in progress or interrupted).

    Raises:
        IOFailure: the file is not a JSON object.
    """
    path = pathlib.Path(workdir) / RUN_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise errors.IOFailure(f"{path}: unreadable ({errors.first_line(e)})") from e
    if not isinstance(info, dict):
        raise errors.IOFailure(f"{path}: not a JSON object")
    return info


def write_summary(workdir: PathLike, text: str) -> None:
    """``summary.md`` (markdown, see :func:`cmseg_jax.results.summary_markdown`)."""
    io_utils.write_text(pathlib.Path(workdir) / SUMMARY, text)


def read_summary(workdir: PathLike) -> str | None:
    """The text of ``summary.md``; None when absent."""
    path = pathlib.Path(workdir) / SUMMARY
    return path.read_text() if path.exists() else None
