"""CAM_β: image labels only; GMP over each class map of the segmentation output; 3 epochs."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "cam_beta"
    config.method = "cam_beta"
    config.train.epochs = 3
    return apply_variant(config, arg)
