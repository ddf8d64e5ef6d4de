"""The lits_slices TFDS dataset: built from a phantom manual dir (no network, no TensorFlow),
equal to the nibabel loader array for array, and read by the sweep as ``data.source=tfds``."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import nifti_variants as nv
import numpy as np
import pytest

from cmseg_jax.data import lits, tfds_build, tfds_source
from cmseg_jax.data.lits_slices import lits_slices_dataset_builder as lsb

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIELDS = ("images", "masks", "labels", "volume_ids", "slice_index")
TINY = dict(image_size=32, liver_slices=2, background_slices=2)


def _run(module, *args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    """A phantom manual directory with non-square (64 x 48) slices, written by the phantom CLI."""
    path = tmp_path_factory.mktemp("manual") / "lits"
    _run("cmseg_jax.data.phantom", path, "--num_volumes", 6, "--shape", 64, 48, 20, "--seed", 3)
    return path


def assert_same_splits(got, want):
    assert set(got) == set(want) == {"train", "val", "test"}
    for split in want:
        for field in FIELDS:
            a, b = getattr(got[split], field), getattr(want[split], field)
            assert a.dtype == b.dtype and a.shape == b.shape, (split, field, a.dtype, b.dtype)
            np.testing.assert_array_equal(a, b, err_msg=f"{split}.{field}")


def _variant_dir(tfds_dir, params) -> pathlib.Path:
    return pathlib.Path(str(tfds_source.make_builder(tfds_dir, **params).data_path))


def test_cli_build_of_a_named_config_equals_the_nibabel_loader(manual_dir, tmp_path):
    tfds_dir = tmp_path / "tfds"
    _run(
        "cmseg_jax.data.tfds_build",
        "--manual_dir",
        manual_dir,
        "--data_dir",
        tfds_dir,
        "--config",
        "s32-l2-b2-seed0",
    )
    path = tfds_dir / "lits_slices" / "s32-l2-b2-seed0" / "1.0.0"
    assert path == _variant_dir(tfds_dir, TINY)
    assert len(list(path.glob("lits_slices-*.array_record-*"))) == 3  # one file per split
    got = tfds_source.load_splits_tfds(tfds_dir, **TINY)
    want = lits.load_splits(manual_dir, **TINY)
    assert_same_splits(got, want)
    assert sum(len(s) for s in got.values()) == 6 * 4
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["source_dir"] == str(manual_dir.resolve())
    assert meta["synthetic_phantom"] is True  # data built from the phantom stay labelled so
    assert "SYNTHETIC" in tfds_source.describe(tfds_dir, **TINY)
    assert meta["volumes"] == {
        name: sorted(np.unique(want[name].volume_ids).tolist()) for name in want
    }


def test_build_flags_are_read_by_the_tfds_parser_itself(manual_dir, tmp_path):
    # Switches of the installed TFDS and absl (no value), valued flags, the -c alias: whatever
    # the flag, no dataset named means lits_slices, and a named one is kept.
    flags = ["--overwrite", "--noalsologtostderr", "--manual_dir", str(manual_dir)]
    flags += [f"--data_dir={tmp_path}", "-c", "s32-l2-b2-seed0"]
    args = tfds_build.parse_args(["tfds_build", "build", *flags])
    assert args.positional_datasets == [str(tfds_build.BUILDER_DIR)]
    assert os.fspath(args.paths.manual_dir) == str(manual_dir)
    assert args.generation.config == "s32-l2-b2-seed0" and args.debug.overwrite
    named = tfds_build.parse_args(["tfds_build", "other_dataset", *flags])
    assert named.positional_datasets == ["other_dataset"]
    assert tfds_build.parse_args(["tfds_build", "--dataset=x", *flags]).positional_datasets == []


def test_the_build_parser_keeps_its_config_flag_beside_the_sweeps(manual_dir):
    # A process that imported the sweep's CLI holds absl's global --config; TFDS' --config
    # (here in a fresh process, whatever the test order) still parses as TFDS' own.
    code = (
        "import sys, cmseg_jax.sweep.cli\n"
        "from cmseg_jax.data import tfds_build\n"
        "argv = ['b', '--manual_dir', sys.argv[1], '-c', 's32-l2-b2-seed0']\n"
        "argv.append('--noalsologtostderr')\n"
        "args = tfds_build.parse_args(argv)\n"
        "print(args.generation.config)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(manual_dir)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "s32-l2-b2-seed0"


def test_json_config_with_other_window_split_and_counts(manual_dir, tmp_path):
    params = dict(
        image_size=40,
        liver_slices=3,
        background_slices=1,
        split_seed=5,
        fractions=(0.5, 0.25, 0.25),
        hu_window=(-200.0, 300.0),
    )
    spec = json.dumps(params | {"fractions": list(params["fractions"])})
    args = ["--manual_dir", manual_dir, "--data_dir", tmp_path / "tfds", "--config", spec]
    _run("cmseg_jax.data.tfds_build", *args)
    name = lsb.config_name(**params)
    assert name.startswith("s40-l3-b1-seed5-x")  # non-thesis window/fractions: hashed suffix
    assert (tmp_path / "tfds" / "lits_slices" / name / "1.0.0" / "metadata.json").is_file()
    got = tfds_source.load_splits_tfds(tmp_path / "tfds", **params)
    assert_same_splits(got, lits.load_splits(manual_dir, **params))


def test_built_on_first_use_from_real_world_nifti_variants(tmp_path):
    ref = nv.phantom_reference()
    names = [
        "lps_int16_nii",
        "ras_int16",
        "transposed_in_plane",
        "axial_first",
        "uint16_slope_inter",
        "pad_minus_3024",
        "singleton_4d_transposed",
        "non_square_48x64_transposed",
        "anisotropic_in_plane",
        "float32",
    ]
    manual = tmp_path / "manual"
    for case_id, name in enumerate(names):
        nv.write_variant(ref, name, manual, case_id=case_id)
    params = dict(image_size=32, liver_slices=3, background_slices=3)
    got = tfds_source.load_splits_tfds(tmp_path / "tfds", manual_dir=manual, **params)
    assert_same_splits(got, lits.load_splits(manual, **params))
    assert sum(len(s) for s in got.values()) == len(names) * 6


def test_missing_mismatched_and_broken_datasets_fail_with_one_line(manual_dir, tmp_path):
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(lits.DataError, match="dataset not built; run python -m .*--config s32"):
        tfds_source.load_splits_tfds(tfds_dir, **TINY)
    tfds_source.load_splits_tfds(tfds_dir, manual_dir=manual_dir, **TINY)
    meta_path = _variant_dir(tfds_dir, TINY) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["liver_slices"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(lits.DataError, match="built with parameters"):
        tfds_source.load_splits_tfds(tfds_dir, **TINY)

    broken = tmp_path / "broken"
    broken.mkdir()
    for n in range(3):
        for kind in ("volume", "segmentation"):
            (broken / f"{kind}-{n}.nii.gz").symlink_to(manual_dir / f"{kind}-{n}.nii.gz")
    (broken / "segmentation-1.nii.gz").unlink()
    proc = _run(
        "cmseg_jax.data.tfds_build",
        "--manual_dir",
        broken,
        "--data_dir",
        tmp_path / "tfds2",
        "--config",
        "s32-l2-b2-seed0",
        check=False,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    volume = broken / "volume-1.nii.gz"
    assert last == f"error: {volume}: no segmentation-1.nii[.gz] for this volume"
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "tfds2").rglob("*.array_record*"))  # nothing half-written
    assert not _variant_dir(tmp_path / "tfds2", TINY).exists()


def test_sweep_on_tfds_equals_sweep_on_nifti(manual_dir, tmp_path):
    common = [
        "--config=configs/cam_beta.py:tiny",
        "--seeds=1",
        "--config.train.epochs=1",
        f"--config.data.dir={manual_dir}",
        "--progress=false",
    ]
    tfds_args = ["--config.data.source=tfds", f"--config.data.tfds_dir={tmp_path / 'tfds'}"]
    proc = _run("cmseg_jax.sweep", *common, *tfds_args, f"--workdir={tmp_path / 'a'}")
    assert "TFDS lits_slices" in proc.stdout and "SYNTHETIC" in proc.stdout
    _run("cmseg_jax.sweep", *common, "--config.data.source=lits", f"--workdir={tmp_path / 'b'}")

    def rows(run):
        with open(tmp_path / run / "results.csv") as f:
            return list(csv.DictReader(f))

    assert rows("a") == rows("b") and len(rows("a")) > 0
