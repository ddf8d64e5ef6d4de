"""A trained sweep restored for inference, and its liver scores on model-grid slices."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cmseg_jax import checkpoint, errors, methods, train
from cmseg_jax import workdir as workdir_io
from cmseg_jax.train import TrainState

ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class Sweep:
    """A finished (or checkpointed) sweep, restored for inference.

    Attributes:
      workdir: the sweep's workdir.
      config: its resolved config.
      seeds: (S,) seed ids, the row order of ``states``.
      epoch: the checkpoint epoch restored (1-based).
      model: the network (:func:`cmseg_jax.train.make_model`).
      method: the training method (its pixel scores and threshold).
      states: the seed-stacked TrainState, leading axis S.
      diverged: (S,) bool, the seeds whose training saw a non-finite loss.
    """

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    seeds: tuple[int, ...]
    epoch: int
    model: Any
    method: methods.Method
    states: TrainState
    diverged: np.ndarray

    def predict(self, state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
        """One seed's (B, S, S) liver scores of float images (B, S, S)."""
        gate = self.config.cam.gate_with_classifier
        return train.predict_scores(state, images, model=self.model, method=self.method, gate=gate)

    @property
    def threshold(self) -> float:
        return self.method.threshold(self.config)

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def hu_window(self) -> tuple[float, float]:
        lo, hi = self.config.data.hu_window
        return float(lo), float(hi)


def load_sweep(workdir, epoch: int | None = None) -> Sweep:
    """Restores a sweep's seed-stacked state from its Orbax checkpoints.

    Args:
      workdir: the sweep's workdir (``config.json`` and ``checkpoints/``).
      epoch: checkpoint to restore; the latest by default.

    Returns:
      The :class:`Sweep`.

    Without ``epoch``, the newest intact checkpoint (each corrupt newer one is reported on stderr
    and skipped; nothing is moved).

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      UsageError: no checkpoint of ``epoch`` (never written, or pruned).
      IOFailure: the checkpoint is corrupt (checksums) or no checkpoint is intact.
    """
    workdir = pathlib.Path(workdir)
    config, seeds = workdir_io.read_config(workdir)
    if not (workdir / workdir_io.CHECKPOINTS_DIR).is_dir():
        raise FileNotFoundError(f"{workdir / workdir_io.CHECKPOINTS_DIR}: no checkpoints")
    model = train.make_model(config)
    init = functools.partial(
        train.init_state,
        model=model,
        tx=train.make_optimizer(config),
        image_size=config.data.image_size,
    )
    keys = jnp.stack([train.seed_key(config.root_seed, s) for s in seeds])
    like = jax.eval_shape(jax.vmap(init), keys)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    try:
        kept = ckpt.epochs()
        if not kept:
            raise FileNotFoundError(f"{ckpt.directory}: no checkpoint")
        if epoch is None:

            def warn(line: str) -> None:
                print(f"warning: {line}; using an older one", file=sys.stderr, flush=True)

            epoch, states = ckpt.restore_latest(like, warn, quarantine=False)
            if epoch is None:
                raise errors.IOFailure(f"{ckpt.directory}: no intact checkpoint")
        else:
            if int(epoch) not in kept:
                raise errors.UsageError(
                    f"--epoch {epoch}: no checkpoint of that epoch in {ckpt.directory} "
                    f"(kept: {', '.join(map(str, kept))})"
                )
            states = ckpt.restore(int(epoch), like)
    finally:
        ckpt.close()
    return Sweep(
        workdir=workdir,
        config=config,
        seeds=tuple(seeds),
        epoch=int(epoch),
        model=model,
        method=methods.of(config),
        states=states,
        diverged=np.asarray(states.diverged, bool),
    )


class ModelScorer:
    """The liver score of one seed or of a seed ensemble, as a ``score_fn`` for segment_volume.

    Calls take (n, S, S) model-grid slices for any n and run the model in batches of exactly
    ``batch_size`` (the last one padded with air, -1), so the function is compiled once.
    An ensemble's score is the mean of its seeds' scores, accumulated one seed at a time
    (``lax.scan``) so that memory does not grow with the number of seeds.

    Args:
      sweep: the restored sweep.
      seeds: seed ids to average; None = every seed that did not diverge.
      batch_size: slices per device call; the run's ``eval.batch_size`` by default.

    Attributes:
      seeds: the seed ids used.
      batch_size: slices per device call.
      image_size: S.
      num_traces: how often the device function was traced (1 after any number of calls).
    """

    def __init__(self, sweep: Sweep, seeds: Sequence[int] | None = None, batch_size=None):
        all_seeds = list(sweep.seeds)
        if seeds is None:
            seeds = [s for s, d in zip(all_seeds, sweep.diverged, strict=True) if not d]
            if not seeds:
                raise ValueError(f"{sweep.workdir}: every seed diverged; nothing to ensemble")
        seeds = [int(s) for s in seeds]
        rows = []
        for s in seeds:
            if s not in all_seeds:
                raise ValueError(f"seed {s} is not in the sweep (seeds: {all_seeds})")
            if sweep.diverged[all_seeds.index(s)]:
                raise ValueError(
                    f"seed {s} diverged during training (frozen at its last finite state); "
                    "pick another seed or --ensemble"
                )
            rows.append(all_seeds.index(s))
        self.seeds = seeds
        self.batch_size = int(batch_size or sweep.config.eval.batch_size)
        self.image_size = sweep.image_size
        self.num_traces = 0
        index = np.asarray(rows)
        states = jax.tree_util.tree_map(lambda x: x[index], sweep.states)
        # Inference reads params and batch_stats only: leave the Adam moments on the host.
        self._states = jax.device_put(states.replace(opt_state=None))
        predict = sweep.predict

        def mean_score(states, images):
            self.num_traces += 1  # runs at trace time only

            def body(total, state):
                return total + predict(state, images), None

            zero = jnp.zeros(images.shape, jnp.float32)
            total, _ = lax.scan(body, zero, states)
            return total / len(rows)

        self._fn = jax.jit(mean_score)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S) float32 slices in [-1, 1] -> (n, S, S) float32 liver scores in [0, 1]."""
        images = np.asarray(images, np.float32)
        n, b, size = images.shape[0], self.batch_size, self.image_size
        if images.shape[1:] != (size, size):
            raise ValueError(f"images must be (n, {size}, {size}), got {images.shape}")
        out = []
        for start in range(0, n, b):
            chunk = images[start : start + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.full((pad, size, size), -1.0, np.float32)])
            out.append(np.asarray(self._fn(self._states, chunk))[: b - pad])
        return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)
