"""Trains many seeds of one experiment at once; the CLI entry, the only module that knows devices.

    python -m cmseg_jax.sweep --config configs/cam_beta.py --num_seeds 48 --workdir runs/cam_beta
    python -m cmseg_jax.sweep --config configs/full_ce.py:cpu --seeds 3,7 --workdir runs/x \
        --config.train.epochs=5
    python -m cmseg_jax.sweep --config configs/cam_beta.py --dry_run

The per-seed functions of :mod:`cmseg_jax.train` are ``vmap``-ed over a seed axis that is sharded
over every visible device (a 1-D mesh with axis ``seed``; the data are replicated), optionally in
chunks of ``train.seed_chunk`` seeds per device (``lax.map`` over chunks, to fit memory), and
``jit``-ed once: an epoch is one compiled call (one ``lax.scan`` over its steps) on data that stay
on the devices.
After each epoch the three splits are evaluated, one line per seed and split goes to
``metrics.jsonl`` and the seed-stacked state is checkpointed; re-running the same command on the
same workdir resumes after the last checkpoint. Outputs: docs/workdir.md.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
from tqdm import tqdm

from cmseg_jax import checkpoint, errors, io_utils, results, validate
from cmseg_jax.config_base import get_base_config
from cmseg_jax.data import dataset
from cmseg_jax.models.convmixerseg import count_params
from cmseg_jax.train import Trainer, TrainState, make_train, seed_key

SPLITS = dataset.SPLITS


def resolve_seeds(num_seeds: int | None, seeds: str | None, default: int) -> list[int]:
    """Seeds to train: ``--seeds 3,7`` exactly, else ``range(--num_seeds)``, else the config's.

    Raises:
      UsageError: naming the flag.
    """
    if seeds is not None:
        if num_seeds is not None:
            raise errors.UsageError("--seeds and --num_seeds: give one of them, not both")
        try:
            out = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise errors.UsageError(
                f"--seeds={seeds}: must be comma-separated integers, e.g. 3,7"
            ) from None
        if not out:
            raise errors.UsageError(f"--seeds={seeds}: no seed ids, e.g. 3,7")
        if len(set(out)) != len(out) or any(s < 0 for s in out):
            raise errors.UsageError(f"--seeds={seeds}: must be distinct non-negative integers")
        return out
    if num_seeds is not None:
        if num_seeds < 1:
            raise errors.UsageError(f"--num_seeds={num_seeds}: must be >= 1")
        return list(range(num_seeds))
    if isinstance(default, bool) or not isinstance(default, int) or default < 1:
        raise errors.UsageError(f"config.num_seeds={default!r}: must be an integer >= 1")
    return list(range(default))


class SeedLayout:
    """Where the seed axis lives: a 1-D device mesh with axis ``seed``, and its chunking.

    Seeds are padded to a multiple of ``shards * max(chunk, 1)`` and laid out in contiguous
    blocks, one per device (``NamedSharding(mesh, P('seed'))``); the data are replicated. With
    ``chunk > 0`` each device runs its block ``chunk`` seeds at a time.

    Args:
      devices: the devices to shard seeds over (default: all of ``jax.devices()``).
      chunk: seeds per device per chunk (``train.seed_chunk``; 0 = the whole block at once).
    """

    def __init__(self, devices=None, chunk: int = 0):
        devices = list(devices if devices is not None else jax.devices())
        self.mesh = Mesh(np.asarray(devices), ("seed",))
        self.shards = len(devices)
        self.chunk = int(chunk)
        self.seeds = NamedSharding(self.mesh, P("seed"))
        self.replicated = NamedSharding(self.mesh, P())

    def padded(self, num_seeds: int) -> int:
        """The seed count after padding."""
        multiple = self.shards * max(self.chunk, 1)
        return -(-num_seeds // multiple) * multiple


def over_seeds(fn: Callable, chunk: int, layout: SeedLayout | None = None) -> Callable:
    """Lifts a per-seed ``fn(state, *shared)`` to a seed-stacked first argument.

    The seed axis is vmapped; with ``0 < chunk < seeds per shard`` every shard's seeds are split
    into chunks of ``chunk`` that run one after another (``lax.map``), so only one chunk's
    activations are live per device. Seeds per shard must then be a multiple of ``chunk`` (the
    sweep pads). With a ``layout`` of several devices, chunk ``c`` holds seeds
    ``c*chunk .. (c+1)*chunk - 1`` of every device's block, so no seed leaves its device.
    """
    shards = layout.shards if layout is not None else 1

    def constrain(x, spec):
        if layout is None or shards == 1:
            return x
        return lax.with_sharding_constraint(x, NamedSharding(layout.mesh, spec))

    def run(states, *shared):
        batched = jax.vmap(lambda s: fn(s, *shared))
        num = jax.tree_util.tree_leaves(states)[0].shape[0]
        local = num // shards
        if chunk <= 0 or chunk >= local:
            return batched(states)
        steps = local // chunk

        def to_chunks(x):  # (num, ...) -> (steps, shards * chunk, ...)
            x = x.reshape((shards, steps, chunk) + x.shape[1:]).swapaxes(0, 1)
            return constrain(x.reshape((steps, shards * chunk) + x.shape[3:]), P(None, "seed"))

        def from_chunks(x):  # inverse of to_chunks
            x = x.reshape((steps, shards, chunk) + x.shape[2:]).swapaxes(0, 1)
            return constrain(x.reshape((num,) + x.shape[3:]), P("seed"))

        out = lax.map(batched, jax.tree_util.tree_map(to_chunks, states))
        return jax.tree_util.tree_map(from_chunks, out)

    return run


class SweepFns:
    """The jitted, seed-stacked functions of a sweep; each compiles once per input shape.

    Every output has a leading seed axis and stays sharded over ``layout``'s ``seed`` axis.
    """

    def __init__(self, trainer: Trainer, layout: SeedLayout, steps_per_call: int):
        spe = trainer.steps_per_epoch
        self.layout = layout
        self.call_lengths = _call_lengths(spe, steps_per_call)

        def seeded(fn, **kwargs):
            return jax.jit(
                over_seeds(fn, layout.chunk, layout), out_shardings=layout.seeds, **kwargs
            )

        self.init = seeded(trainer.init)
        self.train = {
            length: seeded(functools.partial(trainer.train_steps, length=length), donate_argnums=0)
            for length in sorted(set(self.call_lengths))
        }
        self.evaluate = seeded(trainer.evaluate)
        self.evaluate_final = seeded(trainer.evaluate_final)
        self.evaluate_final_no_smoothing = (
            seeded(trainer.evaluate_final_no_smoothing)
            if trainer.evaluate_final_no_smoothing is not None
            else None
        )
        self.predict = jax.jit(trainer.predict)


def _call_lengths(steps_per_epoch: int, steps_per_call: int) -> list[int]:
    if steps_per_call <= 0 or steps_per_call >= steps_per_epoch:
        return [steps_per_epoch]
    full, rest = divmod(steps_per_epoch, steps_per_call)
    return [steps_per_call] * full + ([rest] if rest else [])


def _pad_seeds(keys: np.ndarray, total: int) -> np.ndarray:
    """Repeats the last key up to ``total`` rows (the extra seeds' results are dropped)."""
    extra = total - len(keys)
    return np.concatenate([keys, np.repeat(keys[-1:], extra, axis=0)]) if extra else keys


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _config_record(config: ml_collections.ConfigDict, seeds: list[int]) -> dict:
    record = json.loads(config.to_json())
    record["seeds"] = list(seeds)
    return record


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _holds_a_run(workdir: pathlib.Path) -> bool:
    """Whether anything was trained or logged in ``workdir`` (a checkpoint or a result file)."""
    ckpts = workdir / "checkpoints"
    trained = ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())
    logged = any((workdir / n).exists() for n in ("metrics.jsonl", "results.csv", "interrupted"))
    return trained or logged


