"""From network outputs to image-level scores, pixel liver scores and predicted masks.

Three training methods share one backbone (class index 1 = liver):

* ``full`` — fully supervised; class maps are pixel logits. Pixel score = softmax liver probability,
  mask = score >= 0.5 (argmax). Image prediction = "some pixel is predicted liver".
* ``cam_beta`` — class maps are pooled by global max pooling (GMP) per class and trained with a
  softmax / binary cross-entropy on the image label. No parameters beyond the segmentation model.
  Pixel score and mask as for ``full``; image score = softmax of the pooled maps.
* ``cam_alpha`` — Zhou et al.'s CAM with GMP: the C_t hidden maps are max-pooled and a dense layer
  gives the class scores; the CAM is the dense-weighted sum of the hidden maps. The liver CAM is
  min-max normalised per image to [0, 1] and thresholded (``cam.threshold``, default 0.5). With
  ``cam.gate_with_classifier`` (default) slices the classifier calls liver-free get score 0: a
  min-max normalised CAM always has a maximum of 1, so without a gate every slice would contain
  liver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LIVER = 1
METHODS = ("full", "cam_beta", "cam_alpha")


def seg_outputs(maps: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Segmentation head: class maps (B, S, S, K) and their GMP class scores (B, K)."""
    return {"maps": maps, "pooled": jnp.max(maps, axis=(1, 2))}


def image_probability(outputs: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """(B,) probability that the slice contains liver, from the pooled class scores."""
    return jax.nn.softmax(outputs["pooled"].astype(jnp.float32), axis=-1)[:, LIVER]


def pixel_scores(
    outputs: dict[str, jnp.ndarray], method: str, gate_with_classifier: bool = True
) -> jnp.ndarray:
    """(B, S, S) liver score in [0, 1] per pixel (see the module docstring)."""
    maps = outputs["maps"].astype(jnp.float32)
    if method in ("full", "cam_beta"):
        return jax.nn.softmax(maps, axis=-1)[..., LIVER]
    if method != "cam_alpha":
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    cam = maps[..., LIVER]
    lo = jnp.min(cam, axis=(1, 2), keepdims=True)
    hi = jnp.max(cam, axis=(1, 2), keepdims=True)
    score = (cam - lo) / jnp.maximum(hi - lo, 1e-12)
    if gate_with_classifier:
        score = score * (image_probability(outputs) >= 0.5)[:, None, None]
    return score


def predict(
    outputs: dict[str, jnp.ndarray],
    method: str,
    threshold: float = 0.5,
    gate_with_classifier: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Scores and hard predictions.

    Returns:
      (scores (B, S, S) float32, masks (B, S, S) bool, image_pred (B,) bool).
    """
    scores = pixel_scores(outputs, method, gate_with_classifier)
    threshold = 0.5 if method != "cam_alpha" else threshold
    masks = scores >= threshold
    if method == "full":
        image_pred = jnp.any(masks, axis=(1, 2))
    else:
        image_pred = image_probability(outputs) >= 0.5
    return scores, masks, image_pred
