"""cmseg_jax.metrics against scikit-learn as oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from cmseg_jax import metrics

NUM_PIXELS = 500


def _cases():
    rng = np.random.default_rng(0)
    rand = lambda p: rng.random(NUM_PIXELS) < p
    zeros = np.zeros(NUM_PIXELS, bool)
    ones = np.ones(NUM_PIXELS, bool)
    return {
        "random": (rand(0.4), rand(0.3)),
        "rare_positive": (rand(0.02), rand(0.01)),
        "all_negative_truth": (rand(0.3), zeros),
        "all_negative_pred": (zeros, rand(0.3)),
        "all_negative_both": (zeros, zeros),
        "all_positive_both": (ones, ones),
        "all_positive_truth": (rand(0.5), ones),
        "all_positive_pred": (ones, rand(0.5)),
        "inverted": (~(t := rand(0.5)), t),
        "perfect": (t, t),
    }


CASES = _cases()


def _sklearn_metrics(pred, target):
    # The module's convention: an undefined ratio is 1 when no positive exists anywhere, else 0.
    zero_division = 1.0 if not (pred.any() or target.any()) else 0.0
    kw = dict(y_true=target, y_pred=pred, zero_division=zero_division)
    return {
        "acc": skm.accuracy_score(target, pred),
        "mcc": skm.matthews_corrcoef(target, pred),
        "iou": skm.jaccard_score(**kw),
        "dice": skm.f1_score(**kw),
        "precision": skm.precision_score(**kw),
        "recall": skm.recall_score(**kw),
    }


# sklearn warns about single-label inputs; those are exactly the degenerate cases under test.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_metrics_match_sklearn(name):
    pred, target = CASES[name]
    counts = np.asarray(metrics.confusion_counts(pred, target))
    np.testing.assert_array_equal(
        counts, skm.confusion_matrix(target, pred, labels=[1, 0]).ravel()[[0, 2, 1, 3]]
    )
    got = metrics.metrics_from_confusion(counts)
    want = _sklearn_metrics(pred, target)
    assert set(got) == set(metrics.METRIC_NAMES)
    for key in metrics.METRIC_NAMES:
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], want[key], atol=1e-12, err_msg=key)


def test_empty_counts():
    counts = np.asarray(metrics.confusion_counts(np.zeros((0,), bool), np.zeros((0,), bool)))
    np.testing.assert_array_equal(counts, [0, 0, 0, 0])
    got = metrics.metrics_from_confusion(counts)
    assert np.isnan(got["acc"])
    assert got["mcc"] == 0.0
    for key in ("iou", "dice", "precision", "recall"):
        assert got[key] == 1.0


def test_metrics_vectorised_over_leading_axes():
    names = sorted(CASES)
    counts = np.stack([metrics.confusion_counts(*CASES[n]) for n in names]).reshape(2, 5, 4)
    got = metrics.metrics_from_confusion(counts)
    for key in metrics.METRIC_NAMES:
        assert got[key].shape == (2, 5)
        flat = [metrics.metrics_from_confusion(c)[key] for c in counts.reshape(10, 4)]
        np.testing.assert_array_equal(got[key].ravel(), flat)


def test_mcc_large_counts_no_overflow():
    counts = np.array([3e9, 1e8, 2e8, 6e10])
    tp, fp, fn, tn = counts
    want = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    np.testing.assert_allclose(metrics.metrics_from_confusion(counts)["mcc"], want, rtol=1e-12)


def test_confusion_counts_jit_vmap_and_valid():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 2, (4, 3, 8, 8))  # {0, 1} ints, (seeds, batch, H, W)
    target = rng.random((4, 3, 8, 8)) < 0.3
    valid = rng.random((4, 3, 8, 8)) < 0.8
    out = jax.jit(jax.vmap(metrics.confusion_counts))(pred, target, valid)
    assert out.shape == (4, 4) and out.dtype == jnp.int32
    for s in range(4):
        p, t = pred[s][valid[s]].astype(bool), target[s][valid[s]]
        want = [np.sum(p & t), np.sum(p & ~t), np.sum(~p & t), np.sum(~p & ~t)]
        np.testing.assert_array_equal(out[s], want)
    # Without a mask every pixel counts, and counts add up over batches.
    whole = metrics.confusion_counts(pred, target)
    per_batch = sum(metrics.confusion_counts(pred[:, b], target[:, b]) for b in range(3))
    np.testing.assert_array_equal(whole, per_batch)
    assert int(whole.sum()) == pred.size


def test_score_histograms_bins_and_additivity():
    scores = jnp.array([0.0, 0.05, 0.1, 0.5, 0.99, 1.0, 0.3, np.nan])
    target = jnp.array([1, 1, 1, 1, 1, 1, 0, 0])
    hist = metrics.score_histograms(scores, target, num_bins=10)
    assert hist.shape == (2, 10) and hist.dtype == jnp.int32
    np.testing.assert_array_equal(hist[0], [2, 1, 0, 0, 0, 1, 0, 0, 0, 2])
    np.testing.assert_array_equal(hist[1], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0])  # NaN not counted

    rng = np.random.default_rng(2)
    scores = rng.random((4, 5, 16, 16)).astype(np.float32)
    target = rng.random((4, 5, 16, 16)) < 0.4
    hist_fn = jax.jit(jax.vmap(metrics.score_histograms, in_axes=(0, 0, None)), static_argnums=2)
    per_seed = hist_fn(scores, target, 100)
    assert per_seed.shape == (4, 2, 100)
    per_batch = sum(hist_fn(scores[:, b], target[:, b], 100) for b in range(5))
    np.testing.assert_array_equal(per_seed, per_batch)
    np.testing.assert_array_equal(per_seed[:, 0].sum(-1), target.sum((1, 2, 3)))
    np.testing.assert_array_equal(
        per_seed[1, 0], np.bincount(np.floor(scores[1][target[1]] * 100).astype(int), minlength=100)
    )


def _np_histograms(scores, target, num_bins):
    """Numpy twin of score_histograms for host-side tests (no JAX dispatch/compile cost)."""
    bins = np.minimum(np.floor(scores * num_bins).astype(int), num_bins - 1)
    hist = [np.bincount(b, minlength=num_bins) for b in (bins[target], bins[~target])]
    return np.stack(hist)


def _np_counts(pred, target):
    """(..., N) bool -> (..., 4) tp, fp, fn, tn."""
    return np.stack(
        [
            (pred & target).sum(-1),
            (pred & ~target).sum(-1),
            (~pred & target).sum(-1),
            (~pred & ~target).sum(-1),
        ],
        axis=-1,
    )


def _random_scores(rng, n=20000):
    scores = rng.random(n)
    target = rng.random(n) < scores**2
    return scores, target


def test_pxap_vs_sklearn():
    rng = np.random.default_rng(3)
    scores, target = _random_scores(rng)
    scores = scores.astype(np.float32)  # JAX bins in float32; the oracle must bin the same way
    hist = np.asarray(metrics.score_histograms(scores, target, 1000))
    got = metrics.pxap(hist[0], hist[1])
    np.testing.assert_allclose(got, skm.average_precision_score(target, scores), atol=1e-2)
    # On scores that are exactly their bin's lower edge, the binning error vanishes.
    quantised = np.floor(scores * np.float32(1000)).astype(np.float64) / 1000
    np.testing.assert_allclose(got, skm.average_precision_score(target, quantised), rtol=1e-10)


def test_pxap_vectorised_and_degenerate():
    rng = np.random.default_rng(4)
    hists = []
    for _ in range(6):
        scores, target = _random_scores(rng, 2000)
        hists.append(_np_histograms(scores, target, 50))
    hists = np.stack(hists).reshape(2, 3, 2, 50)
    got = metrics.pxap(hists[:, :, 0], hists[:, :, 1])
    assert got.shape == (2, 3)
    np.testing.assert_allclose(
        got.ravel(), [metrics.pxap(h[0], h[1]) for h in hists.reshape(6, 2, 50)], rtol=1e-12
    )
    no_positive = metrics.pxap(np.zeros(10), np.ones(10))
    assert np.isnan(no_positive)
    separated = metrics.pxap(np.eye(10)[9], np.eye(10)[0] * 5)
    assert separated == 1.0


def test_confusion_at_threshold_matches_thresholded_scores():
    rng = np.random.default_rng(5)
    scores = np.floor(rng.random((3, 4000)) * 200) / 200  # on bin edges: binning is exact
    target = rng.random((3, 4000)) < scores
    hist = np.stack([_np_histograms(s, t, 200) for s, t in zip(scores, target, strict=True)])
    for threshold in (0.0, 0.25, 0.5, 0.735, 1.0):
        got = metrics.confusion_at_threshold(hist[:, 0], hist[:, 1], threshold)
        want = _np_counts(scores >= threshold, target)
        np.testing.assert_array_equal(got, want)
    per_seed = np.array([0.1, 0.5, 0.9])
    got = metrics.confusion_at_threshold(hist[:, 0], hist[:, 1], per_seed)
    want = _np_counts(scores >= per_seed[:, None], target)
    np.testing.assert_array_equal(got, want)
    # Every edge of the curve is the same as asking for it by value.
    curve = metrics.confusion_curve(hist[0, 0], hist[0, 1])
    edges = metrics.bin_edges(200)
    np.testing.assert_array_equal(
        curve, metrics.confusion_at_threshold(hist[0, 0], hist[0, 1], edges)
    )


def test_best_threshold_brute_force():
    rng = np.random.default_rng(6)
    hists = []
    for _ in range(3):
        scores, target = _random_scores(rng, 3000)
        hists.append(_np_histograms(scores, target, 40))
    hists = np.stack(hists)
    edges = metrics.bin_edges(40)
    for metric in metrics.METRIC_NAMES:
        got = metrics.best_threshold(hists[:, 0], hists[:, 1], metric=metric)
        assert got.shape == (3,)
        for s in range(3):
            values = [
                metrics.metrics_from_confusion(
                    metrics.confusion_at_threshold(hists[s, 0], hists[s, 1], t)
                )[metric]
                for t in edges
            ]
            assert got[s] == edges[int(np.argmax(values))], metric
    with pytest.raises(ValueError):
        metrics.best_threshold(hists[:, 0], hists[:, 1], metric="auc")
    assert np.isnan(metrics.best_threshold(np.zeros(10), np.zeros(10)))