def _check_workdir(workdir: pathlib.Path, record: dict) -> None:
    """Refuses to mix runs: a workdir holds one config and one seed list.

    A field the workdir's ``config.json`` does not have yet (added to the config after that run
    started) is accepted at its default value, so existing workdirs keep resuming. A workdir
    without any checkpoint or result (a start that failed) takes the new config.
    """
    path = workdir / "config.json"
    if workdir.exists() and not workdir.is_dir():
        raise errors.IOFailure(f"{workdir}: not a directory (--workdir)")
    if not path.exists() or not _holds_a_run(workdir):
        return
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise errors.IOFailure(
            f"{path}: unreadable ({errors.first_line(e)}); the workdir's run cannot be identified"
        ) from None
    old, new = _flatten(old), _flatten(record)
    defaults = _flatten(json.loads(get_base_config().to_json()))
    changed = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k)
        and not (k not in old and k in defaults and new.get(k) == defaults[k])
    )
    if changed:
        raise errors.UsageError(
            f"{path}: the workdir holds a run with different settings ({', '.join(changed)}); "
            "use a new --workdir or the original command"
        )


def dry_run(config: ml_collections.ConfigDict, num_seeds: int) -> dict:
    """Parameter count, FLOPs per seed-step and device memory, without data or training.

    Two ahead-of-time compilations: one seed's step (FLOPs and temporaries per seed-step), and
    the sweep's own program, seed-stacked and sharded over the visible devices exactly as
    :func:`run` lays it out, so a shape or sharding error shows here, before any data is read.
    ``estimated_device_bytes`` is that program's per-device footprint (arguments + outputs -
    donated + temporaries) plus a rough size of the resident data (the phantom's slice count at
    float32 image + uint8 mask per pixel).
    """
    size = config.data.image_size
    batch = config.train.batch_size
    trainer = make_train(config, num_train=batch)
    state = jax.eval_shape(trainer.init, seed_key(0, 0))
    params = count_params(state.params)
    split = {
        "images": jax.ShapeDtypeStruct((batch, size, size), jnp.float32),
        "masks": jax.ShapeDtypeStruct((batch, size, size), jnp.uint8),
        "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "valid": jax.ShapeDtypeStruct((batch,), bool),
    }
    weights = jax.ShapeDtypeStruct((config.model.num_classes,), jnp.float32)
    step = jax.jit(functools.partial(trainer.train_steps, length=1))
    compiled = step.lower(state, split, weights, 0, 0).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    mem = compiled.memory_analysis()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    temp = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0

    layout = SeedLayout(chunk=config.train.seed_chunk)
    padded = layout.padded(num_seeds)
    per_device = padded // layout.shards
    chunk = layout.chunk if 0 < layout.chunk < per_device else per_device

    def placed(tree, sharding):
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
        )

    key = seed_key(0, 0)
    keys = jax.ShapeDtypeStruct((padded,) + key.shape, key.dtype, sharding=layout.seeds)
    fns = SweepFns(trainer, layout, steps_per_call=1)
    states = placed(jax.eval_shape(fns.init, keys), layout.seeds)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=layout.replicated)
    swept = (
        fns.train[1]
        .lower(
            states,
            placed(split, layout.replicated),
            placed(weights, layout.replicated),
            scalar,
            scalar,
        )
        .compile()
        .memory_analysis()
    )
    program = 0
    if swept is not None:
        program = (
            swept.argument_size_in_bytes
            + swept.output_size_in_bytes
            - swept.alias_size_in_bytes
            + swept.temp_size_in_bytes
        )
    data_bytes = (
        config.data.phantom_volumes
        * (config.data.liver_slices + config.data.background_slices)
        * size
        * size
        * 5
    )
    return {
        "params": params,
        "flops_per_seed_step": flops,
        "state_bytes_per_seed": state_bytes,
        "temp_bytes_per_seed_step": temp,
        "devices": layout.shards,
        "padded_seeds": padded,
        "seeds_per_chunk": chunk,
        "program_bytes_per_device": program,
        "estimated_device_bytes": program + data_bytes,
    }


