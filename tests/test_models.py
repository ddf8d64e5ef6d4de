"""Model: parameter counts, shapes, and each hand-written op against a reference implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy import signal

from cmseg_jax import methods
from cmseg_jax.models.batchnorm import BatchNorm
from cmseg_jax.models.common import count_params
from cmseg_jax.models.convmixerseg import (
    ConvMixerSeg,
    Depthwise,
    PatchDecode,
    PatchEmbed,
    upgrade_legacy_layout,
)
from cmseg_jax.models.depthwise import depthwise_conv
from cmseg_jax.models.smoothing import gaussian_kernel_1d, gaussian_smooth


def _params(model, size=512):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size)), train=False)
    )
    return count_params(variables["params"])


def test_thesis_parameter_count():
    # 13,312 embed + 20 × 87,808 mixer + 1,254,700 decoder + 202 classifier.
    assert _params(ConvMixerSeg()) == 3_024_374


def test_cam_alpha_has_the_same_parameters():
    # The dense layer of CAM_α takes the place of the 1×1 classifier: 100·2 + 2 either way.
    assert _params(ConvMixerSeg(head="cam_alpha")) == 3_024_374


def test_bilinear_ablation_drops_the_decoder_block():
    # No transposed conv (1,254,500) and no decoder BN (200); classifier 256·2 + 2.
    assert _params(ConvMixerSeg(upsample="bilinear")) == 3_024_374 - 1_254_700 - 202 + 514


@pytest.mark.parametrize("size", [32, 35, 40])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"head": "cam_alpha"},
        {"upsample": "bilinear", "smoothing_sigma": 0.0},
        {"pointwise_residual": False},
    ],
)
def test_output_shapes_cover_the_full_input(size, kwargs):
    model = ConvMixerSeg(hidden=8, depth=1, transition=4, smoothing_size=5, **kwargs)
    x = jnp.zeros((3, size, size))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    out = model.apply(variables, x, train=False)
    assert out["maps"].shape == (3, size, size, 2)
    assert out["pooled"].shape == (3, 2)
    scores, masks, image_pred = methods.get("cam_alpha" if kwargs else "cam_beta").predict(out, 0.5)
    assert scores.shape == masks.shape == (3, size, size)
    assert image_pred.shape == (3,)


def test_gaussian_matches_dense_2d_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 40, 37, 3)).astype(np.float32)
    for sigma, size in [(7.0, 50), (1.75, 12), (2.0, 7)]:
        taps = gaussian_kernel_1d(sigma, size).astype(np.float64)
        k2 = np.outer(taps, taps)
        got = np.asarray(gaussian_smooth(jnp.asarray(x), sigma, size))
        got_conv = np.asarray(gaussian_smooth(jnp.asarray(x), sigma, size, impl="conv"))
        np.testing.assert_allclose(got, got_conv, atol=1e-5)
        c = size // 2
        for b in range(2):
            for ch in range(3):
                # Output pixel i sums x[i + d] k[d + c]: a correlation whose kernel origin is tap c.
                full = signal.correlate2d(x[b, :, :, ch].astype(np.float64), k2, mode="full")
                ref = full[size - 1 - c : size - 1 - c + 40, size - 1 - c : size - 1 - c + 37]
                np.testing.assert_allclose(got[b, :, :, ch], ref, atol=1e-5)


def test_gaussian_kernel_is_centred_and_normalised():
    taps = gaussian_kernel_1d(7.0, 50)
    assert taps.shape == (50,)
    np.testing.assert_allclose(taps.sum(), 1.0, rtol=1e-6)
    assert np.argmax(taps) == 25  # offset 0 sits at index K // 2
    np.testing.assert_allclose(taps[25 - 24 : 25], taps[25 + 24 : 25 : -1], rtol=1e-6)


def test_gaussian_preserves_a_constant_away_from_the_border():
    x = jnp.ones((1, 64, 64, 2))
    y = gaussian_smooth(x, 2.0, 13)
    np.testing.assert_allclose(np.asarray(y[0, 10:-10, 10:-10]), 1.0, rtol=1e-5)


def test_depthwise_shift_equals_conv_forward_and_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 11, 13, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(9, 9, 5)), jnp.float32)

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(depthwise_conv(x, w, impl)))

    np.testing.assert_allclose(
        depthwise_conv(x, w, "shift"), depthwise_conv(x, w, "conv"), rtol=1e-4, atol=1e-4
    )
    g_shift = jax.grad(loss("shift"), argnums=(0, 1))(x, w)
    g_conv = jax.grad(loss("conv"), argnums=(0, 1))(x, w)
    for a, b in zip(g_shift, g_conv, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    # Vmapped over seeds (weights batched too), both stay equal.
    xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, -w])
    np.testing.assert_allclose(
        jax.vmap(lambda a, b: depthwise_conv(a, b, "shift"))(xs, ws),
        jax.vmap(lambda a, b: depthwise_conv(a, b, "conv"))(xs, ws),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("shape", [(2, 11, 13, 5), (3, 19, 19, 4), (1, 6, 5, 2)])
def test_depthwise_kernel_gradient_by_fft_equals_the_direct_sum(shape):
    # The k² lags of each channel's correlation (depthwise._kernel_grad, by FFT) against the sum
    # written out in float64, including images smaller than the kernel.
    from cmseg_jax.models.depthwise import _kernel_grad

    rng = np.random.default_rng(3)
    x, g, k = rng.normal(size=shape), rng.normal(size=shape), 9
    _, h, w, _ = shape

    def direct(x, g):
        xp = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
        return np.array(
            [[(xp[:, i : i + h, j : j + w] * g).sum((0, 1, 2)) for j in range(k)] for i in range(k)]
        )

    want = direct(x, g)
    got = _kernel_grad(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32), k)
    assert got.shape == (k, k, shape[-1]) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    # bfloat16 activations: computed in float32 from their values.
    x16, g16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(g, jnp.bfloat16)
    want16 = direct(np.asarray(x16, np.float64), np.asarray(g16, np.float64))
    np.testing.assert_allclose(
        _kernel_grad(x16, g16, k), want16, rtol=0, atol=2e-5 * np.abs(want16).max()
    )


def test_patch_embed_equals_strided_conv():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 21, 14, 3)), jnp.float32)
    module = PatchEmbed(features=6, patch_size=7)
    variables = module.init(jax.random.PRNGKey(0), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    ref = lax.conv_general_dilated(
        x, kernel, (7, 7), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(module.apply(variables, x), ref + bias, rtol=1e-5, atol=1e-5)


def test_patch_decode_equals_transposed_conv():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 3, 2, 4)), jnp.float32)
    module = PatchDecode(features=5, patch_size=7)
    variables = module.init(jax.random.PRNGKey(0), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]  # (C, p, p, F)
    # Reference: a naive scatter of every input pixel's p×p×F block.
    got = np.asarray(module.apply(variables, x))  # patch-major (B, n, n, p, p, F)
    assert got.shape == (2, 3, 2, 7, 7, 5)
    got = got.transpose(0, 1, 3, 2, 4, 5).reshape(2, 21, 14, 5)
    ref = np.zeros((2, 21, 14, 5), np.float32)
    for i in range(3):
        for j in range(2):
            block = np.einsum("bc,cpqd->bpqd", np.asarray(x[:, i, j]), np.asarray(kernel))
            ref[:, 7 * i : 7 * i + 7, 7 * j : 7 * j + 7] = block
    np.testing.assert_allclose(got, ref + np.asarray(bias), rtol=1e-5, atol=1e-5)


def test_depthwise_module_initialises_like_pytorch():
    module = Depthwise(kernel_size=9)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 256)))
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (9, 9, 256)
    assert np.abs(kernel).max() <= 1 / 9 + 1e-7  # U(±1/sqrt(fan_in)), fan_in = 81
    assert np.abs(kernel).max() > 0.9 / 9


def _loss_and_grads(model, variables, x):
    def loss(params):
        out, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(out["maps"])) + jnp.sum(out["pooled"] ** 2), (out, updates)

    (value, (out, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return value, out, updates, grads


def _assert_trees_close(a, b, rtol, atol):
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b), strict=True
    ):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.abs(x).max(), 1e-6)
        np.testing.assert_allclose(
            x / scale, y / scale, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.parametrize(
    "kwargs, alt",
    [
        ({}, {"remat": True}),  # recomputation changes memory, not the function
        ({"depth": 4}, {"remat": True, "remat_group": 2}),  # nested: the same again
        ({}, {"decoder_chunk": 2}),  # fused, batch-chunked decoder == plain autodiff
        # The same two properties in other corners of the model: in the slow run.
        pytest.param({}, {"decoder_chunk": 4, "remat": True}, marks=pytest.mark.slow),
        pytest.param({"head": "cam_alpha"}, {"remat": True}, marks=pytest.mark.slow),
        pytest.param({"upsample": "bilinear"}, {"remat": True}, marks=pytest.mark.slow),
        pytest.param({"pointwise_residual": False}, {"decoder_chunk": 1}, marks=pytest.mark.slow),
    ],
)
def test_remat_and_fused_decoder_compute_the_same_function(kwargs, alt):
    common = dict(hidden=8, depth=3, transition=6, smoothing_size=5) | kwargs
    plain, other = ConvMixerSeg(**common), ConvMixerSeg(**common, **alt)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 30, 30))
    variables = plain.init(jax.random.PRNGKey(0), x, train=False)
    # Same variable tree whatever the formulation.
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
        other.init(jax.random.PRNGKey(0), x, train=False)
    )
    # Non-trivial running statistics, so that evaluation exercises them.
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree_util.tree_map(lambda v: v + 0.3, variables["batch_stats"]),
    }
    v1, out1, upd1, g1 = _loss_and_grads(plain, variables, x)
    v2, out2, upd2, g2 = _loss_and_grads(other, variables, x)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    _assert_trees_close(out1, out2, rtol=1e-5, atol=1e-5)
    _assert_trees_close(upd1, upd2, rtol=1e-5, atol=1e-5)
    _assert_trees_close(g1, g2, rtol=1e-4, atol=1e-3)
    _assert_trees_close(
        plain.apply(variables, x, train=False), other.apply(variables, x, train=False), 1e-5, 1e-5
    )


def test_mixer_layers_are_one_scan_over_stacked_parameters():
    model = ConvMixerSeg()
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 512, 512)), train=False)
    )
    mixer = variables["params"]["mixer"]
    assert mixer["dw"]["kernel"].shape == (20, 9, 9, 256)
    assert mixer["pw"]["kernel"].shape == (20, 256, 256)
    assert variables["batch_stats"]["mixer"]["dw_bn"]["mean"].shape == (20, 256)
    # Per layer: 9·9·256 + 256 (dw) + 2·256 (BN) + 256·256 + 256 (pw) + 2·256 (BN) = 87,808.
    assert count_params(mixer) == 20 * 87_808


def test_legacy_unrolled_layout_maps_onto_the_scan_layout():
    model = ConvMixerSeg(hidden=8, depth=3, transition=6, smoothing_size=5)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 21, 21))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    # The earlier layout, built by hand from today's: one entry per layer, decoder at the top.
    legacy = {}
    for collection, tree in variables.items():
        flat = {k: v for k, v in tree.items() if k not in ("mixer", "head")}
        flat.update(tree["head"])
        for name, leaves in tree["mixer"].items():
            for i in range(3):
                flat[f"mixer{i}_{name}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], leaves)
        legacy[collection] = flat
    upgraded = upgrade_legacy_layout(legacy)
    assert jax.tree_util.tree_structure(upgraded) == jax.tree_util.tree_structure(variables)
    _assert_trees_close(upgraded, variables, 0, 0)
    np.testing.assert_array_equal(
        model.apply(upgraded, x, train=False)["maps"],
        model.apply(variables, x, train=False)["maps"],
    )


def test_batchnorm_keeps_pytorchs_unbiased_running_variance():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 3, 3, 2)) * [1.0, 3.0] + [0.5, -1.0]).astype(np.float32)
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.PRNGKey(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    flat = x.reshape(-1, 2).astype(np.float64)  # n = 18 values per channel
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 * 1.0 + 0.1 * flat.var(0, ddof=1), rtol=1e-6)
    # The batch itself is normalised with the biased variance, as PyTorch does.
    want = (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # With a mask, n counts the values it keeps.
    mask = np.zeros(x.shape, bool)
    mask[:, :2, :2] = True
    _, updates = bn.apply(variables, x, mask=jnp.asarray(mask), mutable=["batch_stats"])
    kept = x[:, :2, :2].reshape(-1, 2).astype(np.float64)  # n = 8
    np.testing.assert_allclose(
        updates["batch_stats"]["var"], 0.9 + 0.1 * kept.var(0, ddof=1), rtol=1e-6
    )
    # Eval mode normalises with the running statistics.
    stats = jax.tree.map(np.asarray, stats)
    out = BatchNorm(use_running_average=True).apply(
        {"params": variables["params"], "batch_stats": stats}, x
    )
    np.testing.assert_allclose(
        out, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5), rtol=1e-5, atol=1e-6
    )


def test_convmixerseg_batchnorms_keep_the_unbiased_variance():
    # depth 0: no scan, so every BatchNorm's input is concrete here; the mixer layers use the
    # same module (tested above) with n = batch · height · width.
    common = dict(hidden=4, depth=0, transition=3, smoothing_size=3)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 12, 12), minval=-1, maxval=1)
    plain = ConvMixerSeg(**common)
    variables = plain.init(jax.random.PRNGKey(0), x, train=False)
    inputs = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNorm):
            inputs[context.module.name] = (np.asarray(args[0], np.float64), kwargs.get("mask"))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _, updates = plain.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(inputs) == {"embed_bn", "decoder_bn"}
    embed = inputs["embed_bn"][0].reshape(-1, 4)
    np.testing.assert_allclose(
        updates["batch_stats"]["embed_bn"]["var"], 0.9 + 0.1 * embed.var(0, ddof=1), rtol=1e-5
    )
    # Decoder BN: n = the pixels inside the crop (12² of 14²) × batch.
    features, mask = inputs["decoder_bn"]
    inside = features[np.broadcast_to(np.asarray(mask), features.shape)].reshape(-1, 3)
    assert inside.shape[0] == 2 * 12 * 12
    want = 0.9 + 0.1 * inside.var(0, ddof=1)
    np.testing.assert_allclose(updates["batch_stats"]["head"]["decoder_bn"]["var"], want, rtol=1e-5)
    # The fused decoder keeps the same running variance.
    _, fused = ConvMixerSeg(**common, decoder_chunk=1).apply(
        variables, x, train=True, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(fused["batch_stats"]["head"]["decoder_bn"]["var"], want, rtol=1e-5)
