"""The memory planner and the dry run: how many seeds each device runs at once, decided by the
compiler of the device that will run them (or of ``train.target``'s, deviceless).

Every figure is XLA's memory analysis of the sweep's own compiled training step (seed-stacked,
chunked and sharded as it will run): arguments + outputs - donated + temporaries, per device. A
compile the device's memory cannot hold (XLA's ``RESOURCE_EXHAUSTED``) means "does not fit".
These are facts about memory; the roofline floor printed beside them comes from datasheet peaks
and the analytic cost model, and is not a measured time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from cmseg_jax import cost, errors
from cmseg_jax.config_base import with_fields
from cmseg_jax.data import sources
from cmseg_jax.models import registry
from cmseg_jax.models.common import count_params
from cmseg_jax.sweep import ensemble as ensemble_lib
from cmseg_jax.sweep import targets
from cmseg_jax.sweep.layout import SeedLayout, SweepFns
from cmseg_jax.train import Trainer, make_train, seed_key

# Share of a device's memory the planned step and the resident data may take; the rest is for
# XLA's own workspace, fragmentation and the (smaller) evaluation programs.
HEADROOM = 0.9


def target_of(config: ml_collections.ConfigDict) -> targets.Target | None:
    """``train.target``'s record, or None for the visible devices."""
    name = config.train.get("target", "")
    return targets.get(name) if name else None


def plan_devices(config: ml_collections.ConfigDict) -> list:
    """The devices a plan compiles for: one of ``train.target`` (deviceless), else all visible."""
    target = target_of(config)
    return targets.devices(target) if target is not None else list(jax.devices())


def running_on_target(config: ml_collections.ConfigDict) -> None:
    """A real run with ``train.target`` set must run on that device.

    Raises:
      UsageError: the visible device is another kind (plan for it with ``--dry_run``).
    """
    target = target_of(config)
    if target is None:
        return
    device = jax.devices()[0]
    if device.device_kind != target.device_kind:
        raise errors.UsageError(
            f"train.target={target.name!r}: this run would train on {device.platform}:"
            f"{device.device_kind}, not {target.device_kind}; plan for it with --dry_run, or "
            "leave train.target unset to train here"
        )


def specialise(config: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
    """``config`` with its platform-dependent choices made for ``platform``: the depthwise conv's
    'auto' becomes 'shift' on a CPU and 'conv' elsewhere (``models/depthwise.py``), so a plan made
    on one machine for another compiles what the other will run."""
    own = registry.own(config)
    if own.get("depthwise_impl") != "auto":  # set, or a network without that choice
        return config
    out = config.copy_and_resolve_references()
    with out.unlocked():
        registry.own(out).depthwise_impl = "shift" if platform == "cpu" else "conv"
    return out


def memory_budget(
    config: ml_collections.ConfigDict, devices: Sequence, target: targets.Target | None = None
) -> tuple[float, str]:
    """Bytes per device to plan for, and where that figure comes from."""
    gb = float(config.train.memory_budget_gb)
    if gb < 0:
        raise errors.UsageError(f"train.memory_budget_gb must be >= 0, got {gb:g}")
    if gb > 0:
        return gb * 2**30, f"train.memory_budget_gb={gb:g}"
    if target is not None:
        return float(target.memory_bytes), f"{target.device_kind} memory"
    local = [d for d in devices if d.process_index == jax.process_index()] or list(devices)
    device = local[0]
    try:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    except Exception:  # a device that is not addressable from here
        stats = None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind} memory"
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 0.5 * host / len(local), "half the host memory"


def estimated_data_bytes(config: ml_collections.ConfigDict) -> int:
    """Resident data of a run before any is read: every slice at 3 bytes a pixel (int16 image,
    uint8 mask), for as many volumes as the data source plans for (the phantom's, LiTS' 131)."""
    d = config.data
    volumes = sources.of(config).volumes(config)
    return volumes * (d.liver_slices + d.background_slices) * d.image_size**2 * 3


