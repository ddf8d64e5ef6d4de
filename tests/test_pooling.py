"""The pooling family: LSE_r between GAP and GMP, its gradient, r as a traced grid field (r ×
seeds in one program, each point as its r alone), one-line errors of bad values and combinations."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import whole_epoch

from cmseg_jax import config_base, methods, validate
from cmseg_jax.errors import UsageError
from cmseg_jax.models.heads import POOLINGS
from cmseg_jax.models.pooling import global_average_pool, log_sum_exp_pool
from cmseg_jax.train import make_train, seed_key
from tests.conftest import load_config
from tests.test_train import _random_split

LSE = "configs/cam_beta.py:tiny,cam.pooling='lse'"


def _maps(seed=0, shape=(3, 16, 16, 2), scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


def _reference(maps, r):
    """LSE_r in float64, about the maximum."""
    x = maps.astype(np.float64)
    peak = x.max(axis=(1, 2))
    return peak + np.log(np.mean(np.exp(r * (x - peak[:, None, None])), axis=(1, 2))) / r


def test_lse_goes_from_the_mean_to_the_max_as_r_grows():
    maps = _maps()
    mean, peak = maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))
    np.testing.assert_allclose(global_average_pool(jnp.asarray(maps)), mean, rtol=1e-6)
    values = []
    for r in (1e-8, 1e-6, 1e-3, 0.1, 1.0, 4.0, 16.0, 64.0, 1e3, 1e6):
        got = np.asarray(log_sum_exp_pool(jnp.asarray(maps), r))
        np.testing.assert_allclose(got, _reference(maps, r), atol=2e-5)
        assert np.all(got >= mean - 1e-5) and np.all(got <= peak + 1e-5), r
        values.append(got)
    assert np.all(np.diff(np.stack(values), axis=0) >= -2e-5)  # non-decreasing in r
    # The limits, to float32 rounding of the map values (|x| <~ 10 here).
    np.testing.assert_allclose(values[0], mean, atol=2e-5)
    np.testing.assert_allclose(values[-1], peak, atol=2e-5)
    assert np.all(values[4] - mean > 0.1) and np.all(peak - values[4] > 0.1)  # r = 1: between
    # A map of one value pools to that value for every r; nothing overflows at a large r.
    flat = jnp.full((1, 8, 8, 2), 250.0)
    for r in (1e-6, 1.0, 1e9):
        np.testing.assert_allclose(log_sum_exp_pool(flat, r), 250.0, rtol=1e-6)


def test_lse_gradient_is_the_pixel_softmax_of_r_x():
    maps = _maps(1, (2, 8, 8, 2))
    for r in (1e-6, 0.5, 16.0, 1e6):
        grad = np.asarray(jax.grad(lambda m, r=r: log_sum_exp_pool(m, r)[0, 1])(jnp.asarray(maps)))
        x = maps[0, :, :, 1].astype(np.float64) * r
        softmax = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        np.testing.assert_allclose(grad[0, :, :, 1], softmax, atol=1e-6)
        assert np.all(grad[1] == 0) and np.all(grad[0, :, :, 0] == 0)
    # A traced r has a finite gradient too (and r's own gradient).
    dr = jax.grad(lambda r: log_sum_exp_pool(jnp.asarray(maps), r).sum())(jnp.float32(2.0))
    assert np.isfinite(float(dr))


def test_the_method_pools_with_its_configured_pooling():
    maps = _maps(2, (2, 8, 8, 2))
    outputs = {"maps": jnp.asarray(maps), "pooled": jnp.zeros((2, 2))}
    config = load_config(f"{LSE},cam.lse_r=16.0")
    method = methods.of(config)
    assert method.pooling is POOLINGS["lse"] and dict(method.pooling_params) == {"lse_r": 16.0}
    np.testing.assert_allclose(method.outputs(outputs)["pooled"], _reference(maps, 16.0), atol=2e-5)
    # A traced r replaces the config's.
    traced = method.outputs(outputs, lse_r=jnp.float32(1.0))["pooled"]
    np.testing.assert_allclose(traced, _reference(maps, 1.0), atol=2e-5)
    mean = methods.of(load_config("configs/cam_beta.py:tiny,cam.pooling='mean'"))
    np.testing.assert_allclose(mean.outputs(outputs)["pooled"], maps.mean(axis=(1, 2)), rtol=1e-6)


def test_r_grid_points_train_in_one_program_each_as_its_r_alone():
    base = load_config(LSE)
    split = jax.device_put(_random_split(8, base.data.image_size, seed=4))
    weights = jnp.asarray([0.6, 2.5], jnp.float32)
    trainer = make_train(base, num_train=8, traced=("cam.lse_r",))
    epoch = chex.assert_max_traces(whole_epoch(trainer), n=1)
    run = jax.jit(jax.vmap(epoch, in_axes=(0, None, None, None)))
    keys = jnp.stack([seed_key(0, s) for _ in range(2) for s in (0, 1)])  # r-major, as a sweep

    def train(r_values):
        r = jnp.repeat(jnp.asarray(r_values, jnp.float32), 2)
        states = jax.vmap(trainer.init)(keys, {"cam.lse_r": r})
        return run(states, split, weights, jnp.int32(0))

    states, stats = train((1.0, 16.0))
    assert not np.allclose(stats["loss_sum"][:2], stats["loss_sum"][2:])  # r changes training
    # Other values of r run in the same program: r is an input of it, not a constant.
    _, other = train((4.0, 64.0))
    assert not np.allclose(other["loss_sum"], stats["loss_sum"])
    # The r = 16 point trains as r = 16 alone.
    evals = jax.vmap(trainer.evaluate, in_axes=(0, None, None))(states, split, weights)
    alone = make_train(load_config(f"{LSE},cam.lse_r=16.0"), num_train=8)
    a_states = jax.vmap(alone.init)(keys[2:])
    a_states, a_stats = jax.jit(jax.vmap(whole_epoch(alone), in_axes=(0, None, None, None)))(
        a_states, split, weights, jnp.int32(0)
    )
    a_evals = jax.vmap(alone.evaluate, in_axes=(0, None, None))(a_states, split, weights)
    np.testing.assert_allclose(stats["loss_sum"][2:], a_stats["loss_sum"], rtol=1e-5)
    np.testing.assert_array_equal(evals["confusion"][2:], a_evals["confusion"])
    np.testing.assert_array_equal(evals["cls_confusion"][2:], a_evals["cls_confusion"])
    np.testing.assert_allclose(evals["loss_num"][2:], a_evals["loss_num"], rtol=1e-5)


def test_the_lse_study_is_a_traced_grid_over_r():
    config = load_config("configs/grids/lse_r.py:cpu")
    validate.check_config(config)
    traced, untraced = config_base.split_grid(config)
    assert traced == {"cam.lse_r": (1.0, 4.0, 16.0, 64.0)} and untraced == {}
    assert config.method == "cam_beta" and config.cam.pooling == "lse"


def _error(config) -> str:
    with pytest.raises(UsageError) as err:
        validate.check_config(config)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_r_is_a_one_line_error_naming_the_field(value):
    config = load_config(LSE)
    config.cam.lse_r = value
    assert _error(config) == f"config.cam.lse_r={value!r}: must be a finite number > 0"
    # Whatever the pooling: the field is always read.
    config.cam.pooling = "max"
    assert _error(config).startswith("config.cam.lse_r=")


def test_a_bad_r_in_a_grid_is_a_one_line_error_naming_the_field():
    config = load_config("configs/grids/lse_r.py:tiny")
    config.sweep.grid = "cam.lse_r=4.0,-2.0"
    assert _error(config) == (
        "config.cam.lse_r=-2.0: must be a finite number > 0 (a sweep.grid value)"
    )


@pytest.mark.parametrize(
    "spec, start",
    [
        ("configs/full_ce.py:tiny,cam.pooling='lse'", "config.cam.pooling='lse': pools the class"),
        ("configs/cam_alpha.py:tiny,cam.pooling='mean'", "config.cam.pooling='mean': pools the"),
        ("configs/grids/lse_r.py:tiny,cam.pooling='max'", "config.sweep.grid: cam.lse_r is a"),
        ("configs/grids/lse_r.py:tiny,method='full',cam.pooling='max'", "config.sweep.grid: cam"),
    ],
)
def test_pooling_applies_to_cam_beta_only(spec, start):
    message = _error(load_config(spec))
    assert message.startswith(start), message


def test_a_grid_over_the_pooling_checks_each_of_its_programs():
    config = load_config("configs/grids/lse_r.py:tiny")
    config.sweep.grid = "cam.pooling=lse,mean; cam.lse_r=1.0,4.0"
    assert "unused by method 'cam_beta' with cam.pooling='mean'" in _error(config)
    config.sweep.grid = "cam.pooling=max,mean,lse"
    validate.check_config(config)  # an untraced grid over the pooling: one program each
