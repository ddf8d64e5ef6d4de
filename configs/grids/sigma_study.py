"""The σ study: full supervision with the Gaussian's σ on a grid, σ = 3, 5, 7, 9 px at 512²
(scaled with the image size like the default σ = 7: at the ``cpu`` size's 128², 0.75 … 2.25 px).

σ is traced, so every σ × seed trains in one compiled program. The kernel size K stays the one
derived from the image size (50 taps at 512²), so the widest σ is truncated at ±25 px = 2.8 σ.
"""

import ml_collections

from cmseg_jax.config_base import apply_variant, get_base_config, grid_spec

SIGMAS_AT_512 = (3.0, 5.0, 7.0, 9.0)


def get_config(arg=None):
    config = get_base_config()
    config.name = "sigma_study"
    config.method = "full"
    config.train.epochs = 25
    config = apply_variant(config, arg)
    scale = config.data.image_size / 512.0
    config.sweep = ml_collections.ConfigDict()
    config.sweep.grid = grid_spec({"model.smoothing_sigma": [s * scale for s in SIGMAS_AT_512]})
    return config
