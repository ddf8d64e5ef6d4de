"""Traced hyperparameters: a grid point vmapped next to the seeds trains as its own config."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmseg_jax.train import GridTrainState, TrainState, make_train, seed_key
from tests.conftest import load_config
from tests.test_train import _random_split


@pytest.fixture(scope="module")
def data():
    config = load_config("configs/cam_beta.py:tiny")
    split = jax.device_put(_random_split(8, config.data.image_size, seed=4))
    return split, jnp.asarray([0.6, 2.5], jnp.float32)


def _epoch(config, keys, split, weights, traced=(), hparams=None):
    trainer = make_train(config, num_train=8, traced=traced)
    if hparams is None:
        states = jax.vmap(trainer.init)(keys)
    else:
        states = jax.vmap(trainer.init)(keys, hparams)
    run = jax.jit(jax.vmap(trainer.train_epoch, in_axes=(0, None, None, None)))
    states, stats = run(states, split, weights, jnp.int32(0))
    evals = jax.vmap(trainer.evaluate, in_axes=(0, None, None))(states, split, weights)
    return states, stats, evals


@pytest.mark.parametrize(
    "field, values",
    [("model.smoothing_sigma", (0.5, 1.0)), ("train.learning_rate", (0.01, 0.003))],
)
def test_a_grid_point_trains_as_its_own_config(data, field, values):
    split, weights = data
    base = load_config("configs/cam_beta.py:tiny")
    points = list(itertools.product(values, (0, 1)))  # (value, seed), value-major
    keys = jnp.stack([seed_key(0, s) for _, s in points])
    hparams = {field: jnp.asarray([v for v, _ in points], jnp.float32)}
    states, stats, evals = _epoch(base, keys, split, weights, (field,), hparams)
    expected_type = GridTrainState if field == "model.smoothing_sigma" else TrainState
    assert type(states) is expected_type
    for i, value in enumerate(values):
        alone = load_config(f"configs/cam_beta.py:tiny,{field}={value}")
        _, s_stats, s_evals = _epoch(alone, keys[2 * i : 2 * i + 2], split, weights)
        np.testing.assert_allclose(
            stats["loss_sum"][2 * i : 2 * i + 2], s_stats["loss_sum"], rtol=1e-5
        )
        np.testing.assert_array_equal(evals["confusion"][2 * i : 2 * i + 2], s_evals["confusion"])
    # The grid points differ from each other.
    assert not np.allclose(stats["loss_sum"][:2], stats["loss_sum"][2:])


def test_untraced_grid_fields_are_refused():
    config = load_config("configs/cam_beta.py:tiny")
    with pytest.raises(ValueError, match="not traced"):
        make_train(config, num_train=8, traced=("model.hidden",))
