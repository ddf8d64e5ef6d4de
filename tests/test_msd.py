"""Tests of data.source='msd': MSD Task03_Liver and nnU-Net raw layouts with LiTS' protocol."""

import io
import json
import pathlib
import re

import numpy as np
import pytest
from conftest import load_config

from cmseg_jax import validate
from cmseg_jax.data import check, dataset, lits, msd, phantom, sources
from cmseg_jax.data.nifti import DataError
from cmseg_jax.errors import UsageError
from cmseg_jax.predict import volumes

SHAPE = (32, 32, 12)
FIELDS = ("images", "masks", "labels", "volume_ids", "slice_index")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same 5 phantom volumes as LiTS, MSD and nnU-Net raw directories."""
    root = tmp_path_factory.mktemp("layouts")
    lits_dir = phantom.write_phantom_dataset(root / "lits", num_volumes=5, shape=SHAPE, seed=3)
    return {
        "lits": lits_dir,
        "msd": msd.write_layout(lits_dir, root / "Task03_Liver", "msd"),
        "nnunet": msd.write_layout(lits_dir, root / "Dataset003_Liver", "nnunet"),
    }


def _config(source, data_dir):
    config = load_config("configs/cam_beta.py:tiny")
    config.data.source = source
    config.data.dir = str(data_dir)
    config.data.phantom_volumes = 5
    config.data.phantom_shape = SHAPE
    config.data.phantom_seed = 3
    return config


def test_files_are_named_as_each_layout_names_them(layouts):
    m, n = layouts["msd"], layouts["nnunet"]
    assert (m / "imagesTr" / "liver_4.nii.gz").is_file()
    assert (m / "labelsTr" / "liver_4.nii.gz").is_file()
    assert (n / "imagesTr" / "liver_4_0000.nii.gz").is_file()
    assert (n / "labelsTr" / "liver_4.nii.gz").is_file()
    meta = json.loads((n / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert json.loads((m / "dataset.json").read_text())["modality"] == {"0": "CT"}


@pytest.mark.parametrize("kind", ["msd", "nnunet"])
def test_the_slices_are_lits_own(layouts, kind, tmp_path):
    """Split by volume and per-volume draws depend on the case number only: the same arrays."""
    want = lits.load_splits(layouts["lits"], image_size=32, liver_slices=2, background_slices=2)
    config = _config("msd", layouts[kind])
    config.data.cache_dir = str(tmp_path)
    validate.check_config(config)
    got, what = dataset.load_dataset(config)
    assert ("nnU-Net raw" if kind == "nnunet" else "MSD") in what
    for split in lits.SPLITS:
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(got[split], field), getattr(want[split], field))
    again, _ = dataset.load_dataset(config)  # from the slice cache
    np.testing.assert_array_equal(again["test"].images, got["test"].images)


def test_the_phantom_source_and_its_msd_copy_give_the_same_data(layouts, tmp_path):
    """data.source=phantom generates these very files; read as MSD they give the same splits."""
    config = _config("msd", layouts["nnunet"])
    config.data.cache_dir = str(tmp_path / "a")
    got, _ = dataset.load_dataset(config)
    config = _config("phantom", "")
    config.data.cache_dir = str(tmp_path / "b")
    want, what = dataset.load_dataset(config)
    assert "SYNTHETIC" in what
    for split in lits.SPLITS:
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(got[split], field), getattr(want[split], field))


def test_planned_volumes_follow_dataset_json(layouts, tmp_path):
    assert sources.get("msd").volumes(_config("msd", layouts["msd"])) == 5
    assert sources.get("msd").volumes(_config("msd", tmp_path / "absent")) == 131


def test_the_source_is_registered_and_found_by_its_layout(layouts):
    assert sources.get("msd") is msd.SOURCE
    assert sources.for_directory(layouts["msd"]) is msd.SOURCE
    assert sources.for_directory(layouts["nnunet"]) is msd.SOURCE
    assert sources.for_directory(layouts["lits"]) is sources.LITS


def test_a_missing_dir_is_one_line_naming_the_field():
    config = _config("msd", "")
    with pytest.raises(UsageError, match=r"^config\.data\.dir: data\.source='msd' needs"):
        validate.check_config(config)


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _description(d, **changes):
    meta = json.loads((d / "dataset.json").read_text())
    meta.update(changes)
    (d / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(channel_names={"0": "CT", "1": "PET"}), r"2 channels; the liver model reads one"),
        (dict(labels={"background": 0, "liver": 1, "vessel": 3}), r"labels \{0: .*1 liver"),
        (dict(labels={"background": 0, "liver": [1, 2]}), r"label 'liver' = \[1, 2\]"),
        (dict(file_ending=".mha"), r"file_ending '.mha'; only NIfTI"),
    ],
)
def test_a_bad_description_is_one_line_naming_dataset_json(layouts, tmp_path, change, message):
    d = _copy(layouts["nnunet"], tmp_path / "d")
    _description(d, **change)
    layout = msd.scan_cases(d)
    assert len(layout.errors) == 1 and layout.cases == []
    assert layout.errors[0].startswith(f"{d / 'dataset.json'}: ")
    assert re.search(message, layout.errors[0])
    with pytest.raises(DataError, match=re.escape(str(d / "dataset.json"))):
        lits.load_splits(d, scan=msd.scan_cases, image_size=16)


def test_unreadable_json_is_one_line(layouts, tmp_path):
    d = _copy(layouts["msd"], tmp_path / "d")
    (d / "dataset.json").write_text("{not json")
    (line,) = msd.scan_cases(d).errors
    assert line.startswith(f"{d / 'dataset.json'}: not valid JSON")


def test_file_problems_are_listed_each_naming_its_file(layouts, tmp_path):
    d = _copy(layouts["nnunet"], tmp_path / "d")
    (d / "labelsTr" / "liver_1.nii.gz").unlink()
    (d / "imagesTr" / "liver_2_0000.nii.gz").rename(d / "imagesTr" / "liver_2_0001.nii.gz")
    (d / "imagesTr" / "._liver_0_0000.nii.gz").write_bytes(b"macOS debris")
    (d / "imagesTr" / "case_0000.nii.gz").write_bytes(b"")
    layout = msd.scan_cases(d)
    text = "\n".join(layout.errors)
    assert f"{d / 'imagesTr' / 'liver_1_0000.nii.gz'}: no label under" in text
    assert f"{d / 'imagesTr' / 'liver_2_0001.nii.gz'}: a second channel" in text
    assert f"{d / 'imagesTr' / 'case_0000.nii.gz'}: case 'case' does not end in a number" in text
    assert "._liver" not in text
    assert any("liver_2.nii.gz: warning: no image of this case" in w for w in layout.warnings)
    assert any("numTraining 5" in w for w in layout.warnings)
    assert [n for n, _, _ in layout.cases] == [0, 1, 3, 4]


def test_data_check_reads_either_layout(layouts, tmp_path):
    for kind in ("msd", "nnunet"):
        out = io.StringIO()
        layout, reports, summary = check.check_directory(layouts[kind], out=out, problems=out)
        assert check.num_errors(layout, reports) == 0, out.getvalue()
        assert "SUMMARY: 5 volumes: 5 cases ok" in summary
        assert check.main([str(layouts[kind]), "--no-progress"]) == 0
    d = _copy(layouts["msd"], tmp_path / "d")
    (d / "labelsTr" / "liver_3.nii.gz").unlink()
    assert check.main([str(d), "--no-progress"]) == 1


def test_predict_follows_nnunet_output_naming(layouts, tmp_path):
    d = _copy(layouts["nnunet"], tmp_path / "d")
    (d / "imagesTr").rename(d / "imagesTs")
    (d / "imagesTr").mkdir()  # the dataset stays one; the inputs sit beside dataset.json
    inputs = volumes.find_inputs(d / "imagesTs")
    rule = volumes.naming(d / "imagesTs")
    assert rule is msd.case_name
    names = [volumes.output_name(p, d / "imagesTs", rule) for p in inputs]
    assert [str(n) for n in names] == [f"liver_{n}.nii.gz" for n in range(5)]
    labels = volumes.find_labels(d / "labelsTr")
    assert all(volumes.label_key(p, rule) in labels for p in inputs)
    # LiTS' own directories keep their names.
    assert volumes.naming(layouts["lits"]) is None


def test_predict_writes_case_names(layouts, tmp_path):
    d = _copy(layouts["nnunet"], tmp_path / "d")
    out = tmp_path / "out"

    def score_fn(images):
        return (images > 0.1).astype(np.float32)

    results = volumes.segment_directory(
        d / "imagesTr", out, score_fn, label_dir=d / "labelsTr", image_size=16, batch_size=8
    )
    assert sorted(p.name for p in out.iterdir()) == [f"liver_{n}.nii.gz" for n in range(5)]
    assert all(r.confusion is not None for r in results)


def test_write_layout_refuses_an_unknown_layout(layouts, tmp_path):
    with pytest.raises(ValueError, match="layout must be 'msd' or 'nnunet'"):
        msd.write_layout(layouts["lits"], tmp_path / "x", "nifti")


def test_the_msd_config_reads_the_decathlon(layouts, tmp_path):
    config = load_config("configs/msd/cam_beta.py:tiny")
    assert config.data.source == "msd" and config.method == "cam_beta"
    with pytest.raises(UsageError, match=r"^config\.data\.dir: data\.source='msd' needs"):
        validate.check_config(config)
    config.data.dir = str(layouts["msd"])
    config.data.cache_dir = str(tmp_path)
    validate.check_config(config)
    splits, what = dataset.load_dataset(config)
    assert what.startswith("MSD liver volumes from") and len(splits["train"]) > 0
