"""Tests of whole-volume prediction: geometry round trips (oracle), a real tiny sweep, the CLI."""

import csv
import itertools
import pathlib
import subprocess
import sys

import jax
import nibabel as nib
import nifti_variants as nv
import numpy as np
import pytest

from cmseg_jax import predict
from cmseg_jax.data import lits, nifti, phantom, preprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def reference():
    return nv.phantom_reference()


@pytest.fixture(scope="session")
def sweep(tiny_sweep):
    return predict.load_sweep(tiny_sweep)


def _stored(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _assert_same_grid(out_path, in_path):
    """Shape, affine, qform / sform (matrices and codes) and axis codes equal the input's."""
    out, ref = nib.load(out_path), nib.load(in_path)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(ref.affine)
    for form in ("get_qform", "get_sform"):
        m_out, code_out = getattr(out.header, form)(coded=True)
        m_ref, code_ref = getattr(ref.header, form)(coded=True)
        assert int(code_out) == int(code_ref), form
        if m_ref is not None:
            np.testing.assert_array_equal(m_out, m_ref)


# ----------------------------------------------------------------------------------------------
# nifti / preprocess against the training loader.


def test_orientation_round_trip_all_48_layouts():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for perm in itertools.permutations(range(3)):
        for flip in itertools.product((False, True), repeat=3):
            stored = nv.stored_layout(arr, perm, flip)
            aff = nv.stored_affine(np.diag([0.7, 0.8, 2.5, 1.0]), arr.shape, perm, flip)
            ornt = nib.orientations.io_orientation(aff)
            canon = nifti.to_canonical(stored, ornt)
            np.testing.assert_array_equal(canon, arr)
            np.testing.assert_array_equal(nifti.from_canonical(canon, ornt), stored)


def test_preprocessing_equals_the_training_loader(tmp_path):
    data_dir = phantom.write_phantom_dataset(tmp_path, num_volumes=3, shape=(64, 48, 16), seed=1)
    cases = {n: (v, s) for n, v, s in lits.find_cases(data_dir)}
    for size in (32, 40, 64):
        sets = lits.load_splits(data_dir, image_size=size, liver_slices=3, background_slices=2)
        for split in sets.values():
            for n in np.unique(split.volume_ids):
                sel = split.volume_ids == n
                volume = nifti.load_volume(cases[n][0])
                hu_ref, labels = nifti.load_case(*cases[n])
                np.testing.assert_array_equal(volume.hu, hu_ref)
                z = split.slice_index[sel]
                images = preprocess.images_to_model(
                    preprocess.axial_slices(volume.hu, z), size, (-1024.0, 1024.0)
                )
                np.testing.assert_array_equal(images, split.images[sel])
                masks = preprocess.masks_to_model(preprocess.axial_slices(labels, z), size)
                np.testing.assert_array_equal(masks, split.masks[sel])


# ----------------------------------------------------------------------------------------------
# Oracle: geometry independent of model quality.


@pytest.mark.parametrize("name", sorted(nv.VARIANTS))
def test_oracle_round_trip_is_exact_at_native_size(tmp_path, reference, name):
    variant = nv.write_variant(reference, name, tmp_path / "in")
    side = max(variant.reference.hu.shape[:2])
    oracle = nv.Oracle(variant.reference, side)
    out, prob = tmp_path / "mask.nii.gz", tmp_path / "prob.nii"
    result = predict.segment_volume(
        variant.volume_path,
        out,
        oracle,
        image_size=side,
        batch_size=5,
        prob_path=prob,
        label_path=variant.label_path,
    )
    assert sorted(oracle.seen) == list(range(variant.reference.hu.shape[2]))  # each slice once
    for path in (out, prob):
        _assert_same_grid(path, variant.volume_path)
    assert nib.load(out).get_data_dtype() == np.uint8
    assert nib.load(prob).get_data_dtype() == np.float32
    mask, label = _stored(out), _stored(variant.label_path)
    np.testing.assert_array_equal(mask, (label > 0).astype(np.uint8))
    np.testing.assert_array_equal(_stored(prob), mask.astype(np.float32))
    assert result.metrics["dice"] == 1.0 and result.confusion[0] == np.count_nonzero(label)
    assert result.shape == nib.load(variant.volume_path).shape


@pytest.mark.parametrize(
    "name", ["lps_int16_gz", "axial_first", "non_square_48x64_transposed", "singleton_4d"]
)
@pytest.mark.parametrize("size, min_dice", [(32, 0.9), (48, 0.93), (128, 1.0)])
def test_oracle_round_trip_with_resampling(tmp_path, reference, name, size, min_dice):
    variant = nv.write_variant(reference, name, tmp_path / "in")
    out = tmp_path / "mask.nii.gz"
    predict.segment_volume(
        variant.volume_path, out, nv.Oracle(variant.reference, size), image_size=size
    )
    _assert_same_grid(out, variant.volume_path)
    mask, label = _stored(out) > 0, _stored(variant.label_path) > 0
    dice = 2 * np.count_nonzero(mask & label) / (np.count_nonzero(mask) + np.count_nonzero(label))
    assert dice >= min_dice


def test_oracle_over_a_directory_reports_per_case_and_global_dice(tmp_path, reference):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    names = ["lps_int16_gz", "axial_first", "non_square_64x48"]
    variants = [
        nv.write_variant(reference, name, in_dir, case_id=i) for i, name in enumerate(names)
    ]
    oracles = {v.volume_path.name: nv.Oracle(v.reference, 32) for v in variants}

    def score_fn(images):  # dispatch on the (unique) slice content to the right case's oracle
        for oracle in oracles.values():
            if np.any(np.all(oracle.images == images[0], axis=(1, 2))):
                return oracle(images)
        raise AssertionError("unknown slice")

    results = predict.segment_directory(
        in_dir, out_dir, score_fn, label_dir=in_dir, image_size=32, batch_size=8
    )
    assert [r.volume_path.name for r in results] == [v.volume_path.name for v in variants]
    confusion = np.zeros(4, np.int64)
    for r, v in zip(results, variants, strict=True):
        assert r.out_path == out_dir / f"volume-{names.index(v.name)}.nii.gz"
        _assert_same_grid(r.out_path, v.volume_path)
        cm = predict.volume_confusion(_stored(r.out_path), _stored(v.label_path))
        np.testing.assert_array_equal(r.confusion, cm)
        confusion += cm
    summary = predict.summarize(results)
    tp, fp, fn, _ = confusion
    assert summary["global"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    per_case = [m["dice"] for _, m in summary["cases"]]
    assert summary["mean"]["dice"] == pytest.approx(np.mean(per_case))
    assert 0.9 < summary["global"]["dice"] < 1.0


# ----------------------------------------------------------------------------------------------
# A real sweep.


@pytest.fixture(scope="session")
def ensemble(sweep):
    return predict.ModelScorer(sweep, batch_size=8)


def test_load_sweep_and_scorers_match_trainer_predict(sweep, ensemble):
    assert sweep.seeds == (0, 1) and sweep.epoch == 2
    assert jax.tree_util.tree_leaves(sweep.states)[0].shape[0] == 2
    assert sweep.threshold == 0.5 and sweep.image_size == 32
    images = np.random.default_rng(0).uniform(-1, 1, (11, 32, 32)).astype(np.float32)
    per_seed = np.asarray(jax.jit(jax.vmap(sweep.predict, in_axes=(0, None)))(sweep.states, images))
    assert ensemble.seeds == [0, 1]
    np.testing.assert_allclose(ensemble(images), per_seed.mean(axis=0), atol=1e-6)
    one = predict.ModelScorer(sweep, [1], batch_size=8)
    np.testing.assert_allclose(one(images), per_seed[1], atol=1e-6)
    assert one.num_traces == 1  # 11 slices = 2 calls (8 + 3 padded), one compile
    with pytest.raises(ValueError, match="seed 5 is not in the sweep"):
        predict.ModelScorer(sweep, [5])


def test_model_predictions_do_not_depend_on_storage(tmp_path, reference, ensemble):
    """The model sees the same slices whatever the layout, so the canonical outputs are equal."""
    scorer = ensemble
    names = ["lps_int16_gz", "axial_first", "singleton_4d_transposed", "uint16_slope_inter"]
    probs = []
    for name in names:
        variant = nv.write_variant(reference, name, tmp_path / name)
        out, prob = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}-prob.nii.gz"
        predict.segment_volume(
            variant.volume_path, out, scorer, image_size=32, batch_size=8, prob_path=prob
        )
        _assert_same_grid(out, variant.volume_path)
        spec = variant.spec
        p = nv.canonical_layout(_stored(prob), spec.perm, spec.flip)
        m = nv.canonical_layout(_stored(out), spec.perm, spec.flip)
        np.testing.assert_array_equal(m, (p >= 0.5).astype(np.uint8))
        probs.append(p)
    assert 0.0 < probs[0].min() and probs[0].max() < 1.0 and probs[0].std() > 0
    for p in probs[1:]:
        np.testing.assert_array_equal(p, probs[0])
    # A volume whose slice count is not a batch multiple reuses the compiled function.
    short = nv.Reference(reference.hu[:, :, :13], reference.labels[:, :, :13], reference.affine)
    variant = nv.write_variant(short, "ras_int16", tmp_path / "short")
    predict.segment_volume(variant.volume_path, tmp_path / "s.nii", scorer, image_size=32)
    assert scorer.num_traces == 1


def test_cli_single_volume_with_label(tmp_path, reference, tiny_sweep, capsys):
    variant = nv.write_variant(reference, "non_square_anisotropic_4d", tmp_path / "in")
    out, prob = tmp_path / "o" / "mask.nii.gz", tmp_path / "o" / "prob.nii.gz"
    argv = [
        "--workdir",
        str(tiny_sweep),
        "--seed",
        "1",
        str(variant.volume_path),
        str(out),
        "--prob",
        str(prob),
        "--label",
        str(variant.label_path),
        "--no-progress",
    ]
    assert predict.main(argv) == 0
    _assert_same_grid(out, variant.volume_path)
    _assert_same_grid(prob, variant.volume_path)
    captured = capsys.readouterr()
    cm = predict.volume_confusion(_stored(out), _stored(variant.label_path))
    m = {k: float(v) for k, v in predict.metrics.metrics_from_confusion(cm).items()}
    line = captured.out.strip().splitlines()[-1]
    assert line.startswith(f"{variant.volume_path} -> {out}: ")
    for key in ("dice", "iou", "mcc", "precision", "recall"):
        assert f"{key} {m[key]:.4f}" in line
    assert "seed 1" in captured.err and "threshold 0.5" in captured.err


def test_cli_errors(tmp_path, reference, tiny_sweep, capsys):
    variant = nv.write_variant(reference, "ras_int16", tmp_path / "in")
    args = ["--workdir", str(tiny_sweep), "--no-progress"]
    out = str(tmp_path / "o.nii.gz")
    assert predict.main([*args, "--seed", "7", str(variant.volume_path), out]) == 2
    assert "seed 7 is not in the sweep" in capsys.readouterr().err
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    assert predict.main([*args, str(bad), out]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"error: {bad}: ") and "gzip" in last
    wrong = nv.write_variant(reference, "transposed_in_plane", tmp_path / "wrong")
    label = ["--label", str(wrong.label_path)]
    assert predict.main([*args, str(variant.volume_path), out, *label]) == 1
    assert "affine differs" in capsys.readouterr().err
    assert predict.main([*args, "--workdir", str(tmp_path), str(variant.volume_path), out]) == 2
    with pytest.raises(SystemExit):
        predict.main([*args, "--seed", "0", "--ensemble", str(variant.volume_path), out])


def test_cli_module_over_a_directory(tmp_path, reference, tiny_sweep, cli_env):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    names = ["lps_int16_nii", "float32", "pad_minus_3024"]
    variants = [nv.write_variant(reference, n, in_dir / n, case_id=i) for i, n in enumerate(names)]
    csv_path = tmp_path / "metrics.csv"
    cmd = [
        sys.executable,
        "-m",
        "cmseg_jax.predict",
        "--workdir",
        str(tiny_sweep),
        "--ensemble",
        str(in_dir),
        str(out_dir),
        "--label_dir",
        str(in_dir),
        "--prob",
        str(tmp_path / "prob"),
        "--metrics_csv",
        str(csv_path),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = np.zeros(4, np.int64)
    for i, v in enumerate(variants):
        out = out_dir / v.name / f"volume-{i}.nii.gz"
        _assert_same_grid(out, v.volume_path)
        _assert_same_grid(tmp_path / "prob" / v.name / f"volume-{i}.nii.gz", v.volume_path)
        total += predict.volume_confusion(_stored(out), _stored(v.label_path))
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["case"] for r in rows] == sorted(str(v.volume_path) for v in variants) + ["GLOBAL"]
    assert [int(rows[-1][k]) for k in ("tp", "fp", "fn", "tn")] == total.tolist()
    tp, fp, fn, _ = total
    dice = 2 * tp / (2 * tp + fp + fn)
    assert float(rows[-1]["dice"]) == pytest.approx(dice)
    assert f"GLOBAL (3 cases, pooled voxels): dice {dice:.4f}" in proc.stdout
    assert "MEAN PER CASE (3 cases): dice" in proc.stdout


def test_train_from_python_ends_where_the_sweeps_seed_ends(sweep):
    """``make_train(...).train`` of one seed (README, "From Python") is that seed of the sweep."""
    from cmseg_jax.data import dataset
    from cmseg_jax.train import make_train, seed_key

    config = sweep.config
    splits, _ = dataset.load_dataset(config)
    data = {n: dataset.device_layout(s, config.eval.batch_size) for n, s in splits.items()}
    data["class_weights"] = dataset.class_weights(splits["train"].masks)
    trainer = make_train(config, num_train=len(splits["train"].labels))
    seed = sweep.seeds[1]
    state, _ = jax.jit(trainer.train)(seed_key(config.root_seed, seed), data)
    swept = jax.tree_util.tree_map(lambda x: x[1], sweep.states.params)
    leaves = jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(swept)
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
