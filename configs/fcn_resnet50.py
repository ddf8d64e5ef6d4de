"""The thesis' baseline: torchvision's FCN-ResNet-50 from scratch, full supervision.

Weighted cross-entropy (inverse training pixel frequencies), Adam lr 0.001, 25 epochs; the model is
``cmseg_jax/models/fcn_resnet.py`` (image repeated to 3 channels, 32,947,266 parameters at the
thesis size). The ``cpu`` / ``tiny`` variants shrink its width to 16 / 8 (stem channels; 64 here).
"""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "fcn_resnet50"
    config.method = "full"
    config.model.arch = "fcn_resnet50"
    config.model.smoothing = False
    config.train.learning_rate = 0.001
    config.train.epochs = 25
    return apply_variant(config, arg)