def _batch_split(config: ml_collections.ConfigDict) -> dict:
    size, batch = config.data.image_size, config.train.batch_size
    return {
        "images": jax.ShapeDtypeStruct((batch, size, size), jnp.int16),
        "masks": jax.ShapeDtypeStruct((batch, size, size), jnp.uint8),
        "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "valid": jax.ShapeDtypeStruct((batch,), bool),
    }


class DoesNotFit(Exception):
    """XLA refused the program for want of device memory; ``detail`` is its own figure."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class CompileFailed(DoesNotFit):
    """XLA failed to compile the program for another reason than memory (an internal error of
    the compiler, such as XLA:GPU's "Couldn't find output tile sizes" for FCN-ResNet-50's
    vmapped bilinear resize): the planner cannot run it, so it counts as not fitting and the
    plan names it."""


_EXHAUSTED = re.compile(r"Used ([\d.]+\w?) of ([\d.]+\w?) (\w+)")


def compile_for_memory(lowered, quiet: bool = False):
    """Compiles ``lowered``; XLA's out-of-memory refusal becomes :class:`DoesNotFit`, any other
    failure of the compiler :class:`CompileFailed` (its first line, shortened)."""
    try:
        return targets.compile_quietly(lowered) if quiet else lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            line = errors.first_line(e)
            raise CompileFailed(
                f"the compiler failed: {line[:120]}{'…' if len(line) > 120 else ''}"
            ) from None
        found = _EXHAUSTED.search(text)
        detail = f"uses {found[1]} of {found[2]} {found[3]}" if found else errors.first_line(e)
        raise DoesNotFit(detail) from None


def _footprint(mem, platform: str = "") -> int:
    """A compiled program's device bytes from XLA's memory analysis.

    On XLA:TPU its own peak (``peak_memory_in_bytes``: arguments, outputs and the temporaries live
    at the worst moment). Its ``temp_size_in_bytes`` adds up temporaries that are never live
    together: the thesis step for 8 seeds on a v5e has 20.6 GB of them, more than the chip's
    17.2 GB, and XLA:TPU compiles it (it refuses programs that do not fit) with a peak of 15.2 GB.
    Elsewhere arguments + outputs - donated + temporaries (XLA:CPU's peak leaves out temporaries;
    XLA:GPU's equals the sum on small programs, and the sum is the safer of the two).
    """
    if mem is None:
        return 0
    peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    if platform == "tpu" and peak > 0:
        return peak
    return (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )


def _placed(tree, sharding):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
    )


def step_bytes(
    config: ml_collections.ConfigDict,
    trainer: Trainer,
    layout: SeedLayout,
    n: int,
    quiet: bool = False,
) -> int:
    """Per-device bytes of the sweep's compiled training step for ``n`` seeds laid out by
    ``layout`` (XLA's memory analysis, :func:`_footprint`: its own peak on a TPU, arguments +
    outputs - donated + temporaries elsewhere), compiled ahead of time on one batch of abstract
    data for ``layout``'s devices.

    Raises:
      DoesNotFit: the device's compiler refused the program for want of memory.
    """
    key = seed_key(0, 0)
    keys = jax.ShapeDtypeStruct((n,) + key.shape, key.dtype, sharding=layout.seeds)
    fns = SweepFns(trainer, layout, steps_per_call=1)
    states = _placed(jax.eval_shape(fns.init, (keys,)), layout.seeds)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=layout.replicated)
    weights = jax.ShapeDtypeStruct((config.model.num_classes,), jnp.float32)
    lowered = fns.train[1].lower(
        states,
        _placed(_batch_split(config), layout.replicated),
        _placed(weights, layout.replicated),
        scalar,
        scalar,
    )
    platform = layout.mesh.devices.flat[0].platform
    return _footprint(compile_for_memory(lowered, quiet).memory_analysis(), platform)


def ensemble_bytes(
    config: ml_collections.ConfigDict, trainer: Trainer, layout: SeedLayout, n: int, quiet=False
) -> int:
    """Per-device bytes the ensemble pass (:mod:`cmseg_jax.sweep.ensemble`) needs beyond the
    seeds' states and the data already resident: the footprint of the compiled pass
    (:func:`_footprint`: XLA:TPU's peak on a TPU, the sum of its parts elsewhere) less its
    arguments, for ``n`` seed rows laid out by ``layout``, on splits of one evaluation batch
    each (its working set does not grow with the split). Memory, not time.

    Raises:
      DoesNotFit: the device's compiler refused the program for want of memory.
    """
    key = seed_key(0, 0)
    keys = jax.ShapeDtypeStruct((n,) + key.shape, key.dtype, sharding=layout.seeds)
    init = SweepFns(trainer, layout, steps_per_call=1).init
    states = _placed(jax.eval_shape(init, (keys,)), layout.seeds).replace(opt_state=None)
    split = _placed(
        _batch_split(with_fields(config, {"train.batch_size": config.eval.batch_size})),
        layout.replicated,
    )
    fn = ensemble_lib.make_evaluate(
        trainer.ensemble["default"],
        trainer.ensemble_stats,
        layout,
        eval_batch=config.eval.batch_size,
        seeds_per_group=n,
    )
    weights = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=layout.replicated)
    lowered = fn.lower(states, {name: split for name in ("train", "val", "test")}, weights)
    mem = compile_for_memory(lowered, quiet).memory_analysis()
    if mem is None:
        return 0
    platform = layout.mesh.devices.flat[0].platform
    return max(_footprint(mem, platform) - mem.argument_size_in_bytes, 0)


def balanced_chunks(local: int) -> list[int]:
    """Chunk sizes that split ``local`` seeds into equal chunks with the least padding: for each
    number of chunks k, ceil(local / k) (48 seeds: 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 48)."""
    return sorted({-(-local // k) for k in range(1, local + 1)})


def least_padding(fitting: list[int], local: int) -> int:
    """Of the chunk sizes that fit (ascending, the widest last), the one that pads ``local`` seeds
    least, from half the widest up (ties: the wider): 48 seeds that fit 10 run as 6 × 8, not
    5 × 10 padded to 50, and a prime count is not pushed down to one seed per chunk."""
    widest = fitting[-1]
    near = [c for c in fitting if 2 * c >= widest]
    return min(near, key=lambda c: (-(-local // c) * c, -c))


def roofline(config: ml_collections.ConfigDict, target: targets.Target | None, chunk: int) -> str:
    """The floor of one chunk-step on ``target`` from datasheet peaks (not a measured time)."""
    if target is None or not registry.of(config).analytic_cost:
        return ""
    flops = cost.train_step_flops(config) * chunk
    moved = cost.train_step_bytes(config) * chunk
    t_flops = flops / target.peak(config.model.dtype)
    t_bytes = moved / target.bandwidth
    bound = "compute" if t_flops >= t_bytes else "bandwidth"
    return (
        f"roofline floor {max(t_flops, t_bytes) * 1e3:.1f} ms per chunk-step ({flops / 1e12:.1f} "
        f"TFLOP at {target.peak(config.model.dtype) / 1e12:.0f} TFLOP/s, {moved / 1e9:.1f} GB at "
        f"{target.bandwidth / 1e9:.0f} GB/s: {bound}-bound, datasheet peaks, not a measured time)"
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
      compiler: whose memory analysis it is (the device kind and the compiler).
      execution: the model fields the plan set (``model.remat``,
        ``model.convmixerseg.remat_group``, ``model.convmixerseg.decoder_chunk``) where
        a cheaper execution fits the same chunk; empty when the config's own is kept.
      reason: why this width (the roofline floor of a chunk on the target).
      measured: {seeds per chunk: compiled bytes per device (inf: refused)} of every chunk the
        search compiled with the config's own execution.
      held_by_data: the widest chunk the search compiled that fits the budget's share without
        the resident data but not beside them (0: none; the data do not hold the plan back).
      failed: {seeds per chunk: why} of the chunks the compiler failed on for another reason
        than memory (:class:`CompileFailed`), counted as not fitting.
    """

    layout: SeedLayout
    mode: str
    padded: int
    program_bytes: int
    data_bytes: int
    budget: float
    budget_source: str
    compiler: str = ""
    execution: dict = dataclasses.field(default_factory=dict)
    reason: str = ""
    measured: dict = dataclasses.field(default_factory=dict)
    held_by_data: int = 0
    failed: dict = dataclasses.field(default_factory=dict)

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
        text = (
            f"{num_seeds} seeds (padded to {self.padded}) over {self.layout.shards} device(s), "
            f"{self.chunk} per chunk ({how}; {self.mode}); per device: step {step} + data "
            f"{self.data_bytes / gib:.2f} GiB of {self.budget / gib:.2f} GiB ({self.budget_source})"
        )
        if self.compiler:
            text += f"; compiled by {self.compiler}"
        if self.execution:
            text += "; execution " + ", ".join(f"{k}={v}" for k, v in self.execution.items())
        if self.failed:
            text += "; " + "; ".join(
                f"{c} per chunk counted as not fitting ({why})" for c, why in self.failed.items()
            )
        if self.held_by_data:
            text += (
                f"; the resident data hold the chunk back: {self.held_by_data} per chunk "
                f"compiled to {self.measured[self.held_by_data] / gib:.2f} GiB, which fits "
                "without them and not beside them"
            )
        return text + (f"; {self.reason}" if self.reason else "")


# Fields the plan may change on an accelerator (execution only: the same function).
def _executions(config: ml_collections.ConfigDict) -> list[dict]:
    """Cheaper executions than the config's own, fewest FLOPs per seed-step first."""
    if not registry.of(config).executions:
        return []
    own = cost.train_step_flops(config)
    out = []
    remat_field, group_field, chunk_field = registry.CONVMIXERSEG.executions
    own_group = int(config.model.convmixerseg.remat_group)
    for remat, group in ((False, own_group), (True, 0), (True, own_group)):
        for chunk in (0, int(config.model.convmixerseg.decoder_chunk)):
            change = {remat_field: remat, group_field: group, chunk_field: chunk}
            flops = cost.train_step_flops(with_fields(config, change))
            if flops < own:  # the config's own execution costs exactly ``own``
                out.append((flops, change))
    return [change for _, change in sorted(out, key=lambda fc: fc[0])]


def _refusal(config: ml_collections.ConfigDict, where: str, detail: str) -> errors.UsageError:
    """The one line of a plan that does not fit, with the fields that would need less memory."""
    own = registry.MODELS[config.model.get("arch", "convmixerseg")]  # checked by validate
    savers = {"model.dtype": "bfloat16", "model.remat": True, **own.savers}
    tries = [
        f"--config.{field}={str(value).lower() if isinstance(value, bool) else value}"
        for field, value in savers.items()
        if config[field] != value  # a ConfigDict reads a dotted key
    ]
    tries += ["a smaller --config.train.batch_size", "--config.train.seed_chunk"]
    return errors.UsageError(f"{where}: {detail}; try {', '.join(tries[:-1])} or {tries[-1]}")


def plan_layout(
    config: ml_collections.ConfigDict,
    trainer: Trainer,
    num_seeds: int,
    data_bytes: int,
    devices: Sequence | None = None,
    measure_fixed: bool = True,
    make_trainer: Callable[[ml_collections.ConfigDict], Trainer] | None = None,
    target: targets.Target | None = None,
) -> Plan:
    """Chooses how many seeds each device vmaps at once.

    An explicit ``train.seed_chunk`` is taken as given. Otherwise ``train.seed_layout`` decides:
    'map' runs one seed per chunk; 'vmap' searches the balanced chunkings of the seeds
    (:func:`balanced_chunks`: 48 seeds that fit 40 at a time run as 2 × 24, never padded to 80)
    by bisection, compiling each candidate exactly as it will run (the chunked loop over all
    seeds' stacked states) and keeping the widest whose footprint fits ``HEADROOM`` of the budget
    next to the data; a compile XLA refuses for memory does not fit. 'auto' is 'map' on a CPU
    planned with no explicit budget and 'vmap' otherwise.

    On an accelerator, with ``make_trainer`` and ``train.plan_execution``, a cheaper execution
    (``model.remat`` off or one level, ``model.convmixerseg.decoder_chunk = 0``: fewer FLOPs
    per seed-step, the same function) replaces the config's own when it fits the same chunk:
    memory is the gate, FLOPs decide.

    A chunk fixed without measuring (explicit, or 'map') is compiled for its memory only with
    ``measure_fixed``; otherwise ``program_bytes`` is 0 (not measured). ``devices`` default to the
    visible ones; with ``target`` they are that target's (:func:`plan_devices`), compiled for
    deviceless, and its memory is the budget.

    Raises:
      UsageError: one line naming the device, the bytes and the fields to change, when one seed
        (or the explicit chunk) does not fit; an unknown ``train.seed_layout``.
    """
    devices = list(devices if devices is not None else jax.devices())
    budget, source = memory_budget(config, devices, target)
    shards = len(devices)
    local = -(-num_seeds // shards)
    platform = devices[0].platform
    quiet = target is not None
    compiler = target.compiler if target else ""
    where = (
        f"train.target={target.name!r} ({target.device_kind}, {target.compiler})"
        if target
        else f"{devices[0].device_kind} ({platform})"
    )
    limit = budget * HEADROOM  # for the step and the resident data together
    sizes: dict = {}
    failed: dict = {}

    def measure(chunk, cfg=config, tr=trainer, key=()):
        if (chunk, key) not in sizes:
            layout = SeedLayout(devices, chunk)
            padded = layout.padded(num_seeds)
            try:
                program, refusal = step_bytes(cfg, tr, layout, padded, quiet=quiet), ""
            except CompileFailed as e:
                program, refusal = math.inf, e.detail
                if key == ():
                    failed[chunk] = e.detail
            except DoesNotFit as e:
                program, refusal = math.inf, e.detail
            sizes[chunk, key] = (layout, padded, program, refusal)
        return sizes[chunk, key][:3]

    def fits(chunk, **kwargs):
        return measure(chunk, **kwargs)[2] + data_bytes <= limit

    mode, chunk = "explicit", int(config.train.seed_chunk)
    if chunk <= 0:
        mode = config.train.seed_layout
        if mode == "auto":
            planning_a_cpu = platform == "cpu" and config.train.memory_budget_gb <= 0
            mode = "map" if planning_a_cpu else "vmap"
        if mode not in ("vmap", "map"):
            raise errors.UsageError(
                "train.seed_layout must be 'auto', 'vmap' or 'map', "
                f"got {config.train.seed_layout!r}"
            )
        chunk = 1 if mode == "map" or local == 1 else 0
    if chunk == 0:
        options = balanced_chunks(local)
        if fits(options[-1]):
            chunk = options[-1]
        elif not fits(1):
            chunk = 1
        else:
            lo, hi = 0, len(options) - 1  # options[lo] fits, options[hi] does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fits(options[mid]) else (lo, mid)
            chunk = least_padding(options[: lo + 1], local)
    if chunk and (measure_fixed or mode == "vmap"):
        layout, padded, program = measure(chunk)
    else:
        layout = SeedLayout(devices, chunk)
        padded, program = layout.padded(num_seeds), 0
    if program == math.inf:
        raise _refusal(
            config,
            where,
            f"the training step with {layout.chunk or local} seed(s) per chunk does not fit "
            f"({sizes[chunk, ()][3]}; data "
            f"{data_bytes / 2**30:.2f} GiB, budget {budget / 2**30:.2f} GiB, {source})",
        )
    if program + data_bytes > budget:
        raise _refusal(
            config,
            where,
            f"the training step needs {program / 2**30:.2f} GiB + {data_bytes / 2**30:.2f} GiB "
            f"of data per device with {layout.chunk or local} seed(s) per chunk, more than the "
            f"{budget / 2**30:.2f} GiB budget ({source})",
        )
    execution = {}
    if (
        make_trainer is not None
        and platform != "cpu"
        and config.train.get("plan_execution", True)
        and program
    ):
        for change in _executions(config):
            trial = with_fields(config, change)
            key = tuple(sorted(change.items()))
            if fits(chunk, cfg=trial, tr=make_trainer(trial), key=key):
                layout, padded, program = measure(chunk, key=key)
                execution = change
                break
    used = with_fields(config, execution) if execution else config
    held = [
        c
        for (c, key), size in sizes.items()
        if key == () and c > (chunk or local) and size[2] <= limit < size[2] + data_bytes
    ]
    return Plan(
        layout,
        mode,
        padded,
        program,
        data_bytes,
        budget,
        source,
        compiler=compiler,
        execution=execution,
        reason=roofline(used, target, min(chunk or local, local)),
        measured={c: size[2] for (c, key), size in sorted(sizes.items()) if key == ()},
        held_by_data=max(held, default=0),
        failed=dict(sorted(failed.items())),
    )


def dry_run(
    config: ml_collections.ConfigDict,
    num_seeds: int,
    report: Callable[[dict], None] | None = None,
) -> dict:
    """Parameter count, FLOPs per seed-step, the seed layout and device memory, without data.

    Compiles one seed's step (temporaries per seed-step) and the sweep's own step as
    :func:`plan_layout` lays it out (seed-stacked, chunked and sharded over the visible devices,
    or for one device of ``train.target`` with that device's compiler, deviceless), so a shape or
    sharding error shows here, before any data is read. ``estimated_device_bytes`` is that
    program's per-device footprint plus the resident data (:func:`estimated_data_bytes`).
    ``report`` receives the per-seed figures before the layout is planned (planning raises when
    one seed does not fit the budget).
    """
    target = target_of(config)
    devices = plan_devices(config)
    config = specialise(config, devices[0].platform)
    make = functools.partial(_dry_trainer, num_train=config.train.batch_size)
    trainer = make(config)
    state = jax.eval_shape(trainer.init, seed_key(0, 0))
    params = count_params(state.params)
    one = SeedLayout(devices[:1], 0)
    weights = jax.ShapeDtypeStruct((config.model.num_classes,), jnp.float32)
    step = jax.jit(functools.partial(trainer.train_steps, length=1))
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=one.replicated)
    lowered = step.lower(
        _placed(state, one.replicated),
        _placed(_batch_split(config), one.replicated),
        _placed(weights, one.replicated),
        scalar,
        scalar,
    )
    try:
        compiled = compile_for_memory(lowered, quiet=target is not None)
        mem = compiled.memory_analysis()
    except DoesNotFit as e:
        compiled, mem = None, None
        one_seed = e.detail
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
        "device": f"{devices[0].platform}:{devices[0].device_kind}",
        "compiler": target.compiler if target else f"XLA:{devices[0].platform.upper()}",
    }
    if report is not None:
        report(info)
    if compiled is None:
        raise _refusal(
            config,
            f"{info['device']} ({info['compiler']})",
            f"one seed's step does not fit ({one_seed})",
        )
    plan = plan_layout(
        config,
        trainer,
        num_seeds,
        estimated_data_bytes(config),
        devices=devices,
        make_trainer=make,
        target=target,
    )
    if config.eval.ensemble:
        try:
            runs = make(with_fields(config, plan.execution)) if plan.execution else trainer
            info["ensemble_bytes_per_device"] = ensemble_bytes(
                config, runs, plan.layout, plan.padded, quiet=target is not None
            )
        except DoesNotFit as e:
            info["ensemble_bytes_per_device"] = f"does not fit ({e.detail})"
    return info | {
        "devices": plan.layout.shards,
        "padded_seeds": plan.padded,
        "seeds_per_chunk": plan.chunk,
        "program_bytes_per_device": plan.program_bytes,
        "estimated_device_bytes": plan.program_bytes + plan.data_bytes,
        "plan": plan,
    }


def _dry_trainer(config: ml_collections.ConfigDict, num_train: int) -> Trainer:
    return make_train(config, num_train=num_train)
