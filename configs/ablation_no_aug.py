"""Ablation Baseline-Aug: CAM_β without gamma intensity augmentation."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "ablation_no_aug"
    config.method = "cam_beta"
    config.train.gamma_augment = False
    return apply_variant(config, arg)
