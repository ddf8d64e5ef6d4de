"""What every network here shares: PyTorch's default init, its BatchNorm, a parameter count.

A new network imports these rather than copying them, so its parameters start as PyTorch's
would and its BatchNorm keeps PyTorch's running statistics (:mod:`cmseg_jax.models.batchnorm`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from cmseg_jax.models.batchnorm import BatchNorm


def torch_uniform(fan_in: int):
    """PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def batch_norm(train: bool, momentum: float, dtype: Any, name: str) -> BatchNorm:
    """A BatchNorm over the last axis: batch statistics in train mode, running ones in eval.

    Statistics are reduced in float32 whatever ``dtype`` is, and the running averages and affine
    parameters are float32; the running variance is PyTorch's (unbiased).
    """
    return BatchNorm(
        use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype, name=name
    )


def count_params(params) -> int:
    """Number of trainable scalars in a params pytree (BatchNorm scale and bias included)."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
