"""Ablation Baseline-GS+BU: CAM_β, no smoothing, bilinear upsampling instead of transposed conv."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "ablation_no_gs_bilinear"
    config.method = "cam_beta"
    config.model.smoothing = False
    config.model.convmixerseg.upsample = "bilinear"
    return apply_variant(config, arg)
