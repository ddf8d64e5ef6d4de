"""Training and evaluation of ONE seed, as pure functions; the sweep vmaps them over seeds.

The step functions live at module level and take everything they use as arguments:
:func:`train_step` (one Adam step), :func:`train_steps` (a ``lax.scan`` over steps of an epoch),
:func:`eval_step` (the sufficient statistics of one batch) and :func:`evaluate` (a scan over a
split). Their static arguments (the model, the optimizer, the :class:`~cmseg_jax.methods.Method`
and sizes) are keywords. :func:`make_train` binds them for one config and returns a
:class:`Trainer` whose functions take a seed's state (or key) and the device-resident data and are
free of Python side effects, so they can be ``jit``-ed, ``vmap``-ed over seeds, ``lax.map``-ed over
seed chunks and sharded over a ``seed`` mesh axis. :func:`make_model` builds the config's network
alone (for inference and the dry run).

Randomness is derived, never carried: a seed's key ``k = fold_in(PRNGKey(root_seed), seed)`` gives
``fold_in(k, 0)`` for initialisation, ``fold_in(fold_in(k, 1), epoch)`` for the epoch's data order
and ``fold_in(fold_in(fold_in(k, 2), epoch), step)`` for the augmentation of a step (and that key
folded with ``DROPOUT`` for the step's dropout masks, FCN-ResNet-50's head). Seed i of an
N-seed sweep therefore trains exactly as seed i alone, and an epoch can be resumed or split into
several calls without changing a bit.

Data layout (device arrays, shared by all seeds)::

  split = {"images": (N, S, S) int16 codes of [-1, 1] (``dataset.encode_images``; float32
           images work too), "masks": (N, S, S) uint8 {0, 1},
           "labels": (N,) int32, "valid": (N,) bool}  # eval splits padded to a batch multiple
  class_weights: (K,) float32, inverse pixel frequencies of the training set
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from cmseg_jax import config_base, methods, metrics, variants
from cmseg_jax.data import dataset
from cmseg_jax.data.augment import gamma_augment
from cmseg_jax.methods import Method
from cmseg_jax.models import registry

INIT, DATA_ORDER, AUGMENT = 0, 1, 2
# fold_in(step's augmentation key, DROPOUT): the step's dropout rng.
DROPOUT = 1


class TrainState(flax.struct.PyTreeNode):
    """Everything one seed needs to continue training.

    Attributes:
      step: () int32, optimizer steps taken.
      params: model parameters.
      batch_stats: BatchNorm running statistics.
      opt_state: Adam state.
      rng: (2,) uint32, the seed's key; every random draw is a fold_in of it.
      diverged: () bool, a non-finite loss or gradient was seen. From that step on the seed is
        frozen: its params, batch_stats and opt_state stay at their last finite values (so
        checkpoints and evaluations stay finite) while ``step`` keeps counting with the others.
    """

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jnp.ndarray
    diverged: jnp.ndarray


class GridTrainState(TrainState):
    """A :class:`TrainState` that carries traced hyperparameters of a grid point.

    Attributes:
      hparams: {name: () value} of the grid point's traced fields that the model or the method
        take as keywords (``inject`` ``model`` or ``method`` in
        :data:`~cmseg_jax.config_base.TRACED_FIELDS`, e.g. ``{"smoothing_sigma": σ}``); a
        traced optimizer hyperparameter lives in ``opt_state.hyperparams``. Vmapped with the
        seeds, one compiled program trains every grid point × seed.
    """

    hparams: Any = None


TRACED = config_base.TRACED
TRACED_FIELDS = config_base.TRACED_FIELDS
# The traced fields by the name the state carries them under.
_TRACED_BY_NAME = {t.name: t for t in TRACED_FIELDS.values()}


def _traced(fields) -> list[config_base.TracedField]:
    """The records of traced ``fields``; a one-line error naming any that is not traced."""
    unknown = sorted(set(fields) - set(TRACED_FIELDS))
    if unknown:
        raise ValueError(f"{unknown}: not traced; traced grid fields are {TRACED}")
    return [TRACED_FIELDS[f] for f in fields]


def seed_key(root_seed: int, seed: int) -> jnp.ndarray:
    """The key of seed ``seed``: fold_in(PRNGKey(root_seed), seed), (2,) uint32."""
    return jax.random.fold_in(jax.random.PRNGKey(root_seed), seed)


def make_model(config: ml_collections.ConfigDict, smoothing: bool | None = None) -> nn.Module:
    """The config's network (``model.arch``); ``smoothing`` overrides ConvMixerSeg's
    ``model.smoothing`` (it has no parameters).

    σ and K of the Gaussian are the config's, or derived from the image size
    (:func:`cmseg_jax.config_base.smoothing`).
    """
    smoothing = config.model.smoothing if smoothing is None else smoothing
    return registry.of(config).build(config, methods.of(config).head, bool(smoothing))


def make_optimizer(
    config: ml_collections.ConfigDict, traced: tuple[str, ...] = ()
) -> optax.GradientTransformation:
    """Adam; if a field of ``traced`` is an optimizer hyperparameter (``inject`` ``optimizer``
    in :data:`~cmseg_jax.config_base.TRACED_FIELDS`), its hyperparameters are state
    (``optax.inject_hyperparams``) and :func:`init_state` sets the grid point's values."""
    t = config.train
    if any(f.inject == "optimizer" for f in _traced(traced)):
        return optax.inject_hyperparams(optax.adam)(learning_rate=t.learning_rate, b1=t.b1, b2=t.b2)
    return optax.adam(t.learning_rate, b1=t.b1, b2=t.b2)


