"""Intensity augmentation on device."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gamma_augment(
    rng: jax.Array, images: jnp.ndarray, low: float = 0.5, high: float = 1.5
) -> jnp.ndarray:
    """Random gamma per image, γ ~ U(low, high), applied on the [0, 1]-rescaled intensities.

    Args:
      rng: PRNG key.
      images: (B, H, W) intensities in [-1, 1].
      low, high: range of γ.

    Returns:
      (B, H, W) in [-1, 1]: 2·((x + 1) / 2)^γ − 1.
    """
    gamma = jax.random.uniform(rng, (images.shape[0],), minval=low, maxval=high)
    unit = jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)
    return 2.0 * unit ** gamma[:, None, None].astype(images.dtype) - 1.0
