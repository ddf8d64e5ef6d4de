"""The ensemble of a sweep's seeds, on the device: one compiled call gives the
statistics of the ensemble of the first k seeds for every k (and of each grid point apart),
on every evaluation split.

An ensemble's liver score is the mean of its seeds' scores (:func:`cmseg_jax.train.ensemble_terms`),
thresholded as one seed's. For every evaluation batch the seeds' scores are added one seed at a
time, in seed order, to a running sum (one (B, S, S) sum per grid point); after each seed the
statistics of the ensemble so far (confusion counts, image confusion, score histograms: the
sums :func:`cmseg_jax.train.ensemble_stats` returns) are taken, so row r of the output is the
ensemble of rows 0 … r that are in it (``weights``). Only ``chunk`` seeds' maps per device exist at
a time, never all seeds' full-resolution maps.

Seed order is kept across devices: for the pass the rows are laid out round-robin by chunk
(device d's k-th chunk holds rows ``(k * shards + d) * chunk …``), each device computes its chunk's
scores, the chunks of all devices are gathered (``all_gather`` over the ``seed`` axis: that many
maps per batch) and every device adds them in seed order. The sums are therefore added in the
same order on one device or many, and the results are the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cmseg_jax.data import dataset
from cmseg_jax.sweep.layout import SeedLayout


def _interleave(rows: int, shards: int, chunk: int) -> np.ndarray:
    """The run row held at each position of the round-robin layout (a permutation of rows)."""
    local = rows // shards
    pos = np.arange(rows)
    d, rest = divmod(pos, local)
    k, j = divmod(rest, chunk)
    return (k * shards + d) * chunk + j


def make_evaluate(
    terms: Callable,
    stats: Callable,
    layout: SeedLayout,
    *,
    eval_batch: int,
    seeds_per_group: int,
    groups: int = 1,
) -> Callable:
    """The jitted ensemble evaluation of the evaluation splits, in one call (one compile: the
    splits differ only in their number of batches).

    Args:
      terms: (state, images (B, S, S)) -> (scores (B, S, S), image scores (B,)) of one seed.
      stats: (score_sum, image_sum, count, (masks, labels, valid)) -> sums of one batch.
      layout: the sweep's seed layout (its mesh and chunk).
      eval_batch: slices per evaluation batch (the split is padded to a multiple).
      seeds_per_group: run rows per grid point (the rows are point-major).
      groups: grid points; each is its own ensemble.

    Returns:
      ``fn(states, splits, weights)``: states (R, …) seed-stacked (sharded over ``seed``),
      ``splits`` {name: split}, ``weights`` (R,) float32, 1 for a row in the ensemble (0:
      diverged or padding) -> {name: per-row sums {"confusion" (R, 4), "cls_confusion" (R, 4),
      "histograms" (R, 2, bins)}} of the ensemble of that row's group up to and including it;
      row order as the states'.
    """
    shards = layout.shards
    mesh = layout.mesh

    def run(states, splits, weights):
        rows = jax.tree_util.tree_leaves(states)[0].shape[0]
        local = rows // shards
        chunk = layout.chunk if 0 < layout.chunk < local else local
        steps = local // chunk
        if shards > 1:
            order = _interleave(rows, shards, chunk)
            states = jax.tree_util.tree_map(
                lambda x: lax.with_sharding_constraint(
                    jnp.take(x, order, axis=0), NamedSharding(mesh, P("seed"))
                ),
                states,
            )
        names = list(splits)
        batches = []
        for name in names:
            n = splits[name]["images"].shape[0]
            if n % eval_batch:
                raise ValueError(f"eval split of {n} slices is not padded to eval.batch_size")
            batches.append(n // eval_batch)
        # Batch t of the flattened splits is batch t - first[s] of split s.
        first = np.concatenate([[0], np.cumsum(batches)]).astype(np.int32)
        group_of = np.minimum(np.arange(rows) // seeds_per_group, groups - 1).astype(np.int32)

        def on_device(block, splits, weights):
            me = lax.axis_index("seed")
            split_list = [splits[name] for name in names]

            def batch_of(t):
                """Split index and (images, (masks, labels, valid)) of flattened batch t."""
                sid = jnp.sum(t >= jnp.asarray(first[1:-1])).astype(jnp.int32)
                start = (t - jnp.take(jnp.asarray(first), sid)) * eval_batch

                def take(split):
                    def sl(x):
                        return lax.dynamic_slice_in_dim(x, start, eval_batch)

                    return (
                        dataset.decode_images(sl(split["images"])),
                        (sl(split["masks"]), sl(split["labels"]), sl(split["valid"])),
                    )

                branches = [lambda sp=sp: take(sp) for sp in split_list]
                return sid, lax.switch(sid, branches)

            def batch_sums(images, batch):
                shape = images.shape
                like = jax.eval_shape(
                    stats,
                    jax.ShapeDtypeStruct(shape, jnp.float32),
                    jax.ShapeDtypeStruct(shape[:1], jnp.float32),
                    jax.ShapeDtypeStruct((), jnp.float32),
                    batch,
                )

                def zeros(n_rows):
                    return jax.tree_util.tree_map(
                        lambda a: jnp.zeros((n_rows,) + a.shape, a.dtype), like
                    )

                def step(k, carry):
                    sums, image_sums, counts, out = carry
                    mine = jax.tree_util.tree_map(
                        lambda x: lax.dynamic_slice_in_dim(x, k * chunk, chunk), block
                    )
                    scores, image_scores = jax.vmap(terms, in_axes=(0, None))(mine, images)
                    scores = lax.all_gather(scores, "seed", tiled=True)
                    image_scores = lax.all_gather(image_scores, "seed", tiled=True)
                    base = k * shards * chunk
                    ids = base + jnp.arange(shards * chunk)
                    w = jnp.take(weights, ids)
                    g = jnp.take(jnp.asarray(group_of), ids)
                    own = (ids >= base + me * chunk) & (ids < base + (me + 1) * chunk)

                    def add(c, x):
                        sums, image_sums, counts = c
                        s, im, wi, gi, own_i = x
                        keep = wi > 0
                        sums = sums.at[gi].set(jnp.where(keep, sums[gi] + s, sums[gi]))
                        image_sums = image_sums.at[gi].set(
                            jnp.where(keep, image_sums[gi] + im, image_sums[gi])
                        )
                        counts = counts.at[gi].add(keep.astype(jnp.float32))
                        row = lax.cond(
                            own_i,
                            lambda: stats(sums[gi], image_sums[gi], counts[gi], batch),
                            lambda: jax.tree_util.tree_map(
                                lambda a: jnp.zeros(a.shape, a.dtype), like
                            ),
                        )
                        return (sums, image_sums, counts), row

                    (sums, image_sums, counts), per_row = lax.scan(
                        add, (sums, image_sums, counts), (scores, image_scores, w, g, own)
                    )
                    mine_rows = jax.tree_util.tree_map(
                        lambda x: lax.dynamic_slice_in_dim(x, me * chunk, chunk), per_row
                    )
                    out = jax.tree_util.tree_map(
                        lambda o, v: lax.dynamic_update_slice_in_dim(o, v, k * chunk, 0),
                        out,
                        mine_rows,
                    )
                    return sums, image_sums, counts, out

                init = (
                    jnp.zeros((groups,) + shape, jnp.float32),
                    jnp.zeros((groups,) + shape[:1], jnp.float32),
                    jnp.zeros((groups,), jnp.float32),
                    zeros(local),
                )
                return lax.fori_loop(0, steps, step, init)[3]

            def body(t, totals):
                sid, (images, batch) = batch_of(t)
                sums = batch_sums(images, batch)
                return jax.tree_util.tree_map(lambda acc, v: acc.at[sid].add(v), totals, sums)

            images, batch = batch_of(jnp.int32(0))[1]
            like = jax.eval_shape(batch_sums, images, batch)
            totals = jax.tree_util.tree_map(
                lambda a: jnp.zeros((len(names),) + a.shape, a.dtype), like
            )
            return lax.fori_loop(0, int(first[-1]), body, totals)

        out = jax.shard_map(
            on_device,
            mesh=mesh,
            in_specs=(P("seed"), P(), P()),
            out_specs=P(None, "seed"),
            check_vma=False,
        )(states, splits, weights)
        if shards > 1:
            back = np.argsort(_interleave(rows, shards, chunk))
            out = jax.tree_util.tree_map(lambda x: jnp.take(x, back, axis=1), out)
        return {
            name: jax.tree_util.tree_map(lambda x, i=i: x[i], out) for i, name in enumerate(names)
        }

    return jax.jit(run, out_shardings=layout.replicated)


def by_size(per_row: dict, weights: np.ndarray, rows: slice | None = None) -> dict:
    """The host rows of one group that are ensembles of 1, 2, … seeds.

    Args:
      per_row: split -> {"confusion": (R, 4), …} host arrays of :func:`make_evaluate`.
      weights: (R,) the weights the pass ran with.
      rows: the group's rows (default all).

    Returns:
      split -> {key: (M, …)} where entry k - 1 is the ensemble of the group's first k seeds in it
      (M of them).
    """
    rows = rows or slice(None)
    keep = np.flatnonzero(np.asarray(weights)[rows] > 0)
    return {
        split: {k: np.asarray(v)[rows][keep] for k, v in arrays.items()}
        for split, arrays in per_row.items()
    }
