"""Training and evaluation of ONE seed, as pure functions; the sweep vmaps them over seeds.

``make_train(config)`` returns a :class:`Trainer` whose functions take a seed's state (or key) and
the device-resident data and are free of Python side effects, so they can be ``jit``-ed, ``vmap``-ed
over seeds, ``lax.map``-ed over seed chunks and (later) sharded over a ``seed`` mesh axis.

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

from cmseg_jax import metrics
from cmseg_jax.data import dataset
from cmseg_jax.data.augment import gamma_augment
from cmseg_jax.models import heads
from cmseg_jax.models.convmixerseg import ConvMixerSeg
from cmseg_jax.models.fcn_resnet import FCNResNet50

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


def seed_key(root_seed: int, seed: int) -> jnp.ndarray:
    """The key of seed ``seed``: fold_in(PRNGKey(root_seed), seed), (2,) uint32."""
    return jax.random.fold_in(jax.random.PRNGKey(root_seed), seed)


def build_model(config: ml_collections.ConfigDict, smoothing: bool | None = None) -> nn.Module:
    """The config's network (``model.arch``); ``smoothing`` overrides ConvMixerSeg's
    ``model.smoothing`` (it has no parameters)."""
    m = config.model
    arch = m.get("arch", "convmixerseg")  # a config.json written before the field existed
    if arch == "fcn_resnet50":
        return FCNResNet50(
            num_classes=m.num_classes,
            width=m.fcn_width,
            bn_momentum=m.bn_momentum,
            dtype=jnp.dtype(m.dtype),
            remat=bool(m.remat),
        )
    if arch != "convmixerseg":
        raise ValueError(f"model.arch must be 'convmixerseg' or 'fcn_resnet50', got {arch!r}")
    smoothing = m.smoothing if smoothing is None else smoothing
    return ConvMixerSeg(
        num_classes=m.num_classes,
        hidden=m.hidden,
        depth=m.depth,
        patch_size=m.patch_size,
        kernel_size=m.kernel_size,
        transition=m.transition,
        upsample=m.upsample,
        pointwise_residual=m.pointwise_residual,
        smoothing_sigma=m.smoothing_sigma if smoothing else 0.0,
        smoothing_size=m.smoothing_size,
        head="cam_alpha" if config.method == "cam_alpha" else "seg",
        bn_momentum=m.bn_momentum,
        depthwise_impl=m.depthwise_impl,
        dtype=jnp.dtype(m.dtype),
        remat=bool(m.remat),
        decoder_chunk=int(m.decoder_chunk),
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    t = config.train
    return optax.adam(t.learning_rate, b1=t.b1, b2=t.b2)


def segmentation_loss(maps, masks, class_weights, valid=None):
    """Class-weighted pixel cross-entropy, PyTorch semantics: sum(w_y · nll) / sum(w_y).

    Args:
      maps: (B, S, S, K) logits. masks: (B, S, S) int targets. class_weights: (K,).
      valid: optional (B,) bool; padded images count zero.

    Returns:
      (numerator, denominator) so that sums over batches stay exact; loss = num / den.
    """
    logp = jax.nn.log_softmax(maps.astype(jnp.float32), axis=-1)
    targets = masks.astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    w = class_weights[targets]
    if valid is not None:
        w = w * valid[:, None, None]
    return jnp.sum(w * nll), jnp.sum(w)


def classification_loss(pooled, labels, valid=None):
    """Softmax cross-entropy of the pooled class scores against the image label.

    For two classes this is the binary cross-entropy of p(liver) = softmax(pooled)[1].

    Returns:
      (sum over images, number of images).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(pooled.astype(jnp.float32), labels)
    count = jnp.asarray(ce.shape[0], jnp.float32)
    if valid is not None:
        ce, count = ce * valid, jnp.sum(valid).astype(jnp.float32)
    return jnp.sum(ce), count


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The pure per-seed functions of one experiment (see module docstring for shapes).

    Attributes:
      init: key (2,) -> TrainState.
      train_epoch: (state, train_split, class_weights, epoch) -> (state, {"loss_sum", "steps"}).
      train_steps: like train_epoch but only ``length`` steps from step ``start`` of the epoch
        (a ``functools.partial``-bound static length); splits an epoch for a finer progress bar.
      evaluate: (state, split, class_weights) -> sufficient statistics (sums over the split).
      evaluate_final: as ``evaluate`` plus liver-score histograms.
      evaluate_final_no_smoothing: ``evaluate_final`` with the Gaussian smoothing removed at test
        time (trained with it); None unless ``eval.without_smoothing`` and the model smooths.
      predict: (state, images (B, S, S)) -> liver scores (B, S, S).
      train: (key, data) -> (state, per-epoch statistics); the whole run as one pure function.
      steps_per_epoch: number of optimizer steps per epoch.
    """

    init: Callable
    train_epoch: Callable
    train_steps: Callable
    evaluate: Callable
    evaluate_final: Callable
    evaluate_final_no_smoothing: Callable | None
    predict: Callable
    train: Callable
    steps_per_epoch: int
    model: nn.Module


def _all_finite(tree) -> jnp.ndarray:
    """() bool: every floating-point leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train(config: ml_collections.ConfigDict, num_train: int) -> Trainer:
    """Builds the per-seed training and evaluation functions for ``config``.

    Args:
      config: an experiment config (see ``cmseg_jax.config_base``).
      num_train: number of training slices (fixes the number of steps per epoch).
    """
    model = build_model(config)
    tx = make_optimizer(config)
    method = config.method
    if method not in heads.METHODS:
        raise ValueError(f"config.method must be one of {heads.METHODS}, got {method!r}")
    batch_size = config.train.batch_size
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size={batch_size} is larger than the training set ({num_train} slices)"
        )
    size = config.data.image_size
    augment = config.train.gamma_augment
    gamma_low, gamma_high = config.train.gamma_range
    eval_batch = config.eval.batch_size
    num_bins = config.eval.score_bins
    threshold = config.cam.threshold
    gate = config.cam.gate_with_classifier

    def init(key):
        variables = model.init(
            jax.random.fold_in(key, INIT), jnp.zeros((1, size, size), jnp.float32), train=False
        )
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables["batch_stats"],
            opt_state=tx.init(params),
            rng=key,
            diverged=jnp.zeros((), bool),
        )

    def loss_fn(params, batch_stats, images, masks, labels, class_weights, rng):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.fold_in(rng, DROPOUT)},
        )
        if method == "full":
            num, den = segmentation_loss(outputs["maps"], masks, class_weights)
        else:
            num, den = classification_loss(outputs["pooled"], labels)
        return num / den, updates["batch_stats"]

    def train_step(state, batch, class_weights, rng):
        """One Adam step on one batch: pure (state, batch) -> (state, loss).

        A non-finite loss or gradient marks the seed diverged and masks this and every later
        update out (see :class:`TrainState`); under ``vmap`` the other seeds are untouched.
        """
        images, masks, labels = batch
        if augment:
            images = gamma_augment(rng, images, gamma_low, gamma_high)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, images, masks, labels, class_weights, rng
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

    def train_steps(state, split, class_weights, epoch, start, *, length):
        order_key = jax.random.fold_in(jax.random.fold_in(state.rng, DATA_ORDER), epoch)
        # Only the first num_train slices are real: the split may be padded for evaluation.
        order = jax.random.permutation(order_key, num_train)
        aug_key = jax.random.fold_in(jax.random.fold_in(state.rng, AUGMENT), epoch)

        def body(state, step):
            idx = lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
            images = dataset.decode_images(split["images"][idx])
            batch = (images, split["masks"][idx], split["labels"][idx])
            return train_step(state, batch, class_weights, jax.random.fold_in(aug_key, step))

        state, losses = lax.scan(body, state, start + jnp.arange(length))
        return state, {"loss_sum": jnp.sum(losses), "steps": jnp.asarray(length, jnp.int32)}

    def train_epoch(state, split, class_weights, epoch):
        return train_steps(state, split, class_weights, epoch, 0, length=steps_per_epoch)

    def apply_eval(state, images, net=model):
        return net.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
        )

    def make_evaluate(with_histograms: bool, net=model):
        def evaluate(state, split, class_weights):
            n = split["images"].shape[0]
            if n % eval_batch:
                raise ValueError(f"eval split of {n} slices is not padded to eval.batch_size")

            def body(totals, i):
                sl = functools.partial(
                    lax.dynamic_slice_in_dim, start_index=i * eval_batch, slice_size=eval_batch
                )
                images, masks = dataset.decode_images(sl(split["images"])), sl(split["masks"])
                labels, valid = sl(split["labels"]), sl(split["valid"])
                outputs = apply_eval(state, images, net)
                scores, pred, image_pred = heads.predict(outputs, method, threshold, gate)
                if method == "full":
                    num, den = segmentation_loss(outputs["maps"], masks, class_weights, valid)
                else:
                    num, den = classification_loss(outputs["pooled"], labels, valid)
                valid_px = jnp.broadcast_to(valid[:, None, None], masks.shape)
                stats = {
                    "loss_num": num,
                    "loss_den": den,
                    "confusion": metrics.confusion_counts(pred, masks, valid_px),
                    "cls_confusion": metrics.confusion_counts(image_pred, labels, valid),
                }
                if with_histograms:
                    stats["histograms"] = metrics.score_histograms(
                        scores, masks, num_bins, valid=valid_px
                    )
                totals = jax.tree_util.tree_map(jnp.add, totals, stats)
                return totals, None

            zeros = {
                "loss_num": jnp.zeros((), jnp.float32),
                "loss_den": jnp.zeros((), jnp.float32),
                "confusion": jnp.zeros((4,), jnp.int32),
                "cls_confusion": jnp.zeros((4,), jnp.int32),
            }
            if with_histograms:
                zeros["histograms"] = jnp.zeros((2, num_bins), jnp.int32)
            totals, _ = lax.scan(body, zeros, jnp.arange(n // eval_batch))
            return totals

        return evaluate

    evaluate = make_evaluate(False)

    def predict(state, images):
        return heads.pixel_scores(apply_eval(state, images), method, gate)

    def train(key, data):
        """The whole run for one seed: init, then per epoch a scan over steps and an evaluation."""

        def epoch_body(state, epoch):
            state, train_stats = train_epoch(state, data["train"], data["class_weights"], epoch)
            evals = {
                name: evaluate(state, data[name], data["class_weights"])
                for name in ("train", "val", "test")
            }
            return state, {"train": train_stats, "eval": evals}

        return lax.scan(epoch_body, init(key), jnp.arange(config.train.epochs))

    return Trainer(
        init=init,
        train_epoch=train_epoch,
        train_steps=train_steps,
        evaluate=evaluate,
        evaluate_final=make_evaluate(True),
        evaluate_final_no_smoothing=(
            make_evaluate(True, build_model(config, smoothing=False))
            if config.eval.without_smoothing and config.model.smoothing
            else None
        ),
        predict=predict,
        train=train,
        steps_per_epoch=steps_per_epoch,
        model=model,
    )
