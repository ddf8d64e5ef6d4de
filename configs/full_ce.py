"""Full supervision: weighted cross-entropy (inverse training pixel frequencies), 25 epochs."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "full_ce"
    config.method = "full"
    config.train.epochs = 25
    return apply_variant(config, arg)
