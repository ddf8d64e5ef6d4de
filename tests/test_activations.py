"""The exact GELU of cmseg_jax.models.activations against jax.nn.gelu(approximate=False).

Tolerances (float32): the value is jax.nn.gelu's bit for bit; the derivative is within 2.5e-7
absolute of float64 truth and of autodiff of jax.nn.gelu (both float32 roundings of the same
function); the ConvMixerSeg loss at :tiny within 1e-6 relative, its parameter gradients within
1e-5 of each leaf's largest magnitude.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from jax import lax
from scipy import special

from cmseg_jax import methods
from cmseg_jax.data import dataset
from cmseg_jax.models import convmixerseg, decoder
from cmseg_jax.models.activations import gelu, gelu_grad
from cmseg_jax.train import make_model, seed_key


def reference(x):
    return jax.nn.gelu(x, approximate=False)


def _grid():
    edges = [0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 6.0, -6.0, 30.0, -30.0, 1e4, -1e4, 3e38]
    return jnp.concatenate(
        [jnp.linspace(-12.0, 12.0, 100_001, dtype=jnp.float32), jnp.asarray(edges, jnp.float32)]
    )


@pytest.mark.parametrize("compiled", [False, True])
def test_value_is_jax_nn_gelu_bit_for_bit(compiled):
    x = _grid()
    ours, ref = (jax.jit(gelu), jax.jit(reference)) if compiled else (gelu, reference)
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(ref(x)))
    xb = x.astype(jnp.bfloat16)
    assert ours(xb).dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(ours(xb).astype(jnp.float32)), np.asarray(ref(xb).astype(jnp.float32))
    )


def test_derivative_matches_float64_and_autodiff():
    x = _grid()[:-1]  # 3e38: x² overflows float32 alike in both formulations
    ours = np.asarray(jax.jit(jax.vmap(jax.grad(gelu)))(x), np.float64)
    autodiff = np.asarray(jax.jit(jax.vmap(jax.grad(reference)))(x), np.float64)
    x64 = np.asarray(x, np.float64)
    truth = 0.5 * special.erfc(-x64 / np.sqrt(2)) + x64 * np.exp(-0.5 * x64**2) / np.sqrt(2 * np.pi)
    assert np.abs(ours - truth).max() < 2.5e-7
    assert np.abs(ours - autodiff).max() < 2.5e-7
    np.testing.assert_array_equal(np.asarray(gelu_grad(x)), np.asarray(jax.vmap(jax.grad(gelu))(x)))


def test_composes_with_vmap_scan_remat_jvp_and_second_order():
    x = jnp.linspace(-5.0, 5.0, 257, dtype=jnp.float32)
    # Forward mode.
    t = jnp.cos(x)
    np.testing.assert_allclose(
        jax.jvp(gelu, (x,), (t,))[1], jax.jvp(reference, (x,), (t,))[1], atol=2.5e-7
    )
    # Second order (the tangent rule is itself differentiated).
    np.testing.assert_allclose(
        jax.vmap(jax.grad(jax.grad(gelu)))(x),
        jax.vmap(jax.grad(jax.grad(reference)))(x),
        atol=1e-6,
    )

    # A remat'ed scan body vmapped over a batch of weights, as the sweep runs the mixer layers.
    def loss(act, ws, h0):
        body = jax.checkpoint(lambda h, w: (h + act(h * w), None), prevent_cse=False)
        return jnp.sum(lax.scan(body, h0, ws)[0] ** 2)

    ws = jnp.linspace(0.2, 0.9, 3 * 5).reshape(3, 5)  # 3 "seeds" × 5 layers
    grads = {
        name: jax.jit(jax.vmap(jax.grad(functools.partial(loss, act), argnums=(0, 1)), (0, None)))(
            ws, x
        )
        for name, act in (("ours", gelu), ("reference", reference))
    }
    for a, b in zip(grads["ours"], grads["reference"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def _erfc_expansions(fn, *args) -> int:
    """Fused computations of ``fn``'s compiled program holding an erfc expansion (>= 20 ops)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return sum(len(re.findall(r'op_name="[^"]*erfc', c)) >= 20 for c in re.split(r"\n(?=\S)", text))


def test_backward_pass_of_a_scanned_layer_computes_no_erfc():
    # Autodiff of the erfc form recomputes the erfc expansion in the backward loop of a scan
    # (2 here); the custom JVP's backward needs only the native erf: the forward's 1.
    def grad_fn(act):
        def layer(h, w):
            z = act(h @ w)
            mean = z.mean(0)
            var = (z * z).mean(0) - mean * mean
            return h + (z - mean) * lax.rsqrt(var + 1e-5), None

        return jax.grad(lambda x, ws: jnp.sum(lax.scan(layer, x, ws)[0] ** 2), argnums=(0, 1))

    x = jax.random.normal(jax.random.PRNGKey(0), (256, 32))
    ws = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32)) / 6
    assert _erfc_expansions(grad_fn(gelu), x, ws) == 1
    assert _erfc_expansions(grad_fn(reference), x, ws) == 2


def _old_decoder_grad(f):
    # The fused decoder's derivative before cmseg_jax.models.activations (float32, native erf).
    f32 = f.astype(jnp.float32)
    cdf = 0.5 * (1.0 + lax.erf(f32 * 0.7071067811865476))
    return cdf + f32 * 0.3989422804014327 * jnp.exp(-0.5 * f32 * f32)


def _tiny_loss_and_grads(config):
    size, batch = config.data.image_size, config.train.batch_size
    rng = np.random.default_rng(0)
    masks = (rng.random((batch, size, size)) < 0.2).astype(np.uint8)
    images = dataset.encode_images(rng.uniform(-1, 1, (batch, size, size))).astype(np.float32)
    labels = masks.reshape(batch, -1).max(1).astype(np.int32)
    model, method = make_model(config), methods.of(config)
    variables = model.init(seed_key(0, 0), jnp.zeros((1, size, size)), train=False)

    @jax.jit
    def loss_and_grads(params, batch_stats):
        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            num, den = method.loss(outputs, masks, labels, jnp.asarray([1.0, 4.0]))
            return num / den, updates["batch_stats"]

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    return loss_and_grads(variables["params"], variables["batch_stats"])


@pytest.mark.parametrize("variant", ["tiny", "tiny,model.convmixerseg.decoder_chunk=0"])
def test_convmixerseg_loss_and_gradients_match_the_erfc_autodiff_form(variant, monkeypatch):
    # decoder_chunk > 0 (tiny's default) is the fused decoder, 0 its plain autodiff.
    config = load_config(f"configs/cam_beta.py:{variant}")
    (loss, stats), grads = _tiny_loss_and_grads(config)
    monkeypatch.setattr(convmixerseg, "gelu", reference)
    monkeypatch.setattr(decoder, "gelu", reference)
    monkeypatch.setattr(decoder, "gelu_grad", _old_decoder_grad)
    (loss_ref, stats_ref), grads_ref = _tiny_loss_and_grads(config)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for tree, tree_ref in ((grads, grads_ref), (stats, stats_ref)):
        for (path, a), b in zip(
            jax.tree_util.tree_flatten_with_path(tree)[0],
            jax.tree_util.tree_leaves(tree_ref),
            strict=True,
        ):
            scale = float(np.abs(b).max())
            np.testing.assert_allclose(
                a, b, rtol=0, atol=1e-5 * max(scale, 1e-6), err_msg=jax.tree_util.keystr(path)
            )
