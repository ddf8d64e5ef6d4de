"""The exact (erf) GELU of ConvMixerSeg, with a derivative that needs no erfc expansion.

``gelu(x) = x · Φ(x)``, ``Φ(x) = erfc(−x / √2) / 2``: PyTorch's ``nn.GELU()`` default, computed
with ``jax.nn.gelu(approximate=False)``'s own float operations (so the same values, bit for bit).
Its derivative is ``gelu'(x) = Φ(x) + x · φ(x)``, ``φ(x) = exp(−x² / 2) / √(2π)``.

JAX lowers ``erfc`` to a long HLO expansion (about 60–85 ops: a rational approximation per
range, an exp, divisions and selects), while ``erf`` stays one HLO op that XLA:CPU emits as a
short vectorised polynomial. Differentiated as written, ``x / 2 · erfc(−x / √2)`` keeps the erfc
in the backward pass (its derivative term ``Φ(x)``), and XLA:CPU, which fuses elementwise
producers into each consumer rather than storing them, recomputes the erfc expansion from the
pre-activation there as well. :func:`gelu` is a ``jax.custom_jvp`` whose tangent rule takes
``Φ`` from the native erf (:func:`gelu_grad`): the erfc expansion is computed once per
activation, in the forward pass. In the compiled ``configs/cam_beta.py:cpu`` training step that
is 4 erfc expansions (patch embedding, depthwise and pointwise GELU of the scanned mixer layer,
decoder) instead of 6, plus 4 native erfs.

Accuracy (float32, against float64): the value is ``jax.nn.gelu``'s; ``gelu'`` has an absolute
error under 2.5e-7 over the float32 range (autodiff of the erfc form: 1.4e-7); ``1 + erf(x/√2)``
cancels for very negative x, where ``gelu'`` itself is below 1e-3.

Being a JVP rule it composes with ``vmap``, ``lax.scan`` / ``nn.scan``, ``jax.checkpoint`` /
``nn.remat``, forward-mode differentiation and higher orders (the rule is itself differentiable).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["gelu", "gelu_grad"]


def _constants(dtype):
    # In the argument's dtype, as jax.nn.gelu does: bfloat16 activations stay bfloat16.
    return np.sqrt(0.5).astype(dtype), np.asarray(1.0 / np.sqrt(2.0 * np.pi)).astype(dtype)


def _gelu(x):
    x = jnp.asarray(x)
    sqrt_half, _ = _constants(x.dtype)
    return 0.5 * x * lax.erfc(-x * sqrt_half)  # jax.nn.gelu(approximate=False)'s expression


@jax.custom_jvp
def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """The exact GELU: ``jax.nn.gelu(x, approximate=False)``'s values; see the module docstring."""
    return _gelu(x)


def gelu_grad(x: jnp.ndarray) -> jnp.ndarray:
    """gelu'(x) = Φ(x) + x·φ(x) in ``x``'s dtype, Φ from the native erf (no erfc expansion)."""
    x = jnp.asarray(x)
    sqrt_half, inv_sqrt_2pi = _constants(x.dtype)
    return 0.5 * (1.0 + lax.erf(x * sqrt_half)) + x * inv_sqrt_2pi * jnp.exp(-0.5 * x * x)


@gelu.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _gelu(x), gelu_grad(x) * t
