"""A sweep workdir as the report sees it: a :class:`Run`, read through :mod:`cmseg_jax.workdir`."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from cmseg_jax import errors, variants, workdir_lock
from cmseg_jax import workdir as workdir_io
from cmseg_jax.results import RESULT_METRICS, SPLITS

VARIANT_TITLES = {v.name: v.title for v in variants.VARIANTS.values()}


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
            :data:`cmseg_jax.workdir.VARIANTS`).
        variants: the run's extra evaluation variants present in the workdir, name -> a
            :class:`Run` that shares everything but ``values``, ``source``, ``final_stats``,
            ``ensemble``, ``notes`` and ``variant`` (and has no ``variants`` of its own).
        ensemble: the ensemble of the seeds by size (``results_ensemble{suffix}.csv``):
            split -> metric -> ``(M,)``, entry k - 1 the ensemble of the first k seeds that did
            not diverge; None for a workdir without one (written before ensembles were
            evaluated, or with ``eval.ensemble=False``).
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
    ensemble: dict[str, dict[str, np.ndarray]] | None = None

    @property
    def ok_mask(self) -> np.ndarray:
        """``(S,)`` bool: seed did not diverge."""
        bad = set(self.diverged)
        return np.array([s not in bad for s in self.seeds], dtype=bool)


def row_value(row: dict, metric: str) -> float:
    """A metric of a ``metrics.jsonl`` row as float; NaN when missing, null or the seed diverged."""
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


def _read_noted(read: Callable, name: str, notes: list[str], *args, absent: str | None = None):
    """``read(*args)`` of an optional file; None, with a note, when it cannot be read (and with
    the note ``absent`` when the reader found no file)."""
    try:
        data = read(*args)
    except errors.IOFailure as e:
        notes.append(f"could not read {name}: {e.__cause__ or e}")
        return None
    if data is None and absent:
        notes.append(absent)
    return data


def _read_config(workdir: pathlib.Path, notes: list[str]) -> tuple[ml_collections.ConfigDict, list]:
    """``config.json``'s config and seeds; empty when it is absent or unreadable (noted)."""
    try:
        return workdir_io.read_config(workdir)
    except FileNotFoundError:
        pass
    except errors.IOFailure as e:
        notes.append(f"could not read {workdir_io.CONFIG}: {e.__cause__ or e}")
    return ml_collections.ConfigDict(), []


def _num_epochs(info: dict, config: ml_collections.ConfigDict) -> int | None:
    """The run's planned number of epochs (``run.json``, else ``config.json``)."""
    if "num_epochs" in info:
        return info["num_epochs"]
    train = config.get("train")
    return train.get("epochs") if isinstance(train, ml_collections.ConfigDict) else None


