"""Seeds on devices: the seed mesh, chunked vmap over seeds and the sweep's jitted functions
(the memory planner and the dry run: :mod:`cmseg_jax.sweep.plan`).

The only module (with the rest of :mod:`cmseg_jax.sweep`) that knows about devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cmseg_jax.train import Trainer


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


def over_seeds(
    fn: Callable, chunk: int, layout: SeedLayout | None = None, in_place: bool = False
) -> Callable:
    """Lifts a per-seed ``fn(state, *shared)`` to a seed-stacked first argument.

    The seed axis is vmapped; with ``0 < chunk < seeds per shard`` every shard's seeds are split
    into chunks of ``chunk`` that run one after another, so only one chunk's activations are live
    per device. Seeds per shard must then be a multiple of ``chunk`` (the sweep pads). With a
    ``layout`` of several devices, chunk ``c`` holds seeds ``c*chunk .. (c+1)*chunk - 1`` of every
    device's block, so no seed leaves its device.

    With ``in_place`` (``fn`` returns ``(new_state, aux)`` with ``new_state`` shaped like
    ``state``) the chunks are a ``fori_loop`` that writes each chunk's new state back into the
    carried stack, so the seeds' states exist once (the donated input) rather than as the input
    stack and a second, stacked output (``lax.map``); the same values either way.
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

        tree_map = jax.tree_util.tree_map
        chunks = tree_map(to_chunks, states)
        if not in_place:
            return tree_map(from_chunks, lax.map(batched, chunks))
        one = tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), chunks)
        aux_shape = jax.eval_shape(batched, one)[1]
        aux = tree_map(lambda a: jnp.zeros((steps,) + a.shape, a.dtype), aux_shape)

        def body(i, carry):
            stack, aux = carry
            new, out = batched(tree_map(lambda x: lax.dynamic_index_in_dim(x, i, 0, False), stack))

            def put(buf, v):
                return lax.dynamic_update_index_in_dim(buf, v, i, 0)

            return tree_map(put, stack, new), tree_map(put, aux, out)

        return tree_map(from_chunks, lax.fori_loop(0, steps, body, (chunks, aux)))

    return run


class SweepFns:
    """The jitted, seed-stacked functions of a sweep; each compiles once per input shape.

    Every output has a leading seed axis and stays sharded over ``layout``'s ``seed`` axis.
    """

    def __init__(
        self,
        trainer: Trainer,
        layout: SeedLayout,
        steps_per_call: int,
        ensemble: dict | None = None,
    ):
        """``ensemble``: {"eval_batch", "seeds_per_group", "groups"} of
        :func:`cmseg_jax.sweep.ensemble.make_evaluate` (None: no ensemble functions)."""
        from cmseg_jax.sweep import ensemble as ensemble_lib  # it lays seeds out with SeedLayout

        spe = trainer.steps_per_epoch
        self.layout = layout
        self.call_lengths = _call_lengths(spe, steps_per_call)

        def seeded(fn, in_place=False, **kwargs):
            return jax.jit(
                over_seeds(fn, layout.chunk, layout, in_place),
                out_shardings=layout.seeds,
                **kwargs,
            )

        # init((keys,)) or init((keys, hparams)): both are per seed-row.
        self.init = seeded(lambda args: trainer.init(*args))
        self.train = {
            length: seeded(
                functools.partial(trainer.train_steps, length=length),
                in_place=True,
                donate_argnums=0,
            )
            for length in sorted(set(self.call_lengths))
        }
        self.evaluate = seeded(trainer.evaluate)
        self.evaluate_final = seeded(trainer.evaluate_final)
        # Evaluation variant (other than ``default``) -> its final evaluation.
        self.evaluate_variants = {
            variant: seeded(fn) for variant, fn in trainer.evaluate_variants.items()
        }
        self.predict = jax.jit(trainer.predict)
        # Evaluation variant -> fn(states, split, weights): the ensemble by size on one split.
        self.ensemble = {
            variant: ensemble_lib.make_evaluate(terms, trainer.ensemble_stats, layout, **ensemble)
            for variant, terms in (trainer.ensemble.items() if ensemble else ())
        }


def _call_lengths(steps_per_epoch: int, steps_per_call: int) -> list[int]:
    if steps_per_call <= 0 or steps_per_call >= steps_per_epoch:
        return [steps_per_epoch]
    full, rest = divmod(steps_per_epoch, steps_per_call)
    return [steps_per_call] * full + ([rest] if rest else [])
