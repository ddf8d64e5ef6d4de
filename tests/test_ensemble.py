"""The ensemble of a sweep's seeds: every ensemble size from one pass on the device."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmseg_jax import metrics
from cmseg_jax import workdir as workdir_io
from cmseg_jax.data import dataset
from cmseg_jax.predict.model import ModelScorer, load_sweep
from cmseg_jax.sweep import ensemble, outputs
from cmseg_jax.sweep.layout import SeedLayout
from cmseg_jax.train import make_train, seed_key
from tests.conftest import load_config
from tests.test_sweep import run_cli
from tests.test_train import _random_split

KEYS = ("confusion", "cls_confusion", "histograms")


@pytest.fixture(scope="module")
def seeds4():
    """Four cam_beta:tiny seeds (initial states: they disagree) and two evaluation splits."""
    config = load_config("configs/cam_beta.py:tiny")
    trainer = make_train(config, num_train=8)
    states = jax.vmap(trainer.init)(jnp.stack([seed_key(0, s) for s in range(4)]))
    splits = {
        "a": jax.device_put(_random_split(8, config.data.image_size, seed=1)),
        "b": jax.device_put(_random_split(16, config.data.image_size, seed=2)),
    }
    return config, trainer, states, splits


def _ensemble(seeds4, states, weights, chunk=0, **kwargs):
    config, trainer, _, splits = seeds4
    fn = ensemble.make_evaluate(
        trainer.ensemble["default"],
        trainer.ensemble_stats,
        SeedLayout(jax.devices()[:1], chunk),
        eval_batch=config.eval.batch_size,
        seeds_per_group=kwargs.pop("seeds_per_group", len(weights)),
        **kwargs,
    )
    out = fn(states, splits, jnp.asarray(weights, jnp.float32))
    return jax.tree_util.tree_map(np.asarray, out)


def _rows(states, index):
    return jax.tree_util.tree_map(lambda x: x[np.asarray(index)], states)


def test_each_size_is_the_mean_of_its_seeds_scores_thresholded(seeds4):
    config, trainer, states, splits = seeds4
    out = _ensemble(seeds4, states, [1, 1, 1, 1])
    threshold = trainer.method.threshold(config)
    for name, split in splits.items():
        own = jax.vmap(trainer.evaluate_final, in_axes=(0, None, None))(
            states, split, jnp.ones(2, jnp.float32)
        )
        # The ensemble of one seed is that seed, exactly.
        for key in KEYS:
            np.testing.assert_array_equal(out[name][key][0], np.asarray(own[key][0]), key)
        # Size k: the first k seeds' scores added in seed order, divided by k, thresholded.
        images = dataset.decode_images(split["images"])
        scores = [np.asarray(trainer.predict(_rows(states, i), images)) for i in range(4)]
        total = np.zeros_like(scores[0])
        for k in range(4):
            total = total + scores[k]
            mean = total / np.float32(k + 1)
            want = metrics.confusion_counts(mean >= threshold, split["masks"])
            np.testing.assert_array_equal(out[name]["confusion"][k], np.asarray(want))
        # Untrained seeds disagree: the ensemble is not any one of them.
        assert len({tuple(c) for c in out[name]["confusion"]}) > 1


def test_chunks_weights_and_groups(seeds4):
    _, _, states, _ = seeds4
    whole = _ensemble(seeds4, states, [1, 1, 1, 1])
    # Seeds a chunk at a time (one, two) add in the same order: the same bits.
    for chunk in (1, 2):
        got = _ensemble(seeds4, states, [1, 1, 1, 1], chunk=chunk)
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, whole)
    # A seed left out (weight 0: diverged) is as if it were not there; the rows that follow it
    # are the ensembles of the seeds before them that are in.
    left_out = _ensemble(seeds4, states, [1, 0, 1, 1])
    without = _ensemble(seeds4, _rows(states, [0, 2, 3]), [1, 1, 1])
    for name in left_out:
        for key in KEYS:
            kept = ensemble.by_size(left_out, np.asarray([1, 0, 1, 1]))[name][key]
            np.testing.assert_array_equal(kept, without[name][key], key)
    # Two grid points of two seeds each: two ensembles, the second as if alone.
    grouped = _ensemble(seeds4, states, [1, 1, 1, 1], seeds_per_group=2, groups=2)
    second = _ensemble(seeds4, _rows(states, [2, 3]), [1, 1])
    first = jax.tree_util.tree_map(lambda x: x[:2], whole)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, jax.tree_util.tree_map(lambda x: x[2:], grouped), second
    )
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, jax.tree_util.tree_map(lambda x: x[:2], grouped), first
    )


def test_a_diverged_seed_is_left_out_and_the_summary_says_so(seeds4, tmp_path):
    config, trainer, states, splits = seeds4
    per_row = _ensemble(seeds4, _rows(states, [0, 1, 2]), [1, 0, 1])
    per_row = {s: per_row["a" if s == "train" else "b"] for s in dataset.SPLITS}
    diverged = np.asarray([False, True, False])
    text = outputs._write_ensemble(tmp_path, "default", [0, 1, 2], per_row, diverged, 0.5)
    assert "Ensemble of 2 seeds; 1 diverged seed(s) left out" in text
    npz = workdir_io.read_ensemble_stats(tmp_path)
    assert npz["seeds"].tolist() == [0, 2] and npz["sizes"].tolist() == [1, 2]
    alone = _ensemble(seeds4, _rows(states, [0, 2]), [1, 1])
    np.testing.assert_array_equal(npz["confusion"][:, 2], alone["b"]["confusion"])
    table = workdir_io.read_ensemble_results(tmp_path)
    assert sorted(table) == [1, 2]
    assert set(table[2]["test"]) == set(workdir_io.ENSEMBLE_METRICS)


def _ensemble_rows(workdir):
    with open(workdir / "results_ensemble.csv") as f:
        return list(csv.DictReader(f))


def test_the_sweeps_ensemble_equals_predict_ensemble(tiny_sweep):
    # The whole ensemble's test-split counts are predict --ensemble's over the same slices.
    sweep = load_sweep(tiny_sweep)
    scorer = ModelScorer(sweep)
    splits, _ = dataset.load_dataset(sweep.config)
    test = splits["test"]
    scores = scorer(np.asarray(test.images, np.float32))
    pred = scores >= sweep.method.threshold(sweep.config)
    want = np.asarray(metrics.confusion_counts(pred, test.masks))
    npz = workdir_io.read_ensemble_stats(tiny_sweep)
    assert npz["seeds"].tolist() == list(scorer.seeds) == [0, 1]
    np.testing.assert_array_equal(npz["confusion"][-1, 2], want)
    # And its size-1 row is seed 0's own final statistics.
    own = workdir_io.read_final_stats(tiny_sweep)
    for key in ("confusion", "cls_confusion", "hist_liver", "hist_background"):
        np.testing.assert_array_equal(npz[key][0], own[key][0], key)


def test_sizes_equal_smaller_sweeps_and_eight_devices_equal_one(tiny_sweep, tmp_path):
    args = ["--config=configs/cam_beta.py:tiny", "--num_seeds=3"]
    one = tmp_path / "one"
    run_cli(*args, f"--workdir={one}")
    eight = tmp_path / "eight"
    proc = run_cli(*args, f"--workdir={eight}", devices=8)
    assert "over 8 devices" in proc.stderr
    rows = _ensemble_rows(one)
    assert {r["size"] for r in rows} == {"1", "2", "3"}
    # The first two sizes of three seeds are the two-seed sweep's ensembles.
    two = _ensemble_rows(tiny_sweep)
    assert [r for r in rows if r["size"] in ("1", "2")] == two
    # Eight devices: the same table. The per-device programs are partitioned differently from
    # one device's, so a pixel's score may cross a histogram bin edge (test_sweep says so of
    # the seeds' own histograms): PxAP to float32 rounding, every count-based metric exactly.
    got = _ensemble_rows(eight)
    assert [(r["size"], r["split"], r["metric"]) for r in got] == [
        (r["size"], r["split"], r["metric"]) for r in rows
    ]
    for a, b in zip(got, rows, strict=True):
        if a["metric"] == "pxap":
            assert float(a["value"]) == pytest.approx(float(b["value"]), rel=1e-4)
        else:
            assert a == b
    assert "| ensemble of 3 |" in (eight / "summary.md").read_text()