def load_run(workdir: str | pathlib.Path, name: str | None = None) -> Run:
    """Reads one sweep workdir (finished or partial; see ``docs/workdir.md``).

    Args:
        workdir: the sweep's ``--workdir``.
        name: label for the report; defaults to the directory name.

    Returns:
        A :class:`Run` of the ``default`` variant; extra evaluation variants found in the workdir
        (``results{suffix}.csv`` / ``final_stats{suffix}.npz``, see
        :data:`cmseg_jax.workdir.VARIANTS`) are in its ``variants``.

    Raises:
        IOFailure: neither ``results.csv`` nor a usable ``metrics.jsonl`` exists, or
            ``results.csv`` is not a results table.
    """
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        what = "not a directory" if workdir.exists() else "no such directory"
        raise errors.IOFailure(f"{workdir}: {what}")
    notes: list[str] = []
    info = _read_noted(workdir_io.read_run_info, workdir_io.RUN_INFO, notes, workdir) or {}
    config, config_seeds = _read_config(workdir, notes)
    if not info:
        writer = workdir_lock.holder(workdir)
        if writer:
            notes.append(f"in progress: a sweep is writing it ({writer}); read as it stood")
            print(f"note: {workdir}: {notes[-1]}", file=sys.stderr, flush=True)
        else:
            notes.append("no run.json and no sweep writing it: interrupted (rerun to finish)")

    epochs, bad = workdir_io.read_metrics(workdir)
    if bad:
        notes.append(f"skipped {bad} unreadable line(s) of {workdir_io.METRICS}")

    # Seed order: run.json, then config.json, then whatever the result files contain.
    seeds: list[int] = [int(s) for s in info.get("seeds", config_seeds)]
    diverged = {int(s) for s in info.get("diverged", [])}
    diverged |= {int(r["seed"]) for r in epochs if r.get("diverged", False)}

    per_seed = workdir_io.read_results_csv(workdir)
    if per_seed is not None:
        source = f"{workdir_io.RESULTS} (final)"
    else:
        per_seed = {}
        epoch, complete = last_complete_epoch(epochs)
        if epoch is None:
            raise errors.IOFailure(
                f"{workdir}: not a sweep workdir (neither results.csv nor rows in metrics.jsonl)"
            )
        total = _num_epochs(info, config)
        source = f"{workdir_io.METRICS}, epoch {epoch}" + (f" of {total}" if total else "")
        if not complete:
            source += " (incomplete: not every seed and split logged)"
        for r in epochs:
            if int(r["epoch"]) == epoch:
                split = per_seed.setdefault(int(r["seed"]), {}).setdefault(r["split"], {})
                split.update({m: row_value(r, m) for m in RESULT_METRICS if m in r})
    for seed in per_seed:
        if seed not in seeds:
            seeds.append(seed)

    bad_seeds = sorted(diverged & set(seeds))
    values = _values_array(per_seed, seeds, bad_seeds, notes)
    final_stats = _read_noted(
        workdir_io.read_final_stats,
        workdir_io.FINAL_STATS,
        notes,
        workdir,
        absent=f"no {workdir_io.FINAL_STATS}",
    )
    examples = _read_noted(
        workdir_io.read_examples,
        workdir_io.EXAMPLES,
        notes,
        workdir,
        absent=f"no {workdir_io.EXAMPLES}",
    )
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
    run.ensemble = _load_ensemble(workdir, "default", notes)
    for variant in workdir_io.VARIANTS:
        if variant != "default":
            extra = _load_variant(run, variant)
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


def _load_variant(run: Run, variant: str) -> Run | None:
    """The extra evaluation ``variant`` of ``run`` from ``results{suffix}.csv`` and
    ``final_stats{suffix}.npz``; None when the workdir has neither (a note on ``run`` when it has
    only the npz: the sweep was interrupted between writing the two)."""
    results_name = workdir_io.results_name(variant)
    stats_name = workdir_io.final_stats_name(variant)
    per_seed = workdir_io.read_results_csv(run.workdir, variant)
    if per_seed is None:
        if (run.workdir / stats_name).exists():
            run.notes.append(f"{stats_name} without {results_name}: {variant} not reported")
        return None
    notes: list[str] = []
    unknown = sorted(set(per_seed) - set(run.seeds))
    if unknown:
        notes.append(f"{results_name}: ignored seeds not in the run: {unknown}")
    values = _values_array(per_seed, run.seeds, run.diverged, notes)
    final_stats = _read_noted(
        workdir_io.read_final_stats,
        stats_name,
        notes,
        run.workdir,
        variant,
        absent=f"no {stats_name}",
    )
    return dataclasses.replace(
        run,
        values=values,
        source=f"{results_name} (final)",
        final_stats=final_stats,
        notes=notes,
        variant=variant,
        variants={},
        ensemble=_load_ensemble(run.workdir, variant, notes),
    )


def _load_ensemble(workdir: pathlib.Path, variant: str, notes: list[str]) -> dict | None:
    """``results_ensemble{suffix}.csv`` as split -> metric -> (M,) by size; None when absent."""
    by_size = _read_noted(
        workdir_io.read_ensemble_results,
        workdir_io.ensemble_results_name(variant),
        notes,
        workdir,
        variant,
    )
    if not by_size:
        return None
    sizes = sorted(by_size)
    if sizes != list(range(1, len(sizes) + 1)):
        notes.append(f"{workdir_io.ensemble_results_name(variant)}: sizes {sizes} are not 1 … M")
        return None
    metric_names = [m for m in workdir_io.ENSEMBLE_METRICS if m in by_size[1].get(SPLITS[0], {})]
    return {
        split: {
            m: np.array([by_size[k].get(split, {}).get(m, math.nan) for k in sizes])
            for m in metric_names
        }
        for split in SPLITS
    }
