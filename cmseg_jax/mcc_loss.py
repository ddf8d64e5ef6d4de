"""The MCC loss for full supervision (Abhishek & Hamarneh, ISBI 2021, "Matthews Correlation
Coefficient Loss for Deep Convolutional Networks: Application to Skin Lesion Segmentation";
thesis §4.3): loss = 1 − MCC of the batch's soft confusion matrix. Method ``full_mcc``.

With p the softmax liver probability of a pixel and y its label (1 = liver), over every pixel of
the batch's valid images (padded images, ``valid`` False, contribute nothing):

    TP = Σ p·y,  FP = Σ p·(1 − y),  FN = Σ (1 − p)·y,  TN = Σ (1 − p)·(1 − y)
    MCC = (TP·TN − FP·FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN) + ε)

Choices the paper leaves open, stated here:

* One MCC over the whole batch (the authors' code calls it the "batch" reduction), not a mean of
  per-image MCCs, which are undefined on the slices without liver.
* The four sums are taken as fractions of the batch's valid pixels. MCC does not change when
  the matrix is scaled, and fractions keep the product of the four marginals inside float32 at
  any batch and image size (raw counts of 16 slices of 512² reach 1e26) and make ε mean the same
  at every size.
* ε = 1e-12 sits inside the square root (as in the authors' code, there 1e-7 on raw counts). A
  batch without liver pixels has TP + FN = 0, where the square root has an infinite derivative:
  ε outside the root would give a 0·∞ = NaN gradient and freeze the seed as diverged; inside it
  such a batch has loss 1 and a zero gradient (its MCC is undefined: it teaches nothing). With
  the liver at 1 % of the pixels, ε moves MCC by less than 1e-8 relative.
* Class weights are not used: MCC treats the two classes alike.

How it fits the losses' (numerator, denominator) form: MCC of a batch is not a sum over its
images, so the loss returns numerator = (1 − MCC) · n and denominator = n, n the number of
valid images. A training step's loss, numerator / denominator, is then exactly 1 − MCC of its
batch; an evaluation split's loss (sums over its batches) is the mean of its batches' 1 − MCC
weighted by their valid images — not 1 − MCC of the split's pooled soft confusion matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cmseg_jax.models.heads import LIVER

EPSILON = 1e-12


def soft_confusion(maps, masks, valid=None) -> jnp.ndarray:
    """(TP, FP, FN, TN) (4,) float32 of the softmax liver probability against the masks, as
    fractions of the valid pixels.

    Args:
      maps: (B, S, S, K) logits. masks: (B, S, S) int, 1 = liver. valid: optional (B,) bool.
    """
    p = jax.nn.softmax(maps.astype(jnp.float32), axis=-1)[..., LIVER]
    y = (masks == LIVER).astype(jnp.float32)
    w = jnp.ones_like(p) if valid is None else jnp.broadcast_to(valid[:, None, None], p.shape)
    w = w.astype(jnp.float32) / jnp.maximum(jnp.sum(w), 1.0)
    return jnp.stack(
        [
            jnp.sum(w * p * y),
            jnp.sum(w * p * (1.0 - y)),
            jnp.sum(w * (1.0 - p) * y),
            jnp.sum(w * (1.0 - p) * (1.0 - y)),
        ]
    )


def soft_mcc(confusion: jnp.ndarray, epsilon: float = EPSILON) -> jnp.ndarray:
    """() MCC of a (TP, FP, FN, TN) confusion matrix (module docstring; 0 for an empty one)."""
    tp, fp, fn, tn = confusion
    product = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / jnp.sqrt(product + epsilon)


def mcc_loss(maps, masks, valid=None):
    """1 − MCC of the batch's soft confusion matrix, in the losses' exact-sum form.

    Args:
      maps: (B, S, S, K) logits. masks: (B, S, S) int targets. valid: optional (B,) bool.

    Returns:
      (numerator, denominator) = ((1 − MCC) · n, n), n the number of valid images, so that
      numerator / denominator = 1 − MCC (module docstring).
    """
    mcc = soft_mcc(soft_confusion(maps, masks, valid))
    n = jnp.asarray(maps.shape[0], jnp.float32)
    if valid is not None:
        n = jnp.sum(valid).astype(jnp.float32)
    return (1.0 - mcc) * n, n


def loss(outputs, masks, labels, class_weights, valid=None):
    """:func:`mcc_loss` of the class maps, as a :class:`~cmseg_jax.methods.Method`'s loss (the
    image labels and class weights are not used)."""
    del labels, class_weights
    return mcc_loss(outputs["maps"], masks, valid)