def _all_finite(tree) -> jnp.ndarray:
    """() bool: every floating-point leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def init_state(key, hparams=None, *, model, tx, image_size: int) -> TrainState:
    """A seed's initial state from its key (2,) uint32 (init draws from ``fold_in(key, INIT)``).

    Args:
      key: the seed's key.
      hparams: optional {field of :data:`TRACED`: () value} of a grid point, each injected as
        its record says (:data:`~cmseg_jax.config_base.TRACED_FIELDS`): an optimizer
        hyperparameter is set in ``opt_state.hyperparams`` (``tx`` must come from
        ``make_optimizer(config, traced)``); a model or method keyword makes the state a
        :class:`GridTrainState` carrying it.
    """
    variables = model.init(
        jax.random.fold_in(key, INIT),
        jnp.zeros((1, image_size, image_size), jnp.float32),
        train=False,
    )
    params = variables["params"]
    opt_state = tx.init(params)
    hparams = dict(hparams or {})
    carried = {}
    for traced in _traced(hparams):
        value = jnp.asarray(hparams[traced.field], traced.dtype)
        if traced.inject == "optimizer":
            opt_state.hyperparams[traced.name] = value
        else:
            carried[traced.name] = value
    fields = dict(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=opt_state,
        rng=key,
        diverged=jnp.zeros((), bool),
    )
    if carried:
        return GridTrainState(**fields, hparams=carried)
    return TrainState(**fields)


def _traced_kwargs(state: TrainState, inject: str) -> dict:
    """The traced keywords a grid point's state carries for ``inject`` (``model`` or
    ``method``); none for a plain TrainState."""
    if not isinstance(state, GridTrainState):
        return {}
    return {k: v for k, v in state.hparams.items() if _TRACED_BY_NAME[k].inject == inject}


def _outputs(state: TrainState, outputs, method: Method | None) -> dict[str, jnp.ndarray]:
    """The method's outputs from the model's (:meth:`~cmseg_jax.methods.Method.outputs`, with
    the state's traced method keywords); the model's own without a method."""
    if method is None:
        return outputs
    return method.outputs(outputs, **_traced_kwargs(state, "method"))


def apply_model(
    state: TrainState, images: jnp.ndarray, *, model, method: Method | None = None
) -> dict[str, jnp.ndarray]:
    """The outputs in evaluation mode (running BatchNorm statistics): the model's, or with
    ``method`` the method's (its pooling of the class maps)."""
    outputs = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        images,
        train=False,
        **_traced_kwargs(state, "model"),
    )
    return _outputs(state, outputs, method)


