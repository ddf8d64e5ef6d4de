"""Ablation Baseline-Res: CAM_β without the residual around the pointwise block."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "ablation_no_res"
    config.method = "cam_beta"
    config.model.convmixerseg.pointwise_residual = False
    return apply_variant(config, arg)
