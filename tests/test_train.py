"""The per-seed trainer: purity, compile-once epochs, vmap equivalence, losses, augmentation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import whole_epoch

from cmseg_jax.data import dataset
from cmseg_jax.data.augment import gamma_augment
from cmseg_jax.methods import classification_loss, segmentation_loss
from cmseg_jax.train import make_train, seed_key
from tests.conftest import load_config


def _random_split(n, size, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(0, n, 2):  # every other slice has a bright square "liver"
        y, x = rng.integers(0, size // 2, 2)
        masks[i, y : y + size // 3, x : x + size // 3] = 1
    images = rng.uniform(-1, -0.5, (n, size, size)).astype(np.float32) + masks * 1.2
    return {
        "images": images,
        "masks": masks,
        "labels": masks.reshape(n, -1).max(1).astype(np.int32),
        "valid": np.ones(n, bool),
    }


@pytest.fixture(scope="module")
def tiny():
    config = load_config("configs/full_ce.py:tiny")
    split = jax.device_put(_random_split(16, config.data.image_size))
    weights = jnp.asarray(dataset.class_weights(np.asarray(split["masks"])))
    return config, make_train(config, num_train=16), split, weights


def test_epoch_compiles_once(tiny):
    config, _, split, weights = tiny
    trainer = make_train(config, num_train=16)
    epoch_fn = jax.jit(chex.assert_max_traces(whole_epoch(trainer), n=1))
    state = trainer.init(seed_key(0, 0))
    for epoch in range(1, 4):
        state, out = epoch_fn(state, split, weights, jnp.int32(epoch))
    assert int(state.step) == 3 * trainer.steps_per_epoch
    assert np.isfinite(float(out["loss_sum"]))


def test_training_reduces_the_loss(tiny):
    config, trainer, split, weights = tiny
    epoch_fn = jax.jit(whole_epoch(trainer))
    state = trainer.init(seed_key(0, 1))
    losses = []
    for epoch in range(1, 7):
        state, out = epoch_fn(state, split, weights, jnp.int32(epoch))
        losses.append(float(out["loss_sum"]) / trainer.steps_per_epoch)
    assert losses[-1] < 0.7 * losses[0], losses


def test_vmapped_seeds_equal_seeds_alone(tiny):
    _, trainer, split, weights = tiny
    keys = jnp.stack([seed_key(0, s) for s in range(3)])
    stacked, _ = jax.jit(jax.vmap(whole_epoch(trainer), in_axes=(0, None, None, None)))(
        jax.vmap(trainer.init)(keys), split, weights, jnp.int32(1)
    )
    alone, _ = jax.jit(whole_epoch(trainer))(trainer.init(keys[1]), split, weights, jnp.int32(1))
    for a, b in zip(
        jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(stacked), strict=True
    ):
        # Batched and unbatched programs may reduce in different orders; Adam's normalised
        # first steps amplify float32 rounding to ~1e-5. A wrong key or mixed-up seed differs at
        # the scale of the weights themselves (~1e-2). The sweep itself always runs the vmapped
        # program, where seed i alone is bit-identical (tests/test_sweep.py).
        np.testing.assert_allclose(np.asarray(a), np.asarray(b)[1], rtol=1e-3, atol=1e-4)


def test_split_epoch_equals_whole_epoch(tiny):
    _, trainer, split, weights = tiny
    state = trainer.init(seed_key(0, 2))
    whole, _ = whole_epoch(trainer)(state, split, weights, jnp.int32(1))
    half = trainer.steps_per_epoch // 2
    part, _ = trainer.train_steps(state, split, weights, jnp.int32(1), 0, length=half)
    rest = trainer.steps_per_epoch - half
    part, _ = trainer.train_steps(part, split, weights, jnp.int32(1), half, length=rest)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(part), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_a_diverged_seed_is_frozen_and_the_others_go_on(tiny):
    """A NaN slice met by seed 1 alone: seed 1 stops at its last finite state, 0 and 2 are
    bit-identical to a run on clean data, and every seed still evaluates to finite metrics."""
    _, trainer, split, weights = tiny
    keys = jnp.stack([seed_key(0, s) for s in range(3)])
    states = jax.vmap(trainer.init)(keys)
    epoch = jnp.int32(1)
    poisoned_slice = 5
    clean = jax.tree.map(lambda x: jnp.stack([x] * 3), split)
    poisoned = dict(clean, images=clean["images"].at[1, poisoned_slice].set(jnp.nan))
    run = jax.jit(jax.vmap(whole_epoch(trainer), in_axes=(0, 0, None, None)))
    got, _ = run(states, poisoned, weights, epoch)
    want, _ = run(states, clean, weights, epoch)

    np.testing.assert_array_equal(np.asarray(got.diverged), [False, True, False])
    np.testing.assert_array_equal(np.asarray(got.step), [trainer.steps_per_epoch] * 3)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]])

    # Seed 1 stopped right before the step that drew the NaN slice.
    seed1 = jax.tree.map(lambda x: x[1], states)
    order_key = jax.random.fold_in(jax.random.fold_in(seed1.rng, 1), epoch)
    position = int(np.nonzero(np.asarray(jax.random.permutation(order_key, 16)) == 5)[0][0])
    steps_before = position // (16 // trainer.steps_per_epoch)  # batch size
    before, _ = trainer.train_steps(seed1, split, weights, epoch, 0, length=steps_before)
    frozen = jax.tree.map(lambda x: x[1], got)
    for name in ("params", "batch_stats", "opt_state"):
        for a, b in zip(
            jax.tree.leaves(getattr(frozen, name)),
            jax.tree.leaves(getattr(before, name)),
            strict=True,
        ):
            assert np.all(np.isfinite(np.asarray(a)))
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)
    counts = jax.vmap(trainer.evaluate, in_axes=(0, None, None))(got, split, weights)
    for leaf in jax.tree.leaves(counts):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def test_seeds_differ(tiny):
    _, trainer, _, _ = tiny
    a = trainer.init(seed_key(0, 0)).params
    b = trainer.init(seed_key(0, 1)).params
    diffs = [
        float(jnp.abs(x - y).max())
        for x, y in zip(*map(jax.tree_util.tree_leaves, (a, b)), strict=True)
    ]
    assert max(diffs) > 0


def test_evaluate_counts_every_valid_pixel_once(tiny):
    config, trainer, split, weights = tiny
    state = trainer.init(seed_key(0, 0))
    padded = dataset.device_layout(
        dataset.lits.SliceSet(
            images=np.asarray(split["images"][:13]),
            masks=np.asarray(split["masks"][:13]),
            labels=np.asarray(split["labels"][:13]),
            volume_ids=np.zeros(13, np.int32),
            slice_index=np.arange(13, dtype=np.int32),
        ),
        config.eval.batch_size,
    )
    out = trainer.evaluate_final(state, jax.device_put(padded), weights)
    size = config.data.image_size
    assert int(out["confusion"].sum()) == 13 * size * size
    assert int(out["cls_confusion"].sum()) == 13
    assert int(out["histograms"].sum()) == 13 * size * size
    assert int(out["histograms"][0].sum()) == int(np.asarray(split["masks"][:13]).sum())


def test_segmentation_loss_matches_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    targets = rng.integers(0, 2, (2, 4, 4))
    w = np.array([0.3, 1.7], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    ref = (w[targets] * nll).sum() / w[targets].sum()
    num, den = segmentation_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(w))
    np.testing.assert_allclose(float(num / den), ref, rtol=1e-5)


def test_classification_loss_is_binary_cross_entropy_of_softmax():
    pooled = jnp.asarray([[0.2, 1.5], [2.0, -1.0]])
    labels = jnp.asarray([1, 0])
    p = jax.nn.softmax(pooled)[:, 1]
    bce = -(labels * jnp.log(p) + (1 - labels) * jnp.log(1 - p))
    num, den = classification_loss(pooled, labels)
    np.testing.assert_allclose(float(num / den), float(bce.mean()), rtol=1e-5)


def test_gamma_augment_range_and_identity():
    x = jnp.tile(jnp.linspace(-1, 1, 64).reshape(1, 8, 8), (2, 1, 1))
    y = gamma_augment(jax.random.PRNGKey(0), x)
    assert float(y.min()) >= -1 and float(y.max()) <= 1
    np.testing.assert_allclose(y[:, 0, 0], -1, atol=1e-6)  # endpoints are fixed points
    np.testing.assert_allclose(y[:, -1, -1], 1, atol=1e-6)
    same = gamma_augment(jax.random.PRNGKey(0), x, 1.0, 1.0)
    np.testing.assert_allclose(same, x, atol=1e-6)
    assert not np.allclose(np.asarray(y[0]), np.asarray(y[1]))  # one γ per image


def test_class_weights_are_inverse_frequencies():
    masks = np.zeros((1, 10, 10), np.uint8)
    masks[0, :2] = 1  # 20 % liver
    w = dataset.class_weights(masks)
    np.testing.assert_allclose(w[1] / w[0], 0.8 / 0.2, rtol=1e-6)
