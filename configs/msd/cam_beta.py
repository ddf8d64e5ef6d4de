"""CAM_β on the Medical Segmentation Decathlon's Task03_Liver (or its nnU-Net raw conversion).

``--config.data.dir=/data/Task03_Liver`` (a manual download); the split and the slices drawn
are those of LiTS' protocol (cmseg_jax/data/msd.py).
"""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "cam_beta_msd"
    config.method = "cam_beta"
    config.train.epochs = 3
    config.data.source = "msd"
    return apply_variant(config, arg)
