"""BatchNorm with PyTorch's semantics, for every BatchNorm of both models.

Flax's ``nn.BatchNorm`` keeps the *biased* batch variance in its running average; PyTorch's
``BatchNorm2d`` keeps the *unbiased* one, ``var · n / (n − 1)`` with n the number of values per
channel in the batch (batch × height × width, or the pixels a mask keeps). Both normalise the batch
in train mode with the biased variance. :class:`BatchNorm` is flax's module (same variable names,
shapes, initial values and train-mode arithmetic: statistics reduced in float32 as E[x²] − E[x]²)
with PyTorch's running-variance update, so eval-mode outputs match PyTorch's.

Running averages: ``mean ← m · mean + (1 − m) · batch_mean`` and ``var ← m · var + (1 − m) ·
unbiased(batch_var, n)``, with flax's momentum m (0.9 == PyTorch's 0.1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

EPS = 1e-5


def unbiased(var: jnp.ndarray, count) -> jnp.ndarray:
    """PyTorch's running-variance input: the biased batch variance × n / (n − 1).

    Args:
      var: (C,) biased variance over n values per channel.
      count: n, a number or a (C,) array (a mask may keep different counts per channel).
    """
    count = jnp.asarray(count, jnp.float32)
    # n = 1 has no unbiased variance (PyTorch refuses to train on it); keep the biased one.
    return var * (count / jnp.maximum(count - 1.0, 1.0))


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over the last axis with PyTorch's running variance (module docstring).

    Attributes:
      use_running_average: normalise with the running statistics (eval) instead of the batch's.
      momentum: flax momentum of the running averages (0.9 == PyTorch 0.1).
      epsilon: added to the variance.
      dtype: dtype of the output (None: the input's promoted with float32).
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = EPS
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """Normalises ``x`` (..., C); ``mask`` (broadcastable to ``x``) picks the values the batch
        statistics use (all of them by default)."""
        x = jnp.asarray(x)
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
            where = None if mask is None else jnp.asarray(mask, bool)
            mean = x32.mean(axes, where=where)
            mean2 = lax.square(x32).mean(axes, where=where)
            var = jnp.maximum(0.0, mean2 - lax.square(mean))
            if not self.is_initializing():
                if where is None:
                    count = x.size // features
                else:
                    count = jnp.sum(jnp.broadcast_to(where, x.shape), axes)
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * unbiased(var, count)
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        y = x - mean
        y = y * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return jnp.asarray(y, self.dtype or jnp.result_type(x, jnp.float32))