def train_step(state, batch, class_weights, rng, *, model, tx, method: Method, gamma_range=None):
    """One Adam step on one batch: pure (state, batch) -> (state, loss).

    Args:
      state: the seed's :class:`TrainState`.
      batch: (images (B, S, S) float, masks (B, S, S), labels (B,)).
      class_weights: (K,) float32.
      rng: the step's augmentation key.
      model, tx, method: the network, the optimizer and the training method.
      gamma_range: (low, high) of the gamma augmentation, or None for none.

    A non-finite loss or gradient marks the seed diverged and masks this and every later update
    out (see :class:`TrainState`); under ``vmap`` the other seeds are untouched.
    """
    images, masks, labels = batch
    if gamma_range is not None:
        images = gamma_augment(rng, images, *gamma_range)

    def loss_fn(params, batch_stats):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(rng, DROPOUT)},
            **_traced_kwargs(state, "model"),
        )
        outputs = _outputs(state, outputs, method)
        num, den = method.loss(outputs, masks, labels, class_weights)
        return num / den, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & _all_finite((grads, batch_stats))
    diverged = state.diverged | ~finite

    def keep_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(diverged, o, n), new, old)

    state = state.replace(
        step=state.step + 1,
        params=keep_finite(params, state.params),
        batch_stats=keep_finite(batch_stats, state.batch_stats),
        opt_state=keep_finite(opt_state, state.opt_state),
        diverged=diverged,
    )
    return state, loss


def train_steps(
    state, split, class_weights, epoch, start, *, length, num_train, batch_size, **step_kwargs
):
    """``length`` steps of epoch ``epoch`` from step ``start``: (state, {"loss_sum", "steps"}).

    The epoch's order is a permutation of the first ``num_train`` slices of ``split`` (the rest
    is evaluation padding); ``step_kwargs`` go to :func:`train_step`.
    """
    order_key = jax.random.fold_in(jax.random.fold_in(state.rng, DATA_ORDER), epoch)
    order = jax.random.permutation(order_key, num_train)
    aug_key = jax.random.fold_in(jax.random.fold_in(state.rng, AUGMENT), epoch)

    def body(state, step):
        idx = lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
        images = dataset.decode_images(split["images"][idx])
        batch = (images, split["masks"][idx], split["labels"][idx])
        rng = jax.random.fold_in(aug_key, step)
        return train_step(state, batch, class_weights, rng, **step_kwargs)

    state, losses = lax.scan(body, state, start + jnp.arange(length))
    return state, {"loss_sum": jnp.sum(losses), "steps": jnp.asarray(length, jnp.int32)}


def eval_step(
    state, batch, class_weights, *, model, method: Method, threshold, gate, num_bins=None
):
    """Sufficient statistics of one evaluation batch (sums, so batches add up exactly).

    Args:
      batch: (images (B, S, S) float, masks (B, S, S), labels (B,), valid (B,) bool).
      threshold, gate: the method's mask threshold and ``cam.gate_with_classifier``.
      num_bins: also return liver-score histograms with this many bins.

    Returns:
      {"loss_num", "loss_den", "confusion" (4,), "cls_confusion" (4,)[, "histograms" (2, bins)]}.
    """
    images, masks, labels, valid = batch
    outputs = apply_model(state, images, model=model, method=method)
    scores, pred, image_pred = method.predict(outputs, threshold, gate)
    num, den = method.loss(outputs, masks, labels, class_weights, valid)
    valid_px = jnp.broadcast_to(valid[:, None, None], masks.shape)
    stats = {
        "loss_num": num,
        "loss_den": den,
        "confusion": metrics.confusion_counts(pred, masks, valid_px),
        "cls_confusion": metrics.confusion_counts(image_pred, labels, valid),
    }
    if num_bins is not None:
        stats["histograms"] = metrics.score_histograms(scores, masks, num_bins, valid=valid_px)
    return stats


