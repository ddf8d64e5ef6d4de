"""Full supervision with the MCC loss (1 − MCC of the batch's soft confusion matrix; Abhishek &
Hamarneh 2021, which the thesis discusses in §4.3 but does not train), 25 epochs like full_ce."""

from cmseg_jax.config_base import apply_variant, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.name = "full_mcc"
    config.method = "full_mcc"
    config.train.epochs = 25
    return apply_variant(config, arg)
