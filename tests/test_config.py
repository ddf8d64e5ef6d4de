"""Configs: variants compose, derived fields follow the image size, each experiment changes what
its docstring says it changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import whole_epoch

from cmseg_jax import config_base
from cmseg_jax.train import make_model, make_train, seed_key
from tests.conftest import load_config


def _flat(config) -> dict:
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(config_base.resolve(config).to_dict(), "")
    return out


def _differences(spec: str, baseline: str = "configs/cam_beta.py:tiny") -> dict:
    a, b = _flat(load_config(baseline)), _flat(load_config(spec))
    return {k: b[k] for k in a if a[k] != b[k]}


CAM, HIDDEN = "configs/cam_beta.py", "model.convmixerseg.hidden"


def test_variants_compose_left_to_right():
    config = load_config("configs/cam_beta.py:cpu,train.epochs=15,data.fractions=(0.5,0.25,0.25)")
    assert config.data.image_size == 128 and config.model.convmixerseg.hidden == 64
    assert config.train.epochs == 15
    assert config.data.fractions == (0.5, 0.25, 0.25)
    # A later item wins over an earlier one, a variant included.
    assert load_config(f"{CAM}:{HIDDEN}=12,tiny").model.convmixerseg.hidden == 8
    assert load_config(f"{CAM}:tiny,{HIDDEN}=12").model.convmixerseg.hidden == 12
    assert load_config("configs/cam_beta.py:tiny,model.remat=true").model.remat is True
    assert load_config("configs/cam_beta.py:thesis") == load_config("configs/cam_beta.py")


@pytest.mark.parametrize(
    "arg, message",
    [
        ("huge", "unknown config variant 'huge'; expected one of: thesis, cpu, tiny"),
        (
            "tiny,model.convmixerseg.hiden=3",
            "config variant item 'model.convmixerseg.hiden': no such field",
        ),
        (f"{HIDDEN}=wide", f"config variant item {HIDDEN}=wide: expected a int"),
    ],
)
def test_bad_variant_items_are_one_line_errors(arg, message):
    with pytest.raises(ValueError) as err:
        load_config(f"configs/cam_beta.py:{arg}")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_smoothing_follows_the_image_size_unless_set():
    thesis = load_config("configs/cam_beta.py")
    assert config_base.smoothing(thesis) == (7.0, 50)
    thesis.data.image_size = 128  # as --config.data.image_size=128 does
    assert config_base.smoothing(thesis) == (1.75, 12)
    model = make_model(thesis)
    assert (model.smoothing_sigma, model.smoothing_size) == (1.75, 12)
    thesis.model.smoothing_sigma = 3.0
    assert make_model(thesis).smoothing_sigma == 3.0
    assert make_model(thesis, smoothing=False).smoothing_sigma == 0.0
    resolved = config_base.resolve(load_config("configs/cam_beta.py:tiny"))
    assert (resolved.model.smoothing_sigma, resolved.model.smoothing_size) == (0.4375, 3)


@pytest.mark.parametrize(
    "spec, changed",
    [
        ("configs/ablation_no_gs.py:tiny", {"model.smoothing": False}),
        (
            "configs/ablation_no_gs_bilinear.py:tiny",
            {"model.smoothing": False, "model.convmixerseg.upsample": "bilinear"},
        ),
        ("configs/ablation_no_res.py:tiny", {"model.convmixerseg.pointwise_residual": False}),
        ("configs/ablation_no_aug.py:tiny", {"train.gamma_augment": False}),
    ],
)
def test_each_ablation_changes_only_what_it_names(spec, changed):
    got = _differences(spec)
    got.pop("name")
    assert got == changed


def _outputs(spec, params_from=None):
    config = load_config(spec)
    trainer = make_train(config, num_train=config.train.batch_size)
    state = trainer.init(seed_key(0, 0))
    if params_from is not None:
        state = state.replace(params=params_from.params, batch_stats=params_from.batch_stats)
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32), minval=-1.0, maxval=1.0)
    return state, trainer.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )


def _shapes(tree):
    return jax.tree_util.tree_map(jnp.shape, tree)


def test_ablations_change_the_model_as_stated():
    base, out = _outputs("configs/cam_beta.py:tiny")
    # -GS: the same parameters; the maps differ (no smoothing), the raw maps are the baseline's
    # before its Gaussian.
    _, no_gs = _outputs("configs/ablation_no_gs.py:tiny", base)
    assert not np.allclose(no_gs["maps"], out["maps"])
    # -res: the same parameter shapes, other outputs from the same parameters.
    res_state, no_res = _outputs("configs/ablation_no_res.py:tiny", base)
    assert _shapes(res_state.params) == _shapes(base.params)
    assert not np.allclose(no_res["maps"], out["maps"])
    # -GS + bilinear: no transposed-conv decoder, so other parameters.
    bilinear, _ = _outputs("configs/ablation_no_gs_bilinear.py:tiny")
    assert _shapes(bilinear.params) != _shapes(base.params)
    # -aug: the same model, the same function.
    aug_state, no_aug = _outputs("configs/ablation_no_aug.py:tiny", base)
    assert _shapes(aug_state.params) == _shapes(base.params)
    np.testing.assert_array_equal(no_aug["maps"], out["maps"])


def test_no_augmentation_changes_the_training_batches():
    results = {}
    for spec in ("configs/cam_beta.py:tiny", "configs/ablation_no_aug.py:tiny"):
        config = load_config(spec)
        trainer = make_train(config, num_train=8)
        rng = np.random.default_rng(0)
        split = {
            "images": jnp.asarray(rng.uniform(-1, 1, (8, 32, 32)), jnp.float32),
            "masks": jnp.zeros((8, 32, 32), jnp.uint8),
            "labels": jnp.asarray([0, 1] * 4, jnp.int32),
            "valid": jnp.ones(8, bool),
        }
        state = trainer.init(seed_key(0, 0))
        _, stats = whole_epoch(trainer)(state, split, jnp.ones(2), jnp.int32(0))
        results[spec] = float(stats["loss_sum"])
    a, b = results.values()
    assert a != b


def test_whole_run_equals_its_epochs():
    """``Trainer.train`` (the run as one pure function) is the sweep's epochs and evaluations."""
    config = load_config("configs/cam_beta.py:tiny,train.epochs=2")
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(8, 32, 32)) > 0.7).astype(np.uint8)
    split = {
        "images": jnp.asarray(rng.uniform(-1, 1, (8, 32, 32)), jnp.float32),
        "masks": jnp.asarray(masks),
        "labels": jnp.asarray(masks.reshape(8, -1).max(1), jnp.int32),
        "valid": jnp.ones(8, bool),
    }
    weights = jnp.asarray([0.6, 2.5], jnp.float32)
    data = {"train": split, "val": split, "test": split, "class_weights": weights}
    trainer = make_train(config, num_train=8)
    key = seed_key(0, 3)
    state, per_epoch = jax.jit(trainer.train)(key, data)
    manual = trainer.init(key)
    train_epoch, evaluate = jax.jit(whole_epoch(trainer)), jax.jit(trainer.evaluate)
    for i, epoch in enumerate((1, 2)):  # the sweep's epochs count from 1
        manual, stats = train_epoch(manual, split, weights, jnp.int32(epoch))
        np.testing.assert_allclose(per_epoch["train"]["loss_sum"][i], stats["loss_sum"], 1e-6)
        evals = evaluate(manual, split, weights)
        np.testing.assert_array_equal(per_epoch["eval"]["test"]["confusion"][i], evals["confusion"])
    pairs = zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(manual), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