def run(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    seeds: Sequence[int],
    progress: bool = True,
    stop: errors.StopSignals | None = None,
) -> dict:
    """Trains ``seeds`` of ``config`` in ``workdir`` (resuming if it holds a checkpoint).

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
    validate.check_config(config)
    record = _config_record(config, seeds)
    _check_workdir(workdir, record)
    _check_writable(workdir)

    splits, data_description = dataset.load_dataset(config)
    sizes = {name: len(splits[name].labels) for name in SPLITS}
    validate.check_splits(config, sizes)
    print(f"DATA: {data_description}", file=sys.stderr, flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    io_utils.remove_orphans(workdir)
    io_utils.write_json(workdir / "config.json", record)
    weights = dataset.class_weights(splits["train"].masks, config.model.num_classes)
    host_data = {
        # One padded copy serves training (which draws only the real slices) and evaluation.
        "train": dataset.device_layout(splits["train"], config.eval.batch_size),
        "val": dataset.device_layout(splits["val"], config.eval.batch_size),
        "test": dataset.device_layout(splits["test"], config.eval.batch_size),
    }
    layout = SeedLayout(chunk=config.train.seed_chunk)
    data = jax.device_put(host_data, layout.replicated)
    class_weights = jax.device_put(weights, layout.replicated)

    trainer = make_train(config, num_train=len(splits["train"].labels))
    fns = SweepFns(trainer, layout, config.train.steps_per_call)
    num = len(seeds)
    keys = np.stack([np.asarray(seed_key(config.root_seed, s)) for s in seeds])
    keys = _pad_seeds(keys, layout.padded(num))
    states = fns.init(jax.device_put(keys, layout.seeds))
    if layout.shards > 1:
        print(
            f"DEVICES: {num} seeds (padded to {len(keys)}) over {layout.shards} devices "
            f"({jax.devices()[0].device_kind}), mesh axis 'seed'",
            file=sys.stderr,
            flush=True,
        )

    ckpt = checkpoint.Checkpointer(workdir)
    interrupted = checkpoint.InterruptedCheckpoint(workdir)
    jsonl = workdir / "metrics.jsonl"
    start, restored, resume = _resume(ckpt, interrupted, _take(states, num), jsonl)
    if restored is not None:
        states = jax.device_put(_pad_state(restored, len(keys)), layout.seeds)

    epochs = config.train.epochs
    final_evals = None
    spe = trainer.steps_per_epoch
    bar = tqdm(
        total=(epochs - start) * spe * num,
        unit="seed-step",
        unit_scale=True,
        disable=not progress,
        desc=f"{config.name} × {num} seeds",
        file=sys.stderr,
    )
    stop.deferring = True  # a signal from here on is honoured at the next safe point
    for epoch in range(start + 1, epochs + 1):
        loss_sum = jnp.zeros((len(keys),), jnp.float32)
        step0 = 0
        if resume is not None and epoch == start + 1:  # an epoch stopped part-way
            step0, loss_sum = resume[0], _pad_rows(resume[1], len(keys))
        for length in _remaining_calls(fns.call_lengths, step0):
            states, out = fns.train[length](
                states, data["train"], class_weights, jnp.int32(epoch), jnp.int32(step0)
            )
            loss_sum = loss_sum + out["loss_sum"]
            step0 += length
            out["loss_sum"].block_until_ready()
            bar.update(length * num)
            if stop.requested:
                loss = np.asarray(loss_sum)[:num]
                interrupted.save(epoch, step0, _take(states, num), loss)
                raise stop.stop(
                    f"checkpoint written in epoch {epoch} after step {step0} of {spe} "
                    f"({interrupted.directory}); rerun the same command to resume"
                )
        train_loss = np.asarray(loss_sum)[:num] / spe
        diverged = np.asarray(states.diverged)[:num]
        bar.set_postfix(
            epoch=epoch, loss=f"{np.nanmean(np.where(diverged, np.nan, train_loss)):.4f}"
        )
        if epoch == epochs:
            # The final evaluation is a superset of the per-epoch one: run it once, use it twice.
            final_evals = evals = _evaluate(fns.evaluate_final, states, data, class_weights, num)
        elif epoch % config.eval.every_epochs == 0:
            evals = _evaluate(fns.evaluate, states, data, class_weights, num)
        if epoch == epochs or epoch % config.eval.every_epochs == 0:
            results.append_jsonl(
                jsonl, results.epoch_records(epoch, seeds, train_loss, evals, diverged)
            )
        if diverged.any():
            logging.warning("epoch %d: diverged seeds %s", epoch, np.asarray(seeds)[diverged])
        ckpt.save(epoch, _take(states, num))
        interrupted.clear()
        if stop.requested:
            raise stop.stop(
                f"checkpoint of epoch {epoch} written; rerun the same command to resume"
            )
    stop.deferring = False
    bar.close()
    ckpt.close()

    out = _finish(
        config, workdir, seeds, states, data, class_weights, fns, data_description, final_evals
    )
    out["fns"] = fns
    return out


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _check_writable(workdir: pathlib.Path) -> None:
    """Fails early (before the data are read) if ``workdir`` cannot be created or written."""
    existing = workdir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise errors.IOFailure(f"{existing}: not a directory (--workdir={workdir})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise errors.IOFailure(f"{existing}: not writable (--workdir={workdir})")


def _resume(ckpt, interrupted, like, jsonl: pathlib.Path):
    """Where a workdir's run stands: (last complete epoch, its state or None, and the
    ``(step, loss_sum)`` of the epoch after it if a stopped run checkpointed it part-way)."""
    had = bool(ckpt.epochs())
    start, restored = ckpt.restore_latest(like, report=_warn)
    start = start or 0
    resume = None
    num = len(jax.tree_util.tree_leaves(like)[0])
    part = interrupted.load(start + 1, like, num, report=_warn)
    if part is not None:
        restored, resume = part[1], (part[0], part[2])
    if start or resume is not None:
        results.truncate_jsonl(jsonl, start)
        where = f"after epoch {start}"
        if resume is not None:
            where += f", in epoch {start + 1} after step {resume[0]}"
        logging.info("resuming %s %s", jsonl.parent, where)
        print(f"RESUME: {jsonl.parent} {where}", file=sys.stderr, flush=True)
    else:
        if had:
            _warn(f"{ckpt.directory}: no intact checkpoint left; training from the start")
        jsonl.unlink(missing_ok=True)
    return start, restored, resume


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
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[:num], states)


def _pad_state(states: TrainState, total: int) -> TrainState:
    def pad(x):
        x = jnp.asarray(x)
        extra = total - x.shape[0]
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if extra else x

    return jax.tree_util.tree_map(pad, states)


def _evaluate(evaluate, states, data, class_weights, num) -> dict:
    evals = {split: evaluate(states, data[split], class_weights) for split in SPLITS}
    return jax.tree_util.tree_map(lambda x: x[:num], _host(evals))


def _write_final(config, workdir, suffix, seeds, evals, diverged) -> dict:
    """final_stats{suffix}.npz and results{suffix}.csv from final evaluation sums; the table."""
    confusion = np.stack([np.asarray(evals[s]["confusion"], np.int64) for s in SPLITS], axis=1)
    cls_confusion = np.stack(
        [np.asarray(evals[s]["cls_confusion"], np.int64) for s in SPLITS], axis=1
    )
    hists = np.stack([np.asarray(evals[s]["histograms"], np.int64) for s in SPLITS], axis=1)
    io_utils.write_npz(
        workdir / f"final_stats{suffix}.npz",
        seeds=np.asarray(seeds, np.int64),
        splits=np.asarray(SPLITS),
        confusion=confusion,
        cls_confusion=cls_confusion,
        hist_liver=hists[:, :, 0],
        hist_background=hists[:, :, 1],
        bin_edges=np.linspace(0.0, 1.0, config.eval.score_bins + 1),
    )
    table = results.final_table(seeds, confusion, cls_confusion, diverged)
    io_utils.write_text(workdir / f"results{suffix}.csv", results.results_csv(seeds, table))
    return table


def _finish(
    config, workdir, seeds, states, data, class_weights, fns, data_description, evals=None
) -> dict:
    """Final result files; ``evals`` = the final evaluation if the last epoch already ran it."""
    num = len(seeds)
    diverged = np.asarray(states.diverged)[:num]
    if evals is None:  # a finished workdir re-run: evaluate the restored state
        evals = _evaluate(fns.evaluate_final, states, data, class_weights, num)
    table = _write_final(config, workdir, "", seeds, evals, diverged)
    summary = results.summary_markdown(config.name, seeds, table, diverged, data_description)
    if fns.evaluate_final_no_smoothing is not None:
        evals = _evaluate(fns.evaluate_final_no_smoothing, states, data, class_weights, num)
        table_ns = _write_final(config, workdir, "_no_smoothing", seeds, evals, diverged)
        summary += "\n" + results.summary_markdown(
            f"{config.name}, evaluated without the Gaussian smoothing (trained with it)",
            seeds,
            table_ns,
            diverged,
            data_description,
        )
    io_utils.write_text(workdir / "summary.md", summary)
    _write_examples(config, workdir, seeds, states, data, fns, table, diverged)
    device = jax.devices()[0]
    io_utils.write_json(
        workdir / "run.json",
        {
            "seeds": [int(s) for s in seeds],
            "diverged": [int(s) for s, d in zip(seeds, diverged, strict=True) if d],
            "epochs_completed": int(config.train.epochs),
            "num_epochs": int(config.train.epochs),
            "data": data_description,
            "device": f"{device.platform}:{device.device_kind}",
        },
    )
    return {"seeds": seeds, "diverged": diverged, "table": table, "summary": summary}


def _write_examples(config, workdir, seeds, states, data, fns, table, diverged) -> None:
    """Test slices with the liver score of the best / median / worst seed by validation MCC."""
    val_mcc = np.where(diverged, np.nan, table["val"]["mcc"])
    finite = np.flatnonzero(np.isfinite(val_mcc))
    if finite.size == 0:
        return
    order = finite[np.argsort(val_mcc[finite], kind="stable")]
    picks = [order[-1], order[len(order) // 2], order[0]]
    test = jax.tree_util.tree_map(np.asarray, data["test"])
    valid = np.flatnonzero(test["valid"])
    liver = [i for i in valid if test["labels"][i] == 1]
    background = [i for i in valid if test["labels"][i] == 0]
    half = config.eval.num_examples // 2
    chosen = np.asarray(
        (liver[:half] + background[: config.eval.num_examples - half])[: config.eval.num_examples]
    )
    images = test["images"][chosen]
    scores = []
    for row in picks:
        state = jax.tree_util.tree_map(lambda x, r=row: x[r], states)
        scores.append(np.asarray(fns.predict(state, jnp.asarray(images)), np.float16))
    io_utils.write_npz(
        workdir / "examples.npz",
        images=images,
        masks=test["masks"][chosen],
        seeds=np.asarray([seeds[r] for r in picks], np.int64),
        roles=np.asarray(["best", "median", "worst"]),
        scores=np.stack(scores),
        threshold=np.float32(config.cam.threshold if config.method == "cam_alpha" else 0.5),
    )


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (:variant).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", None, "Train seeds 0 .. N-1.")
_SEEDS = flags.DEFINE_string("seeds", None, "Train exactly these seeds, e.g. 3,7.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print params, FLOPs and memory, then exit.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_DEBUG = flags.DEFINE_bool("debug", False, "On an error, print its traceback too.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"{argv[1]}: unexpected argument (flags start with --)")
    # Orbax logs every save at INFO; keep the terminal for the progress bar and the summary.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _load_config()
    seeds = resolve_seeds(_NUM_SEEDS.value, _SEEDS.value, config.num_seeds)
    validate.check_config(config)  # before any compilation, the dry run's included
    if _DRY_RUN.value:
        info = dry_run(config, len(seeds))
        print(f"params: {info['params']}")
        print(f"flops_per_seed_step: {info['flops_per_seed_step']:.4g}")
        print(f"state_bytes_per_seed: {info['state_bytes_per_seed']}")
        print(f"temp_bytes_per_seed_step: {info['temp_bytes_per_seed_step']}")
        print(
            f"estimated_device_bytes: {info['estimated_device_bytes'] / 2**30:.2f} GiB per device "
            f"({len(seeds)} seeds padded to {info['padded_seeds']} over {info['devices']} "
            f"devices, {info['seeds_per_chunk']} per chunk; compiled sweep step "
            f"{info['program_bytes_per_device'] / 2**30:.2f} GiB + data)"
        )
        return
    if not _WORKDIR.value:
        raise errors.UsageError("--workdir is required")
    t0 = time.time()
    with errors.StopSignals() as stop:
        out = run(config, _WORKDIR.value, seeds, progress=_PROGRESS.value, stop=stop)
    print(out["summary"])
    print(f"wrote {_WORKDIR.value} in {time.time() - t0:.0f} s")


def _load_config() -> ml_collections.ConfigDict:
    try:
        config = _CONFIG.value
        if config is not None:
            config.get("num_seeds")  # a config that failed to load raises on first use
    except Exception as e:
        raise errors.UsageError(
            f"--config: cannot load the config file ({errors.last_line(e)})"
        ) from e
    if config is None:
        raise errors.UsageError("--config is required, e.g. --config configs/cam_beta.py")
    return config


def entry() -> None:
    app.run(errors.guarded(main, _DEBUG), flags_parser=errors.parse_absl_flags)


if __name__ == "__main__":
    entry()
