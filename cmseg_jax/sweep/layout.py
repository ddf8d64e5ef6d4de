"""Seeds on devices: the seed mesh, chunked vmap over seeds, the memory planner and the dry run.

The only module (with the rest of :mod:`cmseg_jax.sweep`) that knows about devices.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cmseg_jax import (
    cost,
    errors,
)
from cmseg_jax.data import dataset
from cmseg_jax.models.convmixerseg import count_params
from cmseg_jax.train import Trainer, make_train, seed_key

SPLITS = dataset.SPLITS


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

        # init((keys,)) or init((keys, hparams)): both are per seed-row.
        self.init = seeded(lambda args: trainer.init(*args))
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
    local = [d for d in devices if d.process_index == jax.process_index()] or list(devices)
    device = local[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind} memory"
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 0.5 * host / len(local), "half the host memory"


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
    states = placed(jax.eval_shape(fns.init, (keys,)), layout.seeds)
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
