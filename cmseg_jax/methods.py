"""The training methods: what each one trains on and how it turns outputs into liver masks.

A :class:`Method` is the whole of a method in one record: the model head it needs, its loss, its
pixel liver score, its mask threshold and its image-level prediction. Training, evaluation,
``predict`` and the examples all go through it, so a new method (GAP-CAM, say) is one more entry in
:data:`METHODS`. Class index 1 is liver (:data:`cmseg_jax.models.heads.LIVER`).

* ``full`` — fully supervised: class-weighted pixel cross-entropy on the class maps. Pixel score =
  softmax liver probability, mask = score >= 0.5 (argmax). Image prediction = "some pixel is
  predicted liver".
* ``full_mcc`` — fully supervised with the MCC loss, 1 − MCC of the batch's soft confusion
  matrix (:mod:`cmseg_jax.mcc_loss`); pixel score, mask and image prediction as for ``full``.
* ``cam_beta`` — image labels only: the class maps are pooled per class by ``cam.pooling``
  (default ``max``, the thesis' global max pooling, GMP; :data:`cmseg_jax.models.heads.POOLINGS`)
  and trained with a softmax cross-entropy on the image label (for two classes the binary
  cross-entropy of p(liver)). No parameters beyond the segmentation model. Pixel score and mask as
  for ``full``; image prediction = softmax of the pooled maps >= 0.5. The only method that pools
  its class maps (``pools_class_maps``); the others keep the model's own image scores.
* ``cam_alpha`` — Zhou et al.'s CAM with GMP: the C_t hidden maps are max-pooled and a dense layer
  gives the class scores (model head ``cam_alpha``); the CAM is the dense-weighted sum of the
  hidden maps. Loss as ``cam_beta``. The liver CAM is min-max normalised per image to [0, 1] and
  thresholded at ``cam.threshold`` (default 0.5). With ``cam.gate_with_classifier`` (default)
  slices the classifier calls liver-free get score 0: a min-max normalised CAM always reaches 1,
  so without a gate every slice would contain liver.

Losses return (numerator, denominator) sums so that totals over batches stay exact.

:func:`of` returns a config's method with its pooling bound (``cam.pooling`` and the pooling's
``cam.<parameter>`` values); :meth:`Method.outputs` turns the model's outputs into the method's,
and every loss, score and prediction below reads those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cmseg_jax import mcc_loss
from cmseg_jax.models.heads import DEFAULT_POOLING, LIVER, POOLINGS, Pooling, image_probability

Outputs = dict[str, jnp.ndarray]


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


def _pixel_loss(outputs: Outputs, masks, labels, class_weights, valid=None):
    del labels
    return segmentation_loss(outputs["maps"], masks, class_weights, valid)


def _image_loss(outputs: Outputs, masks, labels, class_weights, valid=None):
    del masks, class_weights
    return classification_loss(outputs["pooled"], labels, valid)


def _softmax_scores(outputs: Outputs, gate_with_classifier: bool) -> jnp.ndarray:
    del gate_with_classifier
    return jax.nn.softmax(outputs["maps"].astype(jnp.float32), axis=-1)[..., LIVER]


def _normalised_cam(outputs: Outputs, gate_with_classifier: bool) -> jnp.ndarray:
    cam = outputs["maps"].astype(jnp.float32)[..., LIVER]
    lo = jnp.min(cam, axis=(1, 2), keepdims=True)
    hi = jnp.max(cam, axis=(1, 2), keepdims=True)
    score = (cam - lo) / jnp.maximum(hi - lo, 1e-12)
    if gate_with_classifier:
        score = score * (image_probability(outputs) >= 0.5)[:, None, None]
    return score


def _any_pixel(outputs: Outputs, masks: jnp.ndarray) -> jnp.ndarray:
    del outputs
    return jnp.any(masks, axis=(1, 2))


def _classifier(outputs: Outputs, masks: jnp.ndarray) -> jnp.ndarray:
    del masks
    return image_probability(outputs) >= 0.5


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method (see the module docstring).

    Attributes:
      name: the value of ``config.method``.
      head: the model head it trains: ``seg`` (class maps, GMP class scores) or ``cam_alpha``
        (C_t maps → GMP → dense; the maps are the CAM).
      loss: (outputs, masks (B, S, S), labels (B,), class_weights (K,), valid (B,) | None) ->
        (numerator, denominator).
      pixel_scores: (outputs, gate_with_classifier) -> (B, S, S) float32 liver score in [0, 1].
      image_prediction: (outputs, masks (B, S, S) bool) -> (B,) bool "slice contains liver".
      cam_threshold: the mask threshold is ``cam.threshold`` (else 0.5).
      image_score: (outputs) -> (B,) float32 probability behind ``image_prediction`` (thresholded
        at 0.5), or None where the image prediction is read off the mask. An ensemble averages it
        over seeds as it averages ``pixel_scores`` (:meth:`ensemble_predict`).
      pools_class_maps: its image-level class scores are its pooling of the class maps
        (``cam.pooling``); a method without it takes only the default pooling.
      pooling: the pooling :func:`of` bound from the config (the default GMP otherwise).
      pooling_params: ((parameter, value), ...) of ``pooling`` from the config.
    """

    name: str
    head: str
    loss: Callable
    pixel_scores: Callable
    image_prediction: Callable
    cam_threshold: bool = False
    image_score: Callable | None = None
    pools_class_maps: bool = False
    pooling: Pooling = POOLINGS[DEFAULT_POOLING]
    pooling_params: tuple[tuple[str, float], ...] = ()

    def outputs(self, outputs: Outputs, **traced) -> Outputs:
        """The method's outputs from the model's: for a method that pools its class maps,
        ``pooled`` (B, K) is its pooling of ``maps`` (B, S, S, K); otherwise unchanged.

        Args:
          outputs: the model's outputs.
          traced: pooling parameters of a grid point (traced () values) in place of the
            config's; parameters its pooling does not take are ignored.
        """
        if not self.pools_class_maps:
            return outputs
        params = dict(self.pooling_params)
        params.update({k: v for k, v in traced.items() if k in self.pooling.params})
        return {**outputs, "pooled": self.pooling.pool(outputs["maps"], **params)}

    def threshold(self, config: ml_collections.ConfigDict) -> float:
        """The score threshold of the method's masks under ``config``."""
        return float(config.cam.threshold) if self.cam_threshold else 0.5

    def predict(self, outputs: Outputs, threshold: float, gate_with_classifier: bool = True):
        """(scores (B, S, S) float32, masks (B, S, S) bool, image_pred (B,) bool)."""
        scores = self.pixel_scores(outputs, gate_with_classifier)
        masks = scores >= threshold
        return scores, masks, self.image_prediction(outputs, masks)

    def ensemble_predict(self, scores, image_scores, threshold: float):
        """The masks and image predictions of seed-averaged scores, thresholded as one seed's.

        Args:
          scores: (B, S, S) float32, the mean over seeds of ``pixel_scores``.
          image_scores: (B,) float32, the mean over seeds of ``image_score`` (ignored without one).

        Returns:
          (masks (B, S, S) bool, image_pred (B,) bool); for one seed exactly :meth:`predict`'s.
        """
        masks = scores >= threshold
        if self.image_score is None:
            return masks, jnp.any(masks, axis=(1, 2))
        return masks, image_scores >= 0.5


