"""CAM_α (Zhou et al.): GMP over the C_t hidden maps -> dense; CAM thresholded at 0.5; 10 epochs.

The original CAM has no smoothing layer, so the Gaussian is off (``model.smoothing=True`` adds it).
"""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "cam_alpha"
    config.method = "cam_alpha"
    config.model.smoothing = False
    config.cam.threshold = 0.5
    config.train.epochs = 10
    return apply_variant(config, arg)
