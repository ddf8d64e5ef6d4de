"""The model's outputs: class maps and their global-max-pooled class scores (class 1 = liver),
and the table of image-level poolings of the class maps (CAM_β's ``cam.pooling``).

How a training method turns these into losses, pixel scores and masks is in
:mod:`cmseg_jax.methods`; a method that pools its class maps (``Method.pools_class_maps``)
replaces ``pooled`` by its :class:`Pooling` of ``maps``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cmseg_jax.models import pooling

LIVER = 1


def global_max_pool(maps: jnp.ndarray) -> jnp.ndarray:
    """GMP: (B, S, S, K) class maps -> (B, K), the maximum of each map."""
    return jnp.max(maps, axis=(1, 2))


def seg_outputs(maps: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Segmentation head: class maps (B, S, S, K) and their GMP class scores (B, K)."""
    return {"maps": maps, "pooled": global_max_pool(maps)}


def image_probability(outputs: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """(B,) probability that the slice contains liver, from the pooled class scores."""
    return jax.nn.softmax(outputs["pooled"].astype(jnp.float32), axis=-1)[:, LIVER]


@dataclasses.dataclass(frozen=True, eq=False)  # one record per pooling: compared by identity
class Pooling:
    """One image-level pooling of the class maps (a value of ``config.cam.pooling``).

    Attributes:
      name: the value of ``cam.pooling``.
      pool: (maps (B, S, S, K) float32, **params) -> (B, K) float32 class scores.
      params: parameter -> default. Each parameter is the config field ``cam.<parameter>``
        (added to the base config with its default), a finite number > 0 (validated), and a
        traced grid field (its values × seeds train as one compiled program).
      description: what it computes, in a few words.
    """

    name: str
    pool: Callable
    params: dict[str, float] = dataclasses.field(default_factory=dict)
    description: str = ""


# The pooling of every method that does not choose one, and the default of cam.pooling.
DEFAULT_POOLING = "max"

POOLINGS: dict[str, Pooling] = {
    p.name: p
    for p in (
        Pooling("max", global_max_pool, description="global max pooling (GMP), the thesis'"),
        Pooling("mean", pooling.global_average_pool, description="global average pooling (GAP)"),
        Pooling(
            "lse",
            pooling.log_sum_exp_pool,
            {"lse_r": 4.0},
            "log-sum-exp pooling (1/r)·log mean exp(r·x): GAP as r → 0, GMP as r → ∞",
        ),
    )
}
