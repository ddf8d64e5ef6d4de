"""Binary segmentation metrics as sufficient statistics.

Two halves:

* **Device side** (``jax.numpy``; jit/vmap friendly): :func:`confusion_counts` and
  :func:`score_histograms` reduce a batch to small integer arrays that *add up* across batches,
  devices and hosts. Nothing here divides; ratios are taken once, at the end, on the host.
* **Host side** (``numpy``, float64, vectorised over any leading axes such as ``(seeds, splits)``):
  :func:`metrics_from_confusion` turns counts into metrics; :func:`pxap`,
  :func:`confusion_at_threshold`, :func:`confusion_curve` and :func:`best_threshold` work on score
  histograms, following Choe et al., "Evaluating Weakly Supervised Object Localization Methods
  Right", CVPR 2020 (PxAP; threshold chosen on validation data only).

Conventions:

* Counts are ordered ``(tp, fp, fn, tn)`` along the last axis; liver (target 1) is the positive
  class.
* Accuracy is global (both classes); IoU, Dice, precision and recall are for the positive class.
* Score bins: with ``B`` bins a score ``s`` falls in bin ``min(floor(s * B), B - 1)``; bin ``k`` has
  lower edge ``k / B``. A threshold ``t`` predicts positive every bin whose lower edge is ``>= t``,
  i.e. for scores that are exact bin edges this is the rule ``score >= t``.

Degenerate cases (chosen to match scikit-learn, which the tests use as oracle):

* **MCC** is 0 when its denominator is 0 (a row or column of the confusion matrix is empty,
  e.g. all-positive or all-negative truth or prediction) -- scikit-learn's ``matthews_corrcoef``.
* **Precision, recall, IoU, Dice** with a zero denominator are 1.0 when there are no positives
  in both prediction and truth (``tp + fp + fn == 0``: perfect agreement on an empty liver) and
  0.0 otherwise (e.g. recall when the truth is empty but the prediction is not). This equals
  scikit-learn with ``zero_division=1.0`` in the first case and ``zero_division=0.0`` in the second.
* **Accuracy** of zero pixels (all counts 0) is NaN; scikit-learn refuses empty input.
* **PxAP** is NaN when there is no positive pixel (recall is undefined).
* **best_threshold** breaks ties toward the lowest threshold.

Overflow: :func:`confusion_counts` and :func:`score_histograms` return int32 (the default JAX
integer without x64), which is exact up to 2**31 - 1 pixels per call -- about 8,000 slices of
512 x 512. Accumulate across batches and epochs in int64 on the host (``np.asarray(c, np.int64)``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

METRIC_NAMES = ("acc", "mcc", "iou", "dice", "precision", "recall")

# A threshold equal to a bin edge must select that bin no matter how it was computed
# (k / B, linspace(0, 1, B + 1)[k], a float32 round trip, ...); compare in bin units with slack.
_EDGE_TOLERANCE_BINS = 1e-6


# ----------------------------------------------------------------------------------------------
# Device side
# ----------------------------------------------------------------------------------------------


def confusion_counts(pred, target, valid=None) -> jnp.ndarray:
    """Confusion-matrix counts of a binary prediction.

    Pure and shape-polymorphic: ``jax.vmap`` it over a seed axis to get ``(seeds, 4)``.

    Args:
        pred: ``(...)`` bool or {0, 1}; nonzero means predicted liver.
        target: ``(...)`` bool or {0, 1}, same shape as ``pred``; nonzero means liver.
        valid: optional ``(...)`` bool mask (broadcastable to ``pred``); pixels where it is False
            are not counted (padding, ignored regions).

    Returns:
        ``(4,)`` int32 array ``(tp, fp, fn, tn)`` summed over every axis.
    """
    pred = jnp.asarray(pred).astype(bool)
    target = jnp.asarray(target).astype(bool)
    if valid is None:
        valid = jnp.ones_like(pred)
    valid = jnp.broadcast_to(jnp.asarray(valid).astype(bool), pred.shape)

    def count(mask):
        return jnp.sum(mask & valid, dtype=jnp.int32)

    return jnp.stack(
        [
            count(pred & target),
            count(pred & ~target),
            count(~pred & target),
            count(~pred & ~target),
        ]
    )


def score_histograms(scores, target, num_bins: int = 1000, valid=None) -> jnp.ndarray:
    """Histograms of a predicted score on positive and on negative pixels.

    These are the sufficient statistics of every threshold-dependent metric and of PxAP; they add
    up across batches, devices and hosts.

    Args:
        scores: ``(...)`` float scores in ``[0, 1]`` (e.g. the liver probability). Values outside
            are clipped into the first / last bin; NaN scores are not counted anywhere, so
            non-finite scores show up as histograms that sum to fewer pixels than the confusion
            counts.
        target: ``(...)`` bool or {0, 1}, same shape as ``scores``; nonzero means liver.
        num_bins: number of equal-width bins ``B`` on ``[0, 1]`` (static under jit).
        valid: optional ``(...)`` bool mask broadcastable to ``scores``; False pixels are skipped.

    Returns:
        ``(2, num_bins)`` int32: row 0 counts scores of target==1 pixels, row 1 of target==0
        pixels. Score ``s`` falls in bin ``min(floor(s * B), B - 1)``.
    """
    scores = jnp.asarray(scores)
    target = jnp.asarray(target).astype(bool)
    keep = ~jnp.isnan(scores)
    if valid is not None:
        keep = keep & jnp.broadcast_to(jnp.asarray(valid).astype(bool), scores.shape)
    # Bin in float32 at least: float16 scores times 1000 lose the bin resolution.
    scaled = jnp.floor(jnp.where(keep, scores, 0).astype(jnp.float32) * num_bins)
    bins = jnp.clip(scaled, 0, num_bins - 1).astype(jnp.int32)
    # Positives take bins [0, B), negatives [B, 2B): one bincount instead of two.
    flat_index = jnp.where(target, bins, bins + num_bins).ravel()
    counts = jnp.bincount(flat_index, weights=keep.ravel().astype(jnp.int32), length=2 * num_bins)
    return counts.astype(jnp.int32).reshape(2, num_bins)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


def _safe_ratio(num: np.ndarray, den: np.ndarray, if_zero: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den != 0``, else ``if_zero``; no warnings."""
    out = np.array(np.broadcast_to(if_zero, np.shape(den)), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def metrics_from_confusion(counts) -> dict[str, np.ndarray]:
    """Metrics from confusion counts (degenerate cases: see the module docstring).

    Args:
        counts: ``(..., 4)`` counts ``(tp, fp, fn, tn)``, any integer or float dtype.

    Returns:
        Dict keyed by :data:`METRIC_NAMES`; each value a float64 array of shape ``(...)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape[-1] != 4:
        raise ValueError(f"counts must end in an axis of 4 (tp, fp, fn, tn); got {counts.shape}")
    tp, fp, fn, tn = np.moveaxis(counts, -1, 0)
    # No positive anywhere (truth and prediction both empty) counts as perfect agreement.
    empty_positive = np.where(tp + fp + fn == 0, 1.0, 0.0)
    total = tp + fp + fn + tn

    # Split the root so the product of four counts of ~1e9 stays far from float64 overflow.
    mcc_den = np.sqrt((tp + fp) * (tp + fn)) * np.sqrt((tn + fp) * (tn + fn))
    return {
        "acc": _safe_ratio(tp + tn, total, np.nan),
        "mcc": _safe_ratio(tp * tn - fp * fn, mcc_den, 0.0),
        "iou": _safe_ratio(tp, tp + fp + fn, empty_positive),
        "dice": _safe_ratio(2 * tp, 2 * tp + fp + fn, empty_positive),
        "precision": _safe_ratio(tp, tp + fp, empty_positive),
        "recall": _safe_ratio(tp, tp + fn, empty_positive),
    }


def _check_histograms(hist_pos, hist_neg) -> tuple[np.ndarray, np.ndarray]:
    hist_pos = np.asarray(hist_pos, dtype=np.float64)
    hist_neg = np.asarray(hist_neg, dtype=np.float64)
    if hist_pos.shape != hist_neg.shape:
        raise ValueError(f"histogram shapes differ: {hist_pos.shape} vs {hist_neg.shape}")
    return hist_pos, hist_neg


def _tail_sums(hist: np.ndarray) -> np.ndarray:
    """``(..., B) -> (..., B + 1)``: entry ``k`` sums bins ``k..B-1`` (entry ``B`` is 0)."""
    rev = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([rev, np.zeros_like(hist[..., :1])], axis=-1)


def bin_edges(num_bins: int) -> np.ndarray:
    """``(B + 1,)`` float64 edges ``linspace(0, 1, B + 1)``, as stored in ``final_stats.npz``."""
    return np.linspace(0.0, 1.0, num_bins + 1)


def confusion_curve(hist_pos, hist_neg) -> np.ndarray:
    """Confusion counts at every bin edge used as threshold.

    Args:
        hist_pos: ``(..., B)`` histogram of scores on positive pixels.
        hist_neg: ``(..., B)`` histogram of scores on negative pixels.

    Returns:
        ``(..., B + 1, 4)`` float64 counts ``(tp, fp, fn, tn)``; index ``k`` is the threshold
        ``bin_edges(B)[k]`` (``k = 0`` predicts everything positive, ``k = B`` nothing).
    """
    hist_pos, hist_neg = _check_histograms(hist_pos, hist_neg)
    tp = _tail_sums(hist_pos)
    fp = _tail_sums(hist_neg)
    fn = hist_pos.sum(-1, keepdims=True) - tp
    tn = hist_neg.sum(-1, keepdims=True) - fp
    return np.stack([tp, fp, fn, tn], axis=-1)


def confusion_at_threshold(hist_pos, hist_neg, threshold) -> np.ndarray:
    """Confusion counts when every bin whose lower edge is ``>= threshold`` is predicted positive.

    Args:
        hist_pos: ``(..., B)`` histogram of scores on positive pixels.
        hist_neg: ``(..., B)`` histogram of scores on negative pixels.
        threshold: scalar or ``(...)`` array broadcastable to the leading axes; a bin edge
            (as from :func:`best_threshold`) selects exactly the bins from that edge up.

    Returns:
        ``(..., 4)`` int64 counts ``(tp, fp, fn, tn)``.
    """
    hist_pos, hist_neg = _check_histograms(hist_pos, hist_neg)
    num_bins = hist_pos.shape[-1]
    threshold = np.asarray(threshold, dtype=np.float64)[..., None]
    positive = np.arange(num_bins) >= threshold * num_bins - _EDGE_TOLERANCE_BINS
    tp = np.sum(hist_pos * positive, axis=-1)
    fp = np.sum(hist_neg * positive, axis=-1)
    fn = np.sum(hist_pos, axis=-1) - tp
    tn = np.sum(hist_neg, axis=-1) - fp
    return np.rint(np.stack(np.broadcast_arrays(tp, fp, fn, tn), axis=-1)).astype(np.int64)


def pxap(hist_pos, hist_neg) -> np.ndarray:
    """Pixel average precision (PxAP, Choe et al. CVPR 2020) from score histograms.

    ``PxAP = sum_k precision(t_k) * (recall(t_k) - recall(t_{k+1}))`` over the bin edges
    ``t_0 = 0 < ... < t_B = 1`` (scores ``>= t`` count as positive). This is scikit-learn's
    ``average_precision_score`` (no interpolation) on scores rounded down to their bin edge.

    Args:
        hist_pos: ``(..., B)`` histogram of scores on positive pixels.
        hist_neg: ``(..., B)`` histogram of scores on negative pixels.

    Returns:
        ``(...)`` float64 PxAP; NaN where there is no positive pixel.
    """
    curve = confusion_curve(hist_pos, hist_neg)
    tp, fp, fn = curve[..., 0], curve[..., 1], curve[..., 2]
    num_pos = tp[..., 0]
    recall = _safe_ratio(tp, tp + fn, 0.0)
    # Where nothing is predicted positive, tp is 0 at this and every higher edge, so the recall
    # step there is 0 and the value chosen for precision does not matter.
    precision = _safe_ratio(tp, tp + fp, 1.0)
    delta_recall = recall[..., :-1] - recall[..., 1:]
    ap = np.sum(precision[..., :-1] * delta_recall, axis=-1)
    return np.where(num_pos > 0, ap, np.nan)


def best_threshold(hist_pos, hist_neg, metric: str = "mcc") -> np.ndarray:
    """Bin edge that maximises ``metric``; choose it on validation data only, then apply to test.

    Candidates are all ``B + 1`` bin edges (including 0 = all positive and 1 = all negative).
    Ties go to the lowest threshold.

    Args:
        hist_pos: ``(..., B)`` histogram of scores on positive pixels.
        hist_neg: ``(..., B)`` histogram of scores on negative pixels.
        metric: one of :data:`METRIC_NAMES`.

    Returns:
        ``(...)`` float64 thresholds (values of ``bin_edges(B)``); NaN where the histograms are
        empty (no pixels at all).
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES}")
    curve = confusion_curve(hist_pos, hist_neg)
    values = metrics_from_confusion(curve)[metric]
    no_pixels = curve[..., 0, :].sum(-1) == 0
    index = np.argmax(np.where(np.isnan(values), -np.inf, values), axis=-1)
    edges = bin_edges(curve.shape[-2] - 1)
    return np.where(no_pixels, np.nan, edges[index])
