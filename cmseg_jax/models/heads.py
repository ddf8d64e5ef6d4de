"""The model's outputs: class maps and their global-max-pooled class scores (class 1 = liver).

How a training method turns these into losses, pixel scores and masks is in
:mod:`cmseg_jax.methods`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LIVER = 1


def seg_outputs(maps: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Segmentation head: class maps (B, S, S, K) and their GMP class scores (B, K)."""
    return {"maps": maps, "pooled": jnp.max(maps, axis=(1, 2))}


def image_probability(outputs: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """(B,) probability that the slice contains liver, from the pooled class scores."""
    return jax.nn.softmax(outputs["pooled"].astype(jnp.float32), axis=-1)[:, LIVER]