def evaluate(state, split, class_weights, *, eval_batch, num_bins=None, **step_kwargs):
    """:func:`eval_step` summed over a split padded to a multiple of ``eval_batch``."""
    n = split["images"].shape[0]
    if n % eval_batch:
        raise ValueError(f"eval split of {n} slices is not padded to eval.batch_size")

    def body(totals, i):
        sl = functools.partial(
            lax.dynamic_slice_in_dim, start_index=i * eval_batch, slice_size=eval_batch
        )
        images = dataset.decode_images(sl(split["images"]))
        batch = (images, sl(split["masks"]), sl(split["labels"]), sl(split["valid"]))
        stats = eval_step(state, batch, class_weights, num_bins=num_bins, **step_kwargs)
        return jax.tree_util.tree_map(jnp.add, totals, stats), None

    zeros = {
        "loss_num": jnp.zeros((), jnp.float32),
        "loss_den": jnp.zeros((), jnp.float32),
        "confusion": jnp.zeros((4,), jnp.int32),
        "cls_confusion": jnp.zeros((4,), jnp.int32),
    }
    if num_bins is not None:
        zeros["histograms"] = jnp.zeros((2, num_bins), jnp.int32)
    totals, _ = lax.scan(body, zeros, jnp.arange(n // eval_batch))
    return totals


def ensemble_terms(state, images, *, model, method: Method, gate):
    """What one seed adds to an ensemble of a batch: (pixel scores (B, S, S) float32,
    image scores (B,) float32; zeros for a method that reads the image prediction off the mask)."""
    outputs = apply_model(state, images, model=model, method=method)
    scores = method.pixel_scores(outputs, gate)
    if method.image_score is None:
        return scores, jnp.zeros(scores.shape[:1], jnp.float32)
    return scores, method.image_score(outputs).astype(jnp.float32)


def ensemble_stats(score_sum, image_sum, count, batch, *, method: Method, threshold, num_bins):
    """Sufficient statistics of an ensemble on one batch, from its seeds' summed terms.

    The ensemble's liver score is the mean of its seeds' scores (``score_sum / count``),
    thresholded as one seed's (:meth:`~cmseg_jax.methods.Method.ensemble_predict`); for
    ``count == 1`` the statistics are exactly those of :func:`eval_step` for that seed.

    Args:
      score_sum: (B, S, S) float32, the sum of the seeds' :func:`ensemble_terms` scores.
      image_sum: (B,) float32, the sum of their image scores.
      count: () number of seeds summed (0 gives the statistics of a zero score).
      batch: (masks (B, S, S), labels (B,), valid (B,) bool).

    Returns:
      {"confusion" (4,), "cls_confusion" (4,), "histograms" (2, num_bins)}.
    """
    masks, labels, valid = batch
    n = jnp.maximum(count, 1).astype(jnp.float32)
    scores = score_sum / n
    pred, image_pred = method.ensemble_predict(scores, image_sum / n, threshold)
    valid_px = jnp.broadcast_to(valid[:, None, None], masks.shape)
    return {
        "confusion": metrics.confusion_counts(pred, masks, valid_px),
        "cls_confusion": metrics.confusion_counts(image_pred, labels, valid),
        "histograms": metrics.score_histograms(scores, masks, num_bins, valid=valid_px),
    }


def predict_scores(state, images, *, model, method: Method, gate) -> jnp.ndarray:
    """(B, S, S) liver scores of float images (B, S, S)."""
    return method.pixel_scores(apply_model(state, images, model=model, method=method), gate)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The per-seed functions of one experiment, bound to its config (shapes: module docstring).

    Attributes:
      init: (key (2,), hparams=None) -> TrainState (a :class:`GridTrainState` for a grid point).
      train_steps: (state, train_split, class_weights, epoch, start, length=) -> (state,
        {"loss_sum", "steps"}): ``length`` steps from step ``start`` of the epoch (a static
        keyword; ``length=steps_per_epoch`` from 0 is the whole epoch). The sweep splits an epoch
        into such calls (``train.steps_per_call``) for a finer progress bar and safe stops.
      evaluate: (state, split, class_weights) -> sufficient statistics (sums over the split).
      evaluate_final: as ``evaluate`` plus liver-score histograms.
      evaluate_variants: evaluation variant (:mod:`cmseg_jax.variants`) other than ``default``
        that the config evaluates -> ``evaluate_final`` of that variant's network (e.g. the
        Gaussian smoothing removed at test time, trained with it).
      predict: (state, images (B, S, S)) -> liver scores (B, S, S).
      ensemble: evaluation variant -> (state, images (B, S, S)) -> :func:`ensemble_terms`;
        ``default`` and every variant of ``evaluate_variants``.
      ensemble_stats: (score_sum, image_sum, count, (masks, labels, valid)) ->
        :func:`ensemble_stats` with the method's threshold and ``eval.score_bins``.
      train: (key, data) -> (state, per-epoch statistics); the whole run of one seed as one pure
        function (``data``: {"train", "val", "test", "class_weights"}), for use from Python:
        ``jax.jit(make_train(config, n).train)(key, data)`` (README, "From Python"). The sweep
        runs the same ``train_steps`` and ``evaluate``, vmapped over seeds.
      steps_per_epoch: number of optimizer steps per epoch.
      model: the network.
      method: the training method.
    """

    init: Callable
    train_steps: Callable
    evaluate: Callable
    evaluate_final: Callable
    evaluate_variants: dict[str, Callable]
    predict: Callable
    ensemble: dict[str, Callable]
    ensemble_stats: Callable
    train: Callable
    steps_per_epoch: int
    model: Any
    method: Method


def make_train(
    config: ml_collections.ConfigDict, num_train: int, traced: tuple[str, ...] = ()
) -> Trainer:
    """Binds the step functions to ``config``.

    Args:
      config: an experiment config (see ``cmseg_jax.config_base``).
      num_train: number of training slices (fixes the number of steps per epoch).
      traced: fields of :data:`TRACED` that vary per seed (a grid); ``init`` then takes
        ``(key, hparams)`` with their values.
    """
    _traced(traced)
    method = methods.of(config)
    model = make_model(config)
    tx = make_optimizer(config, traced)
    batch_size = config.train.batch_size
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size={batch_size} is larger than the training set ({num_train} slices)"
        )
    t = config.train
    gamma = tuple(t.gamma_range) if t.gamma_augment else None
    train_fn = functools.partial(
        train_steps,
        num_train=num_train,
        batch_size=batch_size,
        model=model,
        tx=tx,
        method=method,
        gamma_range=gamma,
    )
    gate = config.cam.gate_with_classifier
    eval_kwargs = dict(
        method=method,
        threshold=method.threshold(config),
        gate=gate,
        eval_batch=config.eval.batch_size,
    )
    bins = config.eval.score_bins
    evaluate_fn = functools.partial(evaluate, model=model, **eval_kwargs)
    init = functools.partial(init_state, model=model, tx=tx, image_size=config.data.image_size)

    def train(key, data):
        def epoch_body(state, epoch):
            weights = data["class_weights"]
            state, train_stats = train_fn(
                state, data["train"], weights, epoch, 0, length=steps_per_epoch
            )
            evals = {
                name: evaluate_fn(state, data[name], data["class_weights"])
                for name in ("train", "val", "test")
            }
            return state, {"train": train_stats, "eval": evals}

        # Epochs count from 1, as the sweep's do (the epoch seeds the data order and augmentation).
        return lax.scan(epoch_body, init(key), jnp.arange(1, config.train.epochs + 1))

    terms = functools.partial(ensemble_terms, method=method, gate=gate)
    ensemble = {"default": functools.partial(terms, model=model)}
    evaluate_variants = {}
    for variant in variants.of(config)[1:]:
        net = make_model(config, **variant.model)
        evaluate_variants[variant.name] = functools.partial(
            evaluate, model=net, num_bins=bins, **eval_kwargs
        )
        ensemble[variant.name] = functools.partial(terms, model=net)
    return Trainer(
        init=init,
        train_steps=train_fn,
        evaluate=evaluate_fn,
        evaluate_final=functools.partial(evaluate_fn, num_bins=bins),
        evaluate_variants=evaluate_variants,
        predict=functools.partial(predict_scores, model=model, method=method, gate=gate),
        ensemble=ensemble,
        ensemble_stats=functools.partial(
            ensemble_stats, method=method, threshold=eval_kwargs["threshold"], num_bins=bins
        ),
        train=train,
        steps_per_epoch=steps_per_epoch,
        model=model,
        method=method,
    )
