"""The MCC loss: 1 − MCC of the batch's soft confusion matrix against numpy and scikit-learn, its
gradient, its (numerator, denominator) form, and the full_mcc method training through the CLI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from cmseg_jax import methods, validate
from cmseg_jax import workdir as workdir_io
from cmseg_jax.mcc_loss import mcc_loss
from tests.conftest import ROOT, load_config
from tests.test_sweep import _check_outputs


def _batch(seed=0, n=4, size=8):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, size, size, 2)).astype(np.float32) * 2
    masks = (rng.uniform(size=(n, size, size)) < 0.3).astype(np.uint8)
    return logits, masks


def _reference(logits, masks, valid):
    """1 − MCC in float64 from raw soft counts over the valid images."""
    x = logits[valid].astype(np.float64)
    p = np.exp(x[..., 1]) / np.exp(x).sum(-1)
    y = masks[valid].astype(np.float64)
    tp, fp = (p * y).sum(), (p * (1 - y)).sum()
    fn, tn = ((1 - p) * y).sum(), ((1 - p) * (1 - y)).sum()
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 1.0 - mcc


def test_mcc_loss_matches_a_numpy_reference_and_padding_counts_nothing():
    logits, masks = _batch()
    valid = np.array([True, True, False, True])
    num, den = mcc_loss(jnp.asarray(logits), jnp.asarray(masks), jnp.asarray(valid))
    assert float(den) == 3.0  # the valid images
    np.testing.assert_allclose(float(num / den), _reference(logits, masks, valid), rtol=1e-5)
    # The padded image's content does not matter.
    logits[2], masks[2] = -logits[2], 1 - masks[2]
    num2, _ = mcc_loss(jnp.asarray(logits), jnp.asarray(masks), jnp.asarray(valid))
    assert float(num2) == float(num)
    # Without valid: every image, and the same as all-valid.
    all_valid = np.ones(4, bool)
    num, den = mcc_loss(jnp.asarray(logits), jnp.asarray(masks))
    assert float(den) == 4.0
    np.testing.assert_allclose(float(num / den), _reference(logits, masks, all_valid), rtol=1e-5)


def test_saturated_probabilities_give_scikit_learns_mcc():
    logits, masks = _batch(1)
    hard = np.where(logits[..., 1:] > logits[..., :1], 40.0, -40.0).astype(np.float32)
    saturated = np.concatenate([-hard, hard], axis=-1)  # p(liver) = 0 or 1 to float32
    num, den = mcc_loss(jnp.asarray(saturated), jnp.asarray(masks))
    expected = matthews_corrcoef(masks.ravel(), (hard[..., 0] > 0).ravel())
    np.testing.assert_allclose(1.0 - float(num / den), expected, rtol=1e-5)


def test_a_perfect_prediction_has_loss_zero_and_the_inverse_two():
    _, masks = _batch(2)
    sign = np.where(masks == 1, 1.0, -1.0)[..., None].astype(np.float32)
    perfect = np.concatenate([-20 * sign, 20 * sign], axis=-1)
    num, den = mcc_loss(jnp.asarray(perfect), jnp.asarray(masks))
    assert abs(float(num / den)) < 1e-6
    num, den = mcc_loss(jnp.asarray(-perfect), jnp.asarray(masks))
    assert abs(float(num / den) - 2.0) < 1e-6


def _grad(logits, masks, valid=None):
    def loss(x):
        num, den = mcc_loss(x, jnp.asarray(masks), None if valid is None else jnp.asarray(valid))
        return num / den

    return np.asarray(jax.grad(loss)(jnp.asarray(logits)))


def test_the_gradient_is_finite_zero_on_padding_and_zero_without_liver():
    logits, masks = _batch(3)
    valid = np.array([True, False, True, True])
    grad = _grad(logits, masks, valid)
    assert np.all(np.isfinite(grad)) and np.any(grad[0] != 0)
    assert np.all(grad[1] == 0)  # the padded image
    # Against a central difference of the float64 reference, for a few logits.
    eps = 1e-5
    for i in [(0, 3, 4, 1), (0, 3, 4, 0), (2, 0, 7, 1), (3, 5, 1, 0)]:
        up, down = logits.astype(np.float64), logits.astype(np.float64)
        up[i] += eps
        down[i] -= eps
        numeric = (_reference(up, masks, valid) - _reference(down, masks, valid)) / (2 * eps)
        np.testing.assert_allclose(grad[i], numeric, rtol=1e-3, atol=1e-8)
    # A batch without liver: MCC is undefined, the loss is 1 and teaches nothing (no NaN).
    none = np.zeros_like(masks)
    num, den = mcc_loss(jnp.asarray(logits), jnp.asarray(none))
    assert float(num / den) == 1.0
    grad = _grad(logits, none)
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)
    # A batch of padding only adds (0, 0) to a split's sums, with a zero gradient.
    padding = jnp.zeros(4, bool)
    num, den = mcc_loss(jnp.asarray(logits), jnp.asarray(masks), padding)
    assert (float(num), float(den)) == (0.0, 0.0)
    grad = jax.grad(lambda x: mcc_loss(x, jnp.asarray(masks), padding)[0])(jnp.asarray(logits))
    assert np.all(np.asarray(grad) == 0)


def test_full_mcc_is_a_fully_supervised_method_on_the_mcc_loss():
    config = load_config("configs/full_mcc.py:tiny")
    validate.check_config(config)
    method = methods.of(config)
    assert method.name == "full_mcc" and method.head == "seg" and not method.pools_class_maps
    logits, masks = _batch(4)
    outputs = {"maps": jnp.asarray(logits), "pooled": jnp.zeros((4, 2))}
    weights = jnp.asarray([0.1, 9.0])  # class weights and image labels are not used
    num, den = method.loss(outputs, jnp.asarray(masks), jnp.zeros(4, jnp.int32), weights)
    np.testing.assert_allclose(float(num / den), _reference(logits, masks, np.ones(4, bool)), 1e-5)
    # Scores, masks and image predictions are full supervision's.
    full = methods.get("full")
    for got, want in zip(method.predict(outputs, 0.5), full.predict(outputs, 0.5), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def mcc_sweep(tmp_path_factory, cli_env):
    """A 1-seed full_mcc:tiny sweep of 4 epochs through the CLI."""
    workdir = tmp_path_factory.mktemp("mcc") / "run"
    cmd = [
        sys.executable,
        "-m",
        "cmseg_jax.sweep",
        "--config=configs/full_mcc.py:tiny",
        "--config.train.epochs=4",
        "--seeds=0",
        f"--workdir={workdir}",
        "--progress=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_a_tiny_full_mcc_sweep_trains(mcc_sweep):
    _check_outputs(mcc_sweep, seeds=[0], epochs=4)  # every file of a sweep, as the other configs'
    rows, _ = workdir_io.read_metrics(mcc_sweep)
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["epoch"])
    assert [r["epoch"] for r in train] == [1, 2, 3, 4]
    assert not any(r["diverged"] for r in train)
    losses = [r["train_loss"] for r in train]  # the steps' mean 1 − MCC
    assert all(0.0 <= v <= 2.0 for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    evaluated = [r["loss"] for r in train]  # the evaluation of the training split after each epoch
    assert evaluated[-1] < evaluated[0], evaluated
