"""The sweep's training loop over epochs: data on the devices, resume, per-epoch metrics and
checkpoints, final evaluations and result files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from cmseg_jax import (
    checkpoint,
    config_base,
    distributed,
    errors,
    io_utils,
    results,
    tensorboard_log,
    validate,
    workdir_lock,
    xla_flags,
)
from cmseg_jax import workdir as workdir_io
from cmseg_jax.config_base import with_fields
from cmseg_jax.data import dataset
from cmseg_jax.sweep import grid
from cmseg_jax.sweep.layout import SweepFns
from cmseg_jax.sweep.outputs import evaluate as _evaluate
from cmseg_jax.sweep.outputs import finish as _finish
from cmseg_jax.sweep.plan import plan_layout, running_on_target
from cmseg_jax.train import Trainer, TrainState, make_train, seed_key

SPLITS = dataset.SPLITS


def _pad_seeds(keys: np.ndarray, total: int) -> np.ndarray:
    """Repeats the last key up to ``total`` rows (the extra seeds' results are dropped)."""
    extra = total - len(keys)
    return np.concatenate([keys, np.repeat(keys[-1:], extra, axis=0)]) if extra else keys


def _host(tree):
    return distributed.to_host(tree)


def run(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    seeds: Sequence[int],
    progress: bool = True,
    stop: errors.StopSignals | None = None,
) -> dict:
    """Trains ``seeds`` of ``config`` in ``workdir`` (resuming if it holds a checkpoint); with a
    ``sweep.grid``, every grid point × seed (:mod:`cmseg_jax.sweep.grid`).

    The config and the data are validated before anything is compiled or written; ``config.json``
    is written only then. Resuming walks back to the newest intact checkpoint (see
    :mod:`cmseg_jax.checkpoint`). With ``stop`` (installed SIGINT / SIGTERM handlers) a signal
    during training finishes the current compiled call, writes a checkpoint and raises
    :class:`~cmseg_jax.errors.Interrupted`.

    Returns:
      {"seeds", "diverged", "table" (split -> metric -> (S,)), "summary" (markdown), "fns"}.
    """
    workdir = pathlib.Path(workdir)
    seeds = list(seeds)
    stop = stop or errors.StopSignals()
    validate.check_config(config)  # before σ, K are derived from data.image_size
    config = config_base.resolve(config)
    try:
        traced, untraced = config_base.split_grid(config)
    except ValueError as e:
        raise errors.UsageError(str(e)) from None
    workdir_io.check_start(workdir, config, seeds)
    with _one_writer(workdir):  # before the data are read: a second sweep stops at once
        if untraced:
            return _run_programs(config, workdir, seeds, traced, untraced, progress, stop)
        axis = grid.plain(seeds)
        if traced:
            points = tuple(config_base.grid_points(traced))
            axis = grid.RunAxis(tuple(seeds), points, {}, workdir / workdir_io.GRID_DIR)
        return _run(config, workdir, axis, progress, stop)


@contextlib.contextmanager
def _one_writer(workdir: pathlib.Path):
    """Holds the workdir's lock for the block (process 0 takes it; every process stops if it
    cannot)."""
    lock = workdir_lock.WorkdirLock(workdir)
    refused = None
    if distributed.is_writer():
        try:
            lock.acquire()
        except (errors.UsageError, errors.IOFailure, OSError) as e:  # the others must stop too
            refused = e
    if distributed.any_process(refused is not None):
        raise refused or errors.UsageError(f"{workdir}: process 0 could not lock it")
    try:
        yield
    finally:
        lock.release()


def _run_programs(config, workdir, seeds, traced, untraced, progress, stop) -> dict:
    """A grid with untraced fields: one program per combination of their values."""
    if distributed.is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
        workdir_io.write_config(workdir, config, seeds)
    outs, summary = [], []
    for fixed in config_base.grid_points(untraced):
        sub = grid.program_config(config, fixed, traced)
        sub_dir = workdir_io.point_dir(workdir / workdir_io.PROGRAMS_DIR, fixed)
        points = tuple(config_base.grid_points(traced))
        axis = grid.RunAxis(tuple(seeds), points, fixed, workdir / workdir_io.GRID_DIR)
        workdir_io.check_start(sub_dir, sub, seeds)
        out = _run(sub, sub_dir, axis, progress, stop)
        outs.append(out)
        summary.append(out["summary"])
    grid_rows = [row for out in outs for row in out["grid_rows"]]
    if distributed.is_writer():
        workdir_io.write_grid_results(workdir, list(untraced) + list(traced), grid_rows)
        workdir_io.write_summary(workdir, "\n".join(summary))
    return {"seeds": seeds, "summary": "\n".join(summary), "grid_rows": grid_rows}


def _run(config, workdir: pathlib.Path, axis: grid.RunAxis, progress, stop) -> dict:
    """Trains the rows of ``axis`` in ``workdir`` (checked by :func:`workdir_io.check_start`):
    :func:`run` after the grid is laid out. Four steps: set up, resume, train, finish."""
    setup = _set_up(config, workdir, axis)
    where = _resume_run(setup, workdir, axis)
    final_evals = _train(config, workdir, axis, setup, where, progress, stop)
    out = _finish(
        config,
        workdir,
        axis,
        setup.states,
        setup.data,
        setup.class_weights,
        setup.fns,
        setup.data_description,
        final_evals,
    )
    out["fns"] = setup.fns
    return out


@dataclasses.dataclass
class _Setup:
    """A run ready to train: its data and seed-stacked states on the devices, its functions.

    Attributes:
      rows: rows of the stacked states, padded seeds included (``num`` are real).
    """

    trainer: Trainer
    fns: SweepFns
    data: dict
    class_weights: jnp.ndarray
    states: TrainState
    num: int
    rows: int
    data_description: str


def _set_up(config, workdir: pathlib.Path, axis: grid.RunAxis) -> _Setup:
    """Reads the data, writes ``config.json``, plans the layout, compiles nothing yet but puts
    the data and every row's initial state on the devices."""
    running_on_target(config)
    splits, data_description = dataset.load_dataset(config)
    sizes = {name: len(splits[name].labels) for name in SPLITS}
    validate.check_splits(config, sizes)
    print(f"DATA: {data_description}", file=sys.stderr, flush=True)
    if distributed.is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
        io_utils.remove_orphans(workdir)
        workdir_io.write_config(workdir, config, list(axis.seeds))
    distributed.check_shared_dir(workdir)
    weights = dataset.class_weights(splits["train"].masks, config.model.num_classes)
    # One padded copy serves training (which draws only the real slices) and evaluation.
    host_data = {
        name: dataset.device_layout(splits[name], config.eval.batch_size) for name in SPLITS
    }

    def make_trainer(cfg):
        return make_train(cfg, num_train=len(splits["train"].labels), traced=axis.traced)

    trainer = make_trainer(config)
    seeds = axis.run_seeds
    num = len(seeds)
    resident = sum(x.nbytes for x in jax.tree_util.tree_leaves(host_data))
    # A fixed chunk is not compiled twice: XLA names an out-of-memory chunk when it runs.
    plan = plan_layout(
        config, trainer, num, resident, measure_fixed=False, make_trainer=make_trainer
    )
    if plan.execution:
        trainer = make_trainer(with_fields(config, plan.execution))
    xla = xla_flags.describe(xla_flags.record())
    print(f"LAYOUT: {plan.describe(num)}; {xla}", file=sys.stderr, flush=True)
    distributed.check_same(plan.chunk, "train.seed_chunk")
    layout = plan.layout
    ensemble = None
    if config.eval.ensemble:
        ensemble = dict(
            eval_batch=config.eval.batch_size,
            seeds_per_group=len(axis.seeds),
            groups=len(axis.points),
        )
    fns = SweepFns(trainer, layout, config.train.steps_per_call, ensemble=ensemble)
    keys = np.stack([np.asarray(seed_key(config.root_seed, s)) for s in seeds])
    keys = _pad_seeds(keys, layout.padded(num))
    hparams = axis.hparams()
    if hparams is None:
        states = fns.init(distributed.put((keys,), layout.seeds))
    else:
        hparams = {f: _pad_seeds(v, len(keys)) for f, v in hparams.items()}
        states = fns.init(distributed.put((keys, hparams), layout.seeds))
    if layout.shards > 1:
        print(
            f"DEVICES: {num} seeds (padded to {len(keys)}) over {layout.shards} devices "
            f"({jax.devices()[0].device_kind}), mesh axis 'seed'",
            file=sys.stderr,
            flush=True,
        )
    return _Setup(
        trainer=trainer,
        fns=fns,
        data=distributed.put(host_data, layout.replicated),
        class_weights=distributed.put(weights, layout.replicated),
        states=states,
        num=num,
        rows=len(keys),
        data_description=data_description,
    )


@dataclasses.dataclass
class _Where:
    """Where a run stands (:func:`_resume`) and what it writes checkpoints with.

    Attributes:
      start: the last complete epoch (0: none).
      resume: (step, loss_sum) of the epoch after ``start`` if it stopped part-way, else None.
      logged: the metrics.jsonl rows up to ``start`` (None: unknown, an older checkpoint).
    """

    start: int
    resume: tuple | None
    logged: list | None
    ckpt: checkpoint.Checkpointer
    interrupted: checkpoint.InterruptedCheckpoint
    point_dirs: list


def _resume_run(setup: _Setup, workdir: pathlib.Path, axis: grid.RunAxis) -> _Where:
    """Restores the newest intact checkpoint into ``setup.states`` (if any) and puts
    metrics.jsonl back to the epoch it resumes from."""
    ckpt = checkpoint.Checkpointer(workdir)
    interrupted = checkpoint.InterruptedCheckpoint(workdir)
    point_dirs = [axis.point_dir(i) for i in range(len(axis.points))] if axis.is_grid else []
    start, restored, resume, logged = _resume(
        ckpt, interrupted, _take(setup.states, setup.num), workdir, extra_dirs=point_dirs
    )
    if start and logged is not None and distributed.is_writer():
        _rewrite_metrics(workdir, axis, logged, point_dirs)
    if restored is not None:
        setup.states = distributed.put(_pad_state(restored, setup.rows), setup.fns.layout.seeds)
    return _Where(start, resume, logged, ckpt, interrupted, point_dirs)


def _train(config, workdir, axis: grid.RunAxis, setup: _Setup, where: _Where, progress, stop):
    """The epochs from ``where.start + 1``: training calls, evaluations, metrics, checkpoints;
    a signal stops at the next safe point with a checkpoint. Leaves the trained states in
    ``setup.states``; returns the final evaluation."""
    fns, data, class_weights, num, seeds = (
        setup.fns,
        setup.data,
        setup.class_weights,
        setup.num,
        axis.run_seeds,
    )
    states, logged, ckpt, interrupted = setup.states, where.logged, where.ckpt, where.interrupted
    start = where.start
    # A grid logs per point (seed ids repeat across points): one board per point's workdir.
    dirs = where.point_dirs or [workdir]
    boards = [tensorboard_log.EpochBoard(d, first_epoch=start + 1) for d in dirs]
    epochs = config.train.epochs
    final_evals = None
    spe = setup.trainer.steps_per_epoch
    bar = tqdm(
        total=(epochs - start) * spe * num,
        unit="seed-step",
        unit_scale=True,
        disable=not progress or not distributed.is_writer(),
        desc=f"{config.name} × {num} seeds",
        file=sys.stderr,
    )
    # A signal whose exception was swallowed where it was raised (a gc callback, say).
    if distributed.any_process(stop.requested):
        raise stop.stop("stopped before training; rerun the same command to resume")
    stop.deferring = True  # a signal from here on is honoured at the next safe point
    for epoch in range(start + 1, epochs + 1):
        loss_sum = jnp.zeros((setup.rows,), jnp.float32)
        step0 = 0
        if where.resume is not None and epoch == start + 1:  # an epoch stopped part-way
            step0, loss_sum = where.resume[0], _pad_rows(where.resume[1], setup.rows)
        for length in _remaining_calls(fns.call_lengths, step0):
            states, out = fns.train[length](
                states, data["train"], class_weights, jnp.int32(epoch), jnp.int32(step0)
            )
            loss_sum = loss_sum + out["loss_sum"]
            step0 += length
            out["loss_sum"].block_until_ready()
            bar.update(length * num)
            if distributed.any_process(stop.requested):
                loss = _host(loss_sum)[:num]
                interrupted.save(epoch, step0, _take(states, num), loss)
                raise stop.stop(
                    f"checkpoint written in epoch {epoch} after step {step0} of {spe} "
                    f"({interrupted.directory}); rerun the same command to resume"
                )
        train_loss = _host(loss_sum)[:num] / spe
        diverged = _host(states.diverged)[:num]
        bar.set_postfix(
            epoch=epoch, loss=f"{np.nanmean(np.where(diverged, np.nan, train_loss)):.4f}"
        )
        if epoch == epochs:
            # The final evaluation is a superset of the per-epoch one: run it once, use it twice.
            final_evals = evals = _evaluate(fns.evaluate_final, states, data, class_weights, num)
        elif epoch % config.eval.every_epochs == 0:
            evals = _evaluate(fns.evaluate, states, data, class_weights, num)
        if epoch == epochs or epoch % config.eval.every_epochs == 0:
            rows = results.epoch_records(epoch, seeds, train_loss, evals, diverged)
            if distributed.is_writer():
                _log_epoch(workdir, axis, rows, where.point_dirs, boards)
            logged = None if logged is None else logged + rows
        if diverged.any():
            logging.warning("epoch %d: diverged seeds %s", epoch, np.asarray(seeds)[diverged])
        # Every row so far goes with the checkpoint: a resume rewrites metrics.jsonl from it.
        ckpt.save(epoch, _take(states, num), None if logged is None else json.dumps(logged))
        interrupted.clear()
        if distributed.any_process(stop.requested):
            raise stop.stop(
                f"checkpoint of epoch {epoch} written; rerun the same command to resume"
            )
    stop.deferring = False
    bar.close()
    ckpt.close()
    for board in boards:
        board.close()
    setup.states = states
    return final_evals


def _rewrite_metrics(workdir, axis: grid.RunAxis, logged, point_dirs) -> None:
    """metrics.jsonl of the workdir (and of each grid point) rewritten to exactly the rows
    ``logged`` with the checkpoint a run resumes from, as :func:`_log_epoch` wrote them."""
    files: dict[pathlib.Path, list[dict]] = {}
    for epoch in sorted({int(row["epoch"]) for row in logged}):
        rows = [row for row in logged if int(row["epoch"]) == epoch]
        for directory, part in _epoch_files(workdir, axis, rows, point_dirs):
            files.setdefault(directory, []).extend(part)
    for directory in (workdir, *point_dirs):
        note = workdir_io.rewrite_metrics(directory, files.get(directory, []))
        if note is not None:
            _warn(note)


def _epoch_files(workdir, axis: grid.RunAxis, rows, point_dirs) -> list[tuple[pathlib.Path, list]]:
    """(directory, its metrics.jsonl rows) of one epoch's rows: the workdir's, and a grid's
    per point."""
    per_row = len(SPLITS)
    if not axis.is_grid:
        return [(workdir, rows)]
    n = len(axis.seeds) * per_row
    return [(workdir, grid.with_point_fields(rows, axis, per_row))] + [
        (point_dir, rows[i * n : (i + 1) * n]) for i, point_dir in enumerate(point_dirs)
    ]


def _log_epoch(workdir, axis: grid.RunAxis, rows, point_dirs, boards) -> None:
    """An epoch's metrics.jsonl rows (3 per run-axis row) to the workdir, and per grid point to
    the point's workdir and TensorBoard."""
    files = _epoch_files(workdir, axis, rows, point_dirs)
    for directory, part in files:
        directory.mkdir(parents=True, exist_ok=True)
        workdir_io.append_metrics(directory, part)
    for board, (_, part) in zip(boards, files[-len(boards) :], strict=True):
        board.write(part)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _resume(ckpt, interrupted, like, workdir: pathlib.Path, extra_dirs=()):
    """Where a workdir's run stands: (last complete epoch, its state or None, the
    ``(step, loss_sum)`` of the epoch after it if a stopped run checkpointed it part-way, and
    the metrics.jsonl rows of the epochs up to it, None if unknown). Without rows kept in the
    checkpoint (older versions), the metrics.jsonl of ``workdir`` and of ``extra_dirs`` (a
    grid's points) are truncated to it."""
    had = bool(ckpt.epochs())
    # Process 0 alone moves a corrupt checkpoint aside; the others skip it as it does.
    start, restored = ckpt.restore_latest(like, report=_warn, quarantine=distributed.is_writer())
    start = start or 0
    resume = None
    num = len(jax.tree_util.tree_leaves(like)[0])
    part = interrupted.load(start + 1, like, num, report=_warn)
    if part is not None:
        restored, resume = part[1], (part[0], part[2])
    # The metrics.jsonl rows kept with the checkpoint (absent in those of older versions).
    record = ckpt.record(start) if start else None
    logged = None if record is None else json.loads(record)
    if start or resume is not None:
        if distributed.is_writer() and logged is None:
            for d in (workdir, *extra_dirs):
                workdir_io.truncate_metrics(d, start)
        if logged is None and not start:
            logged = []
        elif logged is None and not extra_dirs:  # a grid's own rows are not read back
            logged = workdir_io.read_metrics(workdir)[0]
        where = f"after epoch {start}"
        if resume is not None:
            where += f", in epoch {start + 1} after step {resume[0]}"
        logging.info("resuming %s %s", workdir, where)
        print(f"RESUME: {workdir} {where}", file=sys.stderr, flush=True)
    else:
        if had:
            _warn(f"{ckpt.directory}: no intact checkpoint left; training from the start")
        if distributed.is_writer():
            for d in (workdir, *extra_dirs):
                workdir_io.remove_metrics(d)
        logged = []
    return start, restored, resume, logged


def _remaining_calls(call_lengths: list[int], done: int) -> list[int]:
    """The compiled calls of an epoch still to run after ``done`` of its steps."""
    out, total = [], 0
    for length in call_lengths:
        if total >= done:
            out.append(length)
        total += length
    return out


def _pad_rows(x, total: int):
    x = jnp.asarray(x)
    return jnp.concatenate([x, jnp.zeros((total - x.shape[0],) + x.shape[1:], x.dtype)])


def _take(states: TrainState, num: int) -> TrainState:
    """The first ``num`` (real) seeds, as host numpy: a checkpoint never depends on the mesh."""
    return jax.tree_util.tree_map(lambda x: x[:num], _host(states))


def _pad_state(states: TrainState, total: int) -> TrainState:
    def pad(x):
        x = jnp.asarray(x)
        extra = total - x.shape[0]
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if extra else x

    return jax.tree_util.tree_map(pad, states)
