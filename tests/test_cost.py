"""The analytic FLOPs/bytes model against XLA's own cost analysis."""

import functools

import jax
import jax.numpy as jnp
import pytest

from cmseg_jax import cost
from cmseg_jax.sweep.plan import _batch_split
from cmseg_jax.train import make_train, seed_key
from tests.conftest import load_config


def _set_model(config, fields=None, **more):
    """Sets model fields: shared ones in ``config.model``, ConvMixerSeg's in its sub-dict."""
    for name, value in {**(fields or {}), **more}.items():
        node = config.model if name in config.model else config.model.convmixerseg
        node[name] = value


def _xla_cost(config):
    trainer = make_train(config, num_train=config.train.batch_size)
    state = jax.eval_shape(trainer.init, seed_key(0, 0))
    weights = jax.ShapeDtypeStruct((config.model.num_classes,), jnp.float32)
    step = jax.jit(functools.partial(trainer.train_steps, length=1))
    analysis = step.lower(state, _batch_split(config), weights, 0, 0).compile().cost_analysis()
    return analysis[0] if isinstance(analysis, list | tuple) else analysis


# XLA counts a loop body once, so the model is checked where every loop runs once: depth 1, the
# decoder in one chunk or plain. FLOPs at thesis size, where matmuls dominate (at smaller widths
# XLA's count of elementwise work, one FLOP per element of GELU, BatchNorm, Adam and the
# shift-and-add depthwise conv, grows to half the total). Bytes with the depthwise conv as one
# convolution (compiled, never run): the shift-and-add form reads its input once per tap, which
# XLA counts 81 times over although it comes from cache.
@pytest.mark.parametrize(
    "spec, model",
    [
        ("configs/cam_beta.py", {"depth": 1, "remat": False, "decoder_chunk": 0}),
        ("configs/full_ce.py", {"depth": 1, "remat": True, "remat_group": 0, "decoder_chunk": 0}),
        ("configs/ablation_no_gs.py", {"depth": 1, "remat": False, "decoder_chunk": 16}),
    ],
)
def test_flops_agree_with_xla_cost_analysis(spec, model):
    config = load_config(spec)
    _set_model(config, model)
    xla = _xla_cost(config)
    # XLA also counts elementwise ops; the model only matmuls and convolutions.
    assert 0.9 <= xla["flops"] / cost.train_step_flops(config) <= 1.25


@pytest.mark.parametrize(
    "spec, model",
    [
        ("configs/cam_beta.py:cpu", {"depth": 1, "remat": False, "decoder_chunk": 0}),
        (
            "configs/cam_beta.py:cpu",
            {"depth": 1, "remat": True, "remat_group": 0, "decoder_chunk": 16},
        ),
        (
            "configs/full_ce.py:cpu",
            {"depth": 1, "remat": True, "remat_group": 0, "decoder_chunk": 0},
        ),
        ("configs/ablation_no_gs_bilinear.py:cpu", {"depth": 1, "remat": False}),
    ],
)
def test_minimum_bytes_are_a_floor_of_xla_bytes_accessed(spec, model):
    config = load_config(spec)
    _set_model(config, model, depthwise_impl="conv")
    xla = _xla_cost(config)
    # XLA counts every fusion's operands and outputs, layout copies included.
    assert 1.0 <= xla["bytes accessed"] / cost.train_step_bytes(config) <= 4.5


def test_thesis_step_flops_by_hand():
    config = load_config("configs/cam_beta.py")
    _set_model(config, remat=False, decoder_chunk=0)
    f = cost.forward_flops(cost.Shapes.of(config))
    # 74² patch cells; the transposed conv maps 256 channels to 7·7·100 outputs per cell.
    assert f["decoder"] == 2 * 74**2 * 256 * 7 * 7 * 100
    assert f["pointwise"] == 2 * 20 * 74**2 * 256**2
    assert cost.train_step_flops(config) == pytest.approx(1.55e12, rel=0.05)
    # Remat adds a forward pass of the mixer layers; the fused decoder three of its own.
    _set_model(config, remat=True, remat_group=0, decoder_chunk=2)
    mixers = 16 * (f["depthwise"] + f["pointwise"])
    fused = 16 * (3 * f["decoder"] + 2 * f["classifier"])
    assert cost.train_step_flops(config) == pytest.approx(1.55e12 + mixers + fused, rel=0.05)
    # Nested remat (the thesis config's default) adds a second forward pass of the mixer layers.
    _set_model(config, remat_group=4)
    assert cost.train_step_flops(config) == pytest.approx(1.55e12 + 2 * mixers + fused, rel=0.05)
