"""The pooling family between GMP and GAP: global average pooling and log-sum-exp pooling.

CAM_β trains on an image-level score per class pooled from its class maps (``cam.pooling``,
:data:`cmseg_jax.models.heads.POOLINGS`). The thesis pools with the maximum (GMP), which gives
the gradient of an image to one pixel per class map; the mean (GAP) gives it to every pixel alike
(Kolesnikov & Lampert's observation, thesis §5.1.1: GMP underestimates object sizes, GAP
overestimates them). Log-sum-exp pooling (Pinheiro & Collobert, 2015) goes between the two with
one temperature r > 0:

    LSE_r(x) = (1/r) · log( mean_ij exp(r · x_ij) ),

GAP as r → 0 and GMP as r → ∞ (mean <= LSE_r <= max for every r). Its gradient is the softmax of
r·x over the pixels: r sets how many pixels share an image's gradient. ``r`` is ``cam.lse_r``, a
traced grid field (``configs/grids/lse_r.py``: r × seeds as one compiled program).

Shapes: maps (B, S, S, K) float32 -> (B, K) float32; ``r`` a Python float or a traced () value.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def global_average_pool(maps: jnp.ndarray) -> jnp.ndarray:
    """GAP: the mean of each class map, (B, S, S, K) -> (B, K)."""
    return jnp.mean(maps, axis=(1, 2))


def log_sum_exp_pool(maps: jnp.ndarray, lse_r) -> jnp.ndarray:
    """LSE_r of each class map (module docstring), (B, S, S, K) -> (B, K).

    Computed about the map's maximum m: LSE_r = m + log(s) / r with s = mean exp(r·(x − m)) in
    (0, 1], so nothing overflows for any r. Where s is near 1 (small r, or a flat map) log(s) is
    taken as log1p(mean expm1(r·(x − m))), which keeps its relative precision: r = 1e-6 gives
    GAP to float32 rounding rather than to the rounding of log(1 − 1e-6 · spread). m is held
    constant under differentiation (LSE_r − m does not depend on it), so the gradient is exactly
    softmax(r·x) over the pixels of each map.

    Args:
      maps: (B, S, S, K) class maps.
      lse_r: the temperature r > 0 (validated as ``cam.lse_r``).
    """
    x = maps.astype(jnp.float32)
    r = jnp.asarray(lse_r, jnp.float32)
    peak = lax.stop_gradient(jnp.max(x, axis=(1, 2), keepdims=True))
    z = r * (x - peak)  # <= 0
    s = jnp.mean(jnp.exp(z), axis=(1, 2))
    near_one = s > 0.5
    s_minus_one = jnp.mean(jnp.expm1(z), axis=(1, 2))
    # Each branch sees a safe argument where it is not taken: neither has an infinite gradient.
    log_s = jnp.where(
        near_one,
        jnp.log1p(jnp.where(near_one, s_minus_one, 0.0)),
        jnp.log(jnp.where(near_one, 1.0, s)),
    )
    return peak[:, 0, 0] + log_s / r
