"""Ablation Baseline-GS: CAM_β without the Gaussian smoothing layer."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "ablation_no_gs"
    config.method = "cam_beta"
    config.model.smoothing = False
    return apply_variant(config, arg)
