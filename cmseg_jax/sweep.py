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

import dataclasses
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

from cmseg_jax import checkpoint, cost, errors, io_utils, results, validate
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


# Fields that change how a run is computed (memory layout, recomputation, call granularity,
# caching), not what it computes: a workdir may be resumed with other values.
EXECUTION_FIELDS = frozenset(
    {
        "model.remat",
        "model.decoder_chunk",
        "train.seed_chunk",
        "train.seed_layout",
        "train.memory_budget_gb",
        "train.steps_per_call",
        "train.compilation_cache",
    }
)


def _holds_a_run(workdir: pathlib.Path) -> bool:
    """Whether anything was trained or logged in ``workdir`` (a checkpoint or a result file)."""
    ckpts = workdir / "checkpoints"
    trained = ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())
    logged = any((workdir / n).exists() for n in ("metrics.jsonl", "results.csv", "interrupted"))
    return trained or logged


def _check_workdir(workdir: pathlib.Path, record: dict) -> None:
    """Refuses to mix runs: a workdir holds one config and one seed list.

    A field the workdir's ``config.json`` does not have yet (added to the config after that run
    started) is accepted at its default value, so existing workdirs keep resuming. Fields in
    :data:`EXECUTION_FIELDS` may differ. A workdir without any checkpoint or result (a start
    that failed) takes the new config.
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
        and k not in EXECUTION_FIELDS
        and not (k not in old and k in defaults and new.get(k) == defaults[k])
    )
    if changed:
        raise errors.UsageError(
            f"{path}: the workdir holds a run with different settings ({', '.join(changed)}); "
            "use a new --workdir or the original command"
        )


# Share of a device's memory the planned step and the resident data may take; the rest is for
# XLA's own workspace, fragmentation and the (smaller) evaluation programs.
HEADROOM = 0.9
# Slice count assumed by the dry run for LiTS (131 volumes) when no data are read.
LITS_VOLUMES = 131


def memory_budget(config: ml_collections.ConfigDict, devices: Sequence) -> tuple[float, str]:
    """Bytes per device to plan for, and where that figure comes from."""
    gb = float(config.train.memory_budget_gb)
    if gb < 0:
        raise errors.UsageError(f"train.memory_budget_gb must be >= 0, got {gb:g}")
    if gb > 0:
        return gb * 2**30, f"train.memory_budget_gb={gb:g}"
    device = devices[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind} memory"
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 0.5 * host / len(devices), "half the host memory"


def estimated_data_bytes(config: ml_collections.ConfigDict) -> int:
    """Resident data of a run before any is read: every slice at 3 bytes a pixel (int16 image,
    uint8 mask), for the phantom's volumes or LiTS' 131."""
    d = config.data
    volumes = d.phantom_volumes if d.source == "phantom" else LITS_VOLUMES
    return volumes * (d.liver_slices + d.background_slices) * d.image_size**2 * 3


def _batch_split(config: ml_collections.ConfigDict) -> dict:
    size, batch = config.data.image_size, config.train.batch_size
    return {
        "images": jax.ShapeDtypeStruct((batch, size, size), jnp.int16),
        "masks": jax.ShapeDtypeStruct((batch, size, size), jnp.uint8),
        "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "valid": jax.ShapeDtypeStruct((batch,), bool),
    }


def step_bytes(config: ml_collections.ConfigDict, trainer: Trainer, layout: SeedLayout, n: int):
    """Per-device bytes of the sweep's compiled training step for ``n`` seeds laid out by
    ``layout`` (XLA's memory analysis: arguments + outputs - donated + temporaries), compiled
    ahead of time on one batch of abstract data."""

    def placed(tree, sharding):
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
        )

    key = seed_key(0, 0)
    keys = jax.ShapeDtypeStruct((n,) + key.shape, key.dtype, sharding=layout.seeds)
    fns = SweepFns(trainer, layout, steps_per_call=1)
    states = placed(jax.eval_shape(fns.init, keys), layout.seeds)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=layout.replicated)
    weights = jax.ShapeDtypeStruct((config.model.num_classes,), jnp.float32)
    mem = (
        fns.train[1]
        .lower(
            states,
            placed(_batch_split(config), layout.replicated),
            placed(weights, layout.replicated),
            scalar,
            scalar,
        )
        .compile()
        .memory_analysis()
    )
    if mem is None:
        return 0
    return (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """A sweep's seed layout and its memory.

    Attributes:
      layout: the mesh and the chunk size.
      mode: 'vmap' (largest chunk that fits), 'map' (one seed per chunk) or 'explicit'
        (``train.seed_chunk`` given).
      padded: seeds after padding.
      program_bytes: per-device bytes of the compiled training step.
      data_bytes: per-device bytes of the resident data.
      budget: per-device bytes planned for, and ``budget_source`` where that figure comes from.
    """

    layout: SeedLayout
    mode: str
    padded: int
    program_bytes: int
    data_bytes: int
    budget: float
    budget_source: str

    @property
    def per_device(self) -> int:
        return self.padded // self.layout.shards

    @property
    def chunk(self) -> int:
        return self.layout.chunk if 0 < self.layout.chunk < self.per_device else self.per_device

    def describe(self, num_seeds: int) -> str:
        gib = 2**30
        chunks = self.per_device // self.chunk
        how = "one vmap" if chunks == 1 else f"lax.map over {chunks} chunks"
        step = f"{self.program_bytes / gib:.2f} GiB" if self.program_bytes else "not measured"
        return (
            f"{num_seeds} seeds (padded to {self.padded}) over {self.layout.shards} device(s), "
            f"{self.chunk} per chunk ({how}; {self.mode}); per device: step {step} + data "
            f"{self.data_bytes / gib:.2f} GiB of {self.budget / gib:.2f} GiB ({self.budget_source})"
        )


def plan_layout(
    config: ml_collections.ConfigDict,
    trainer: Trainer,
    num_seeds: int,
    data_bytes: int,
    devices: Sequence | None = None,
    measure_fixed: bool = True,
) -> Plan:
    """Chooses how many seeds each device vmaps at once.

    An explicit ``train.seed_chunk`` is taken as given. Otherwise ``train.seed_layout`` decides:
    'map' runs one seed per chunk; 'vmap' compiles the step for chunks of 1 and 2 seeds, reads
    the per-seed growth of XLA's memory analysis, takes the largest chunk that fits
    ``HEADROOM`` of the budget next to the data, balances the chunks (48 seeds that fit 13 at a
    time run as 4 chunks of 12, not 13 + 13 + 13 + 9 padded) and checks that chunk by compiling
    it. 'auto' is 'map' on a CPU planned with no explicit budget and 'vmap' otherwise. A chunk
    fixed without measuring (explicit, or 'map') is compiled for its memory only with
    ``measure_fixed``; otherwise ``program_bytes`` is 0 (not measured).

    Raises:
      ValueError: one seed does not fit the budget, or an unknown ``train.seed_layout``.
    """
    devices = list(devices if devices is not None else jax.devices())
    budget, source = memory_budget(config, devices)
    shards = len(devices)
    local = -(-num_seeds // shards)

    def measure(chunk):
        layout = SeedLayout(devices, chunk)
        padded = layout.padded(num_seeds)
        return layout, padded, step_bytes(config, trainer, layout, padded)

    mode, chunk = "explicit", int(config.train.seed_chunk)
    if chunk <= 0:
        mode = config.train.seed_layout
        if mode == "auto":
            planning_a_cpu = devices[0].platform == "cpu" and config.train.memory_budget_gb <= 0
            mode = "map" if planning_a_cpu else "vmap"
        if mode not in ("vmap", "map"):
            raise errors.UsageError(
                "train.seed_layout must be 'auto', 'vmap' or 'map', "
                f"got {config.train.seed_layout!r}"
            )
        chunk = 1 if mode == "map" or local == 1 else 0
    if chunk == 0:
        limit = budget * HEADROOM - data_bytes
        _, _, one = measure(1)
        _, _, two = measure(2)
        fit = 1 + int((limit - one) // max(two - one, 1))
        fit = max(1, min(local, fit))
        chunk = -(-local // -(-local // fit))
        layout, padded, program = measure(chunk)
        while chunk > 1 and program + data_bytes > limit:
            chunk -= 1
            layout, padded, program = measure(chunk)
    elif measure_fixed:
        layout, padded, program = measure(chunk)
    else:
        layout = SeedLayout(devices, chunk)
        padded, program = layout.padded(num_seeds), 0
    if program + data_bytes > budget:
        raise errors.UsageError(
            f"the training step needs {program / 2**30:.2f} GiB + {data_bytes / 2**30:.2f} GiB of "
            f"data per device with {layout.chunk or local} seed(s) per chunk, more than the "
            f"{budget / 2**30:.2f} GiB budget ({source}); try --config.model.dtype=bfloat16, "
            "--config.model.decoder_chunk=1, --config.model.remat=true or a smaller "
            "--config.train.batch_size"
        )
    return Plan(layout, mode, padded, program, data_bytes, budget, source)


def dry_run(
    config: ml_collections.ConfigDict,
    num_seeds: int,
    report: Callable[[dict], None] | None = None,
) -> dict:
    """Parameter count, FLOPs per seed-step, the seed layout and device memory, without data.

    Compiles one seed's step (temporaries per seed-step) and the sweep's own step as
    :func:`plan_layout` lays it out (seed-stacked, chunked and sharded over the visible devices),
    so a shape or sharding error shows here, before any data is read. ``estimated_device_bytes``
    is that program's per-device footprint plus the resident data (:func:`estimated_data_bytes`).
    ``report`` receives the per-seed figures before the layout is planned (planning raises when
    one seed does not fit the budget).
    """
    trainer = make_train(config, num_train=config.train.batch_size)
    state = jax.eval_shape(trainer.init, seed_key(0, 0))
    params = count_params(state.params)
    weights = jax.ShapeDtypeStruct((config.model.num_classes,), jnp.float32)
    step = jax.jit(functools.partial(trainer.train_steps, length=1))
    compiled = step.lower(state, _batch_split(config), weights, 0, 0).compile()
    mem = compiled.memory_analysis()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    temp = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
    step_cost = cost.step_cost(config, lambda: compiled)
    info = {
        "params": params,
        "flops_per_seed_step": step_cost["flops"],
        "bytes_per_seed_step": step_cost["bytes"],
        "cost_source": step_cost["source"],
        "state_bytes_per_seed": state_bytes,
        "temp_bytes_per_seed_step": temp,
    }
    if report is not None:
        report(info)
    plan = plan_layout(config, trainer, num_seeds, estimated_data_bytes(config))
    return info | {
        "devices": plan.layout.shards,
        "padded_seeds": plan.padded,
        "seeds_per_chunk": plan.chunk,
        "program_bytes_per_device": plan.program_bytes,
        "estimated_device_bytes": plan.program_bytes + plan.data_bytes,
        "plan": plan,
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
    trainer = make_train(config, num_train=len(splits["train"].labels))
    num = len(seeds)
    resident = sum(x.nbytes for x in jax.tree_util.tree_leaves(host_data))
    # A fixed chunk is not compiled twice: XLA names an out-of-memory chunk when it runs.
    plan = plan_layout(config, trainer, num, resident, measure_fixed=False)
    print(f"LAYOUT: {plan.describe(num)}", file=sys.stderr, flush=True)
    layout = plan.layout
    data = jax.device_put(host_data, layout.replicated)
    class_weights = jax.device_put(weights, layout.replicated)
    fns = SweepFns(trainer, layout, config.train.steps_per_call)
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
    images = dataset.decode_images(test["images"][chosen])
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


def enable_compilation_cache(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache (``train.compilation_cache``); its folder."""
    if not config.train.compilation_cache:
        return None
    root = pathlib.Path(config.data.cache_dir) if config.data.cache_dir else None
    path = (root or dataset.default_cache_root()) / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"{argv[1]}: unexpected argument (flags start with --)")
    # Orbax logs every save at INFO; keep the terminal for the progress bar and the summary.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _load_config()
    seeds = resolve_seeds(_NUM_SEEDS.value, _SEEDS.value, config.num_seeds)
    validate.check_config(config)  # before any compilation, the dry run's included
    enable_compilation_cache(config)
    if _DRY_RUN.value:
        info = dry_run(config, len(seeds), report=_print_seed_step)
        print(f"layout: {info['plan'].describe(len(seeds))}")
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


def _print_seed_step(info: dict) -> None:
    print(f"params: {info['params']}")
    print(f"flops_per_seed_step: {info['flops_per_seed_step']:.4g}")
    print(f"bytes_per_seed_step: {info['bytes_per_seed_step']:.4g}")
    print(f"cost_source: {info['cost_source']}")
    print(f"state_bytes_per_seed: {info['state_bytes_per_seed']}")
    print(f"temp_bytes_per_seed_step: {info['temp_bytes_per_seed_step']}", flush=True)


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
