"""The LSE study: CAM_β with log-sum-exp pooling of the class maps, r = 1, 4, 16, 64 (3 epochs,
as configs/cam_beta.py).

LSE_r = (1/r)·log mean exp(r·x) goes from GAP (r → 0) to GMP (r → ∞), the thesis' pooling
(cmseg_jax/models/pooling.py). r (``cam.lse_r``) is traced, so every r × seed trains in one
compiled program. The class maps are logits, so r is in 1/logit: a pixel's share of its image's
gradient is softmax(r·x) over the map, so at r = 64 a pixel 1/16 logit below the map's maximum
weighs e^-4 ≈ 2 % of the maximum's, at r = 1 it weighs 94 %.

GMP itself is ``configs/cam_beta.py`` at the same variant and seeds (a pooling is not a traced
field: another value is another program). Report the two together, GMP first so that every r is
tested against it::

  python -m cmseg_jax.sweep --config configs/cam_beta.py:cpu --workdir runs/gmp
  python -m cmseg_jax.sweep --config configs/grids/lse_r.py:cpu --workdir runs/lse_r
  python -m cmseg_jax.report runs/gmp runs/lse_r
"""

import ml_collections

from cmseg_jax.config_base import apply_variant, get_base_config, grid_spec

LSE_R = (1.0, 4.0, 16.0, 64.0)


def get_config(arg=None):
    config = get_base_config()
    config.name = "lse_r"
    config.method = "cam_beta"
    config.cam.pooling = "lse"
    config.train.epochs = 3
    config = apply_variant(config, arg)
    config.sweep = ml_collections.ConfigDict()
    config.sweep.grid = grid_spec({"cam.lse_r": LSE_R})
    return config