FULL = Method("full", "seg", _pixel_loss, _softmax_scores, _any_pixel)
FULL_MCC = Method("full_mcc", "seg", mcc_loss.loss, _softmax_scores, _any_pixel)
CAM_BETA = Method(
    "cam_beta",
    "seg",
    _image_loss,
    _softmax_scores,
    _classifier,
    image_score=image_probability,
    pools_class_maps=True,
)
CAM_ALPHA = Method(
    "cam_alpha",
    "cam_alpha",
    _image_loss,
    _normalised_cam,
    _classifier,
    cam_threshold=True,
    image_score=image_probability,
)
METHODS: dict[str, Method] = {m.name: m for m in (FULL, FULL_MCC, CAM_BETA, CAM_ALPHA)}


def get(name: str) -> Method:
    """The method called ``name`` (``config.method``); a one-line error for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"config.method must be one of {tuple(METHODS)}, got {name!r}") from None


def pooling_of(config: ml_collections.ConfigDict) -> Pooling:
    """The pooling ``config.cam.pooling`` names (the default for a config written without it);
    a one-line error for an unknown one."""
    name = config.cam.get("pooling", DEFAULT_POOLING)
    try:
        return POOLINGS[name]
    except KeyError:
        raise ValueError(
            f"config.cam.pooling must be one of {tuple(POOLINGS)}, got {name!r}"
        ) from None


def of(config: ml_collections.ConfigDict) -> Method:
    """The method of ``config``, with its pooling and the pooling's parameters bound."""
    method = get(config.method)
    if not method.pools_class_maps:
        return method
    pooling = pooling_of(config)
    params = tuple((k, float(config.cam.get(k, v))) for k, v in pooling.params.items())
    return dataclasses.replace(method, pooling=pooling, pooling_params=params)
