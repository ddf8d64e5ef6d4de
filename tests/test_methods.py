"""The tables behind methods and grids: traced grid fields are injected as their records say, and
a method's image-level pooling is looked up from the pooling table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmseg_jax import config_base, methods, validate
from cmseg_jax.errors import UsageError
from cmseg_jax.models.heads import DEFAULT_POOLING, POOLINGS
from cmseg_jax.train import GridTrainState, make_model, make_train, seed_key
from tests.conftest import load_config


def _field(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_every_traced_field_is_a_float_config_field_with_its_own_name():
    config = config_base.get_base_config()
    names = [t.name for t in config_base.TRACED_FIELDS.values()]
    assert len(set(names)) == len(names)  # the state's keys
    assert config_base.TRACED == tuple(config_base.TRACED_FIELDS)
    for field, traced in config_base.TRACED_FIELDS.items():
        assert traced.field == field
        assert traced.inject in ("model", "optimizer", "method")
        value = _field(config, field)  # raises for a field the config does not have
        assert value is None or isinstance(value, float), field
        assert np.dtype(traced.dtype) == np.float32
    # Every pooling parameter is a traced method keyword.
    for pooling in POOLINGS.values():
        for name in pooling.params:
            assert config_base.TRACED_FIELDS[f"cam.{name}"].inject == "method"


@pytest.mark.parametrize("field", config_base.TRACED)
def test_a_traced_field_is_injected_as_its_record_says(field):
    traced = config_base.TRACED_FIELDS[field]
    config = load_config("configs/cam_beta.py:tiny")
    trainer = make_train(config, num_train=8, traced=(field,))
    state = trainer.init(seed_key(0, 0), {field: 0.125})
    if traced.inject == "optimizer":
        assert not isinstance(state, GridTrainState)
        assert float(state.opt_state.hyperparams[traced.name]) == 0.125
    else:
        assert type(state) is GridTrainState and list(state.hparams) == [traced.name]
        assert state.hparams[traced.name].dtype == jnp.dtype(traced.dtype)
        assert float(state.hparams[traced.name]) == 0.125


def test_the_default_pooling_is_exactly_the_models_gmp():
    config = load_config("configs/cam_beta.py:tiny")
    assert config.cam.pooling == DEFAULT_POOLING
    method = methods.of(config)
    assert method.pools_class_maps and method.pooling is POOLINGS[DEFAULT_POOLING]
    model = make_model(config)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32), minval=-1, maxval=1)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    out = model.apply(variables, x, train=False)
    pooled = method.outputs(out)["pooled"]
    assert pooled.dtype == out["pooled"].dtype
    assert np.asarray(pooled).tobytes() == np.asarray(out["pooled"]).tobytes()
    np.testing.assert_array_equal(pooled, np.asarray(out["maps"]).max(axis=(1, 2)))
    # A method that does not pool its class maps keeps the model's image scores (CAM_α's dense
    # layer on its max-pooled C_t maps).
    alpha = methods.of(load_config("configs/cam_alpha.py:tiny"))
    assert not alpha.pools_class_maps
    dense = {"maps": out["maps"], "pooled": -out["pooled"]}
    np.testing.assert_array_equal(alpha.outputs(dense)["pooled"], -out["pooled"])


def test_an_unknown_pooling_is_a_one_line_error_naming_the_field():
    config = load_config("configs/cam_beta.py:tiny,cam.pooling=gmp")
    with pytest.raises(UsageError) as err:
        validate.check_config(config)
    message = str(err.value)
    assert (
        message.startswith("config.cam.pooling='gmp': must be one of max") and "\n" not in message
    )
    with pytest.raises(ValueError, match="config.cam.pooling must be one of"):
        methods.of(config)
