"""Analytic FLOPs and bytes moved per seed-step (one Adam step of one seed on one batch).

XLA's own cost analysis counts a loop body once, whatever its trip count, so for the scanned
mixer layers and the batch-chunked decoder it undercounts by up to ``depth``×. This model counts
every pass instead; ``tests/test_cost.py`` checks it against XLA's figures on configurations whose
loops run exactly once.

FLOPs: 2 per multiply-add of every matmul and convolution (the convention of MFU figures);
elementwise work (GELU, BatchNorm, Adam) is not counted. A training step is the forward pass,
the input gradients (1× forward) and the weight gradients (1× forward) of every layer, plus the
recomputation ``model.remat`` adds (the scanned mixer layers once more; twice with a
``model.convmixerseg.remat_group``) and the fused decoder's
extra passes (its transposed conv 6× instead of 3×, see ``models/decoder.py``).

Bytes: the traffic to and from memory an ideal implementation cannot avoid, in the compute
dtype: every activation tensor written once and read twice in the forward pass (BatchNorm reads
its input for the statistics and again to normalise; every elementwise chain fused into its
producer), twice that in the backward pass, and parameters, gradients and Adam moments read or
written once per step (float32). A floor for rooflines: XLA's own "bytes accessed", which counts
every fusion's operands and outputs, layout copies included, is 2-4× higher (tested).

The model is ConvMixerSeg's. For FCN-ResNet-50 (``model.arch``), which has no loop inside its
step, :func:`step_cost` reads XLA's cost analysis of the compiled one-seed step instead (its FLOPs
include elementwise work; its bytes are XLA's "bytes accessed", not a floor).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections

from cmseg_jax import methods
from cmseg_jax.models import registry


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The sizes of one image's tensors (see ``models/convmixerseg.py``)."""

    size: int  # S, input side
    padded: int  # P, S padded to a multiple of p
    patches: int  # n = P / p
    patch: int  # p
    hidden: int  # h
    depth: int
    kernel: int  # k of the depthwise conv
    transition: int  # C_t
    classes: int  # K
    smoothing: bool
    bilinear: bool

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> Shapes:
        f, size = registry.convmixerseg_fields(config), config.data.image_size
        p = f["patch_size"]
        padded = -(-size // p) * p
        return cls(
            size=size,
            padded=padded,
            patches=padded // p,
            patch=p,
            hidden=f["hidden"],
            depth=f["depth"],
            kernel=f["kernel_size"],
            transition=f["transition"],
            classes=f["num_classes"],
            smoothing=bool(config.model.smoothing),
            bilinear=f["upsample"] == "bilinear",
        )


def forward_flops(s: Shapes) -> dict[str, float]:
    """Forward matmul/conv FLOPs of one image, by part."""
    cells = s.patches**2
    parts = {
        "embed": 2.0 * cells * s.patch**2 * s.hidden,
        "depthwise": 2.0 * s.depth * cells * s.kernel**2 * s.hidden,
        "pointwise": 2.0 * s.depth * cells * s.hidden**2,
    }
    if s.bilinear:
        parts["classifier"] = 2.0 * cells * s.hidden * s.classes
    else:
        parts["decoder"] = 2.0 * cells * s.hidden * s.patch**2 * s.transition
        parts["classifier"] = 2.0 * s.padded**2 * s.transition * s.classes
    if s.smoothing:
        # Two banded (S, S) matrices applied to K maps (models/smoothing.py, 'matmul').
        parts["smoothing"] = 2.0 * 2 * s.size**3 * s.classes
    return parts


def _fused(config: ml_collections.ConfigDict) -> bool:
    """The fused decoder recomputes its C_t maps; with one chunk per batch its passes are
    one-trip loops, which XLA unrolls and merges into the plain count."""
    return (
        0 < config.model.convmixerseg.decoder_chunk < config.train.batch_size
        and methods.of(config).head == "seg"
        and config.model.convmixerseg.upsample != "bilinear"
    )


def _nested(config: ml_collections.ConfigDict) -> bool:
    """Nested remat of the mixer layers (``model.convmixerseg.remat_group``)."""
    return bool(config.model.remat) and int(config.model.convmixerseg.remat_group) > 1


def train_step_flops(config: ml_collections.ConfigDict) -> float:
    """Matmul/conv FLOPs of one seed-step (batch ``train.batch_size``)."""
    s = Shapes.of(config)
    f = forward_flops(s)
    # Forward + input gradients + weight gradients; the embedding needs no input gradient and
    # the smoothing has no weights.
    total = 3.0 * sum(f.values()) - f["embed"] - f.get("smoothing", 0.0)
    if config.model.remat:
        # The scanned mixer layers are recomputed; XLA merges the plain decoder block's
        # recomputation with its forward pass (it sits outside any loop).
        total += f["depthwise"] + f["pointwise"]
        if _nested(config):  # and once more: the groups' forward passes store their layer inputs
            total += f["depthwise"] + f["pointwise"]
    if _fused(config):
        # Statistics pass + logits pass forward; two recomputations in the backward pass.
        total += 3.0 * f["decoder"] + 2.0 * f["classifier"]
    return total * config.train.batch_size


def train_step_bytes(config: ml_collections.ConfigDict) -> float:
    """Modelled bytes moved by one seed-step (see the module docstring)."""
    s = Shapes.of(config)
    width = jnp.dtype(config.model.dtype).itemsize
    cells = s.patches**2
    # Activation elements written in the forward pass, per image.
    written = s.padded**2 + cells * s.hidden * (1 + 2 * s.depth)
    if s.bilinear:
        written += s.size**2 * s.classes
    else:
        written += s.padded**2 * (s.transition + s.classes)
    if s.smoothing:
        written += 2 * s.size**2 * s.classes
    passes = 3.0  # forward: write once, read about twice
    passes *= 3.0  # + backward, twice the forward
    if config.model.remat:
        passes += 3.0 * (2 if _nested(config) else 1)
    activations = passes * written * width * config.train.batch_size
    if _fused(config):
        # Two more passes over the C_t maps (module docstring of models/decoder.py).
        activations += 2 * 3.0 * s.padded**2 * s.transition * width * config.train.batch_size
    params = _param_count(s)
    # Params, gradients and two Adam moments read, params and moments written (float32).
    return activations + 7.0 * params * 4


def _param_count(s: Shapes) -> int:
    layer = s.kernel**2 * s.hidden + s.hidden + s.hidden**2 + s.hidden + 4 * s.hidden
    count = s.patch**2 * s.hidden + s.hidden + 2 * s.hidden + s.depth * layer
    if s.bilinear:
        return count + s.hidden * s.classes + s.classes
    decoder = s.hidden * s.patch**2 * s.transition + s.transition + 2 * s.transition
    return count + decoder + s.transition * s.classes + s.classes


def step_cost(config: ml_collections.ConfigDict, compiled_step: Callable[[], Any]) -> dict:
    """FLOPs and bytes of one seed-step, and where they come from.

    Args:
      config: the experiment config.
      compiled_step: returns the compiled one-seed training step (``jit(...).lower(...)
        .compile()``); called only for architectures without an analytic model.

    Returns:
      {"flops", "bytes", "source"}: this module's model for ConvMixerSeg ('analytic; bytes a
      floor'), XLA's cost analysis otherwise; None where the compiler reports none.
    """
    if registry.of(config).analytic_cost:
        return {
            "flops": train_step_flops(config),
            "bytes": train_step_bytes(config),
            "source": "analytic (cmseg_jax/cost.py); bytes a floor",
        }
    analysis = compiled_step().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) and analysis else analysis
    if not analysis or "flops" not in analysis:  # XLA:GPU compiled deviceless reports none
        return {
            "flops": None,
            "bytes": None,
            "source": "not reported: this compiler gives no cost analysis of the compiled step",
        }
    return {
        "flops": float(analysis["flops"]),
        "bytes": float(analysis.get("bytes accessed", math.nan)),
        "source": "XLA cost analysis of the compiled step; bytes as XLA accesses them",
    }
