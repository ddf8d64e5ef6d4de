"""Tests of the dataset integrity check (python -m cmseg_jax.data.check)."""

import io
import re
import subprocess
import sys

import nibabel as nib
import nifti_variants as nv
import numpy as np
import pytest

from cmseg_jax.data import check, phantom

SMALL = (8, 6, 5)


def _save(path, data, affine=None):
    data = np.asarray(data)
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(data.dtype)
    nib.save(img, path)
    return path


def _hu(seed, shape=SMALL, lo=-1024, hi=1500):
    hu = np.random.default_rng(seed).integers(lo, hi, shape).astype(np.int16)
    hu.flat[0], hu.flat[1] = lo, hi  # pin the range
    return hu


def _liver(shape=SMALL):
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 1:4, 1:3] = 1
    labels[3, 2, 2] = 2
    return labels


def _case(d, n, hu=None, labels=None, seg_affine=None, seg=True):
    vol = _save(d / f"volume-{n}.nii", _hu(n) if hu is None else hu)
    if seg:
        _save(d / f"segmentation-{n}.nii", _liver() if labels is None else labels, seg_affine)
    return vol, d / f"segmentation-{n}.nii"


def _run(d, *args):
    out = io.StringIO()  # the report and its problem lines, in order
    layout, reports, summary = check.check_directory(d, *args, out=out, problems=out)
    return out.getvalue().splitlines(), layout, reports, summary


def test_clean_phantom_dataset_passes(tmp_path):
    phantom.write_phantom_dataset(tmp_path, num_volumes=3, shape=(32, 32, 12), seed=0)
    lines, layout, reports, summary = _run(tmp_path)
    assert check.num_errors(layout, reports) == 0
    assert [r.ok for r in reports] == [True, True, True]
    assert all(r.axcodes == "LPS" for r in reports)
    info = [ln for ln in lines if ln.startswith("volume-")]
    assert len(info) == 3
    assert "orientation LPS" in info[0] and "spacing" in info[0] and "slices" in info[0]
    assert "SUMMARY: 3 volumes: 3 cases ok, 0 with errors" in summary
    assert "orientations: LPS x3" in summary
    assert check.main([str(tmp_path), "--no-progress"]) == 0


def test_every_problem_is_one_line_naming_its_file(tmp_path):
    _case(tmp_path, 0)  # fine
    _case(tmp_path, 1, seg=False)
    _case(tmp_path, 2, seg=False)
    _save(tmp_path / "segmentation-9.nii", _liver())  # orphan
    _case(tmp_path, 3, labels=np.zeros((8, 6, 4), np.uint8))
    bad = _liver()
    bad[0, 0, 0] = 3
    _case(tmp_path, 4, labels=bad)
    _case(tmp_path, 5, hu=(_hu(5) + 1024).astype(np.uint16))  # raw values, intercept lost
    _case(tmp_path, 6, labels=np.zeros(SMALL, np.uint8))  # no liver: a warning only
    _case(tmp_path, 7, seg_affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    _case(tmp_path, 8, hu=_hu(8, hi=30000))  # metal, or a wrong slope
    lines, layout, reports, summary = _run(tmp_path)
    d = str(tmp_path)
    expected = {
        rf"{d}/volume-1\.nii: no segmentation-1",
        rf"{d}/volume-2\.nii: no segmentation-2",
        rf"{d}/segmentation-9\.nii: warning: no matching volume-9",
        rf"{d}/segmentation-3\.nii: shape \(8, 6, 4\) does not match",
        rf"{d}/segmentation-4\.nii: labels must be in \{{0, 1, 2\}}, found 3",
        rf"{d}/volume-5\.nii: minimum 0 HU outside \[-3100, -500\]",
        rf"{d}/segmentation-6\.nii: warning: no liver",
        rf"{d}/segmentation-7\.nii: affine differs",
        rf"{d}/volume-8\.nii: maximum 30000 HU outside \[100, 4000\]",
    }
    for pattern in expected:
        assert sum(bool(re.match(pattern, ln)) for ln in lines) == 1, (pattern, lines)
    assert check.num_errors(layout, reports) == 7
    by_id = {r.case_id: r for r in reports}
    assert by_id[0].ok and by_id[0].info.startswith("volume-0.nii  8x6x5 int16")
    assert by_id[6].ok and by_id[6].warnings
    assert "9 volumes: 2 cases ok, 5 with errors, 2 without segmentation" in summary
    assert "7 errors, 2 warnings" in summary
    assert check.main([d, "--no-progress"]) == 1
    # A wider range accepts the metal case.
    _, layout, reports, _ = _run(tmp_path, check.HU_MIN_RANGE, (100.0, 40000.0))
    assert check.num_errors(layout, reports) == 6


@pytest.mark.parametrize(
    "name, axcodes, shape",
    [
        ("axial_first", "IRP", (24, 64, 64)),
        ("singleton_4d_transposed", "PSR", (64, 24, 64)),
        ("non_square_anisotropic_4d", "LPS", (64, 40, 24)),
    ],
)
def test_reports_orientation_and_canonical_spacing(tmp_path, name, axcodes, shape):
    variant = nv.write_variant(nv.phantom_reference(), name, tmp_path)
    lines, layout, reports, _ = _run(tmp_path)
    (report,) = reports
    assert report.ok, report.errors
    assert report.axcodes == axcodes
    assert report.shape == shape
    expected = np.linalg.norm(variant.reference.affine[:3, :3], axis=0)  # canonical x, y, z
    np.testing.assert_allclose(report.spacing, expected, rtol=1e-6)
    assert f"orientation {axcodes}" in report.info
    assert f"spacing {expected[0]:.3g} x {expected[1]:.3g} mm, slices {expected[2]:.3g} mm" in (
        report.info
    )


def test_oblique_affine_is_a_warning(tmp_path):
    nv.write_variant(nv.phantom_reference(), "oblique_10deg", tmp_path)
    lines, layout, reports, _ = _run(tmp_path)
    assert reports[0].ok and not reports[0].errors
    assert any("warning: oblique affine (10.0 degrees" in ln for ln in lines)


def test_empty_and_missing_directories(tmp_path):
    assert check.main([str(tmp_path), "--no-progress"]) == 1
    assert check.main([str(tmp_path / "nope"), "--no-progress"]) == 1


def test_cli_module(tmp_path):
    _case(tmp_path, 0)
    _case(tmp_path, 1, seg=False)
    proc = subprocess.run(
        [sys.executable, "-m", "cmseg_jax.data.check", str(tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    problem = f"{tmp_path}/volume-1.nii: no segmentation-1.nii[.gz] for this volume"
    assert problem in proc.stderr.splitlines() and problem not in proc.stdout  # problems: stderr
    assert "SUMMARY: 2 volumes: 1 cases ok" in proc.stdout  # the report: stdout


def test_too_few_volumes_are_refused_as_the_loader_refuses_them(tmp_path):
    from cmseg_jax.data import lits
    from cmseg_jax.data.nifti import DataError

    _case(tmp_path, 0)
    _case(tmp_path, 1)
    lines, layout, reports, summary = _run(tmp_path)
    assert all(r.ok for r in reports)
    with pytest.raises(DataError) as refused:
        lits.load_splits(tmp_path, image_size=8, liver_slices=1, background_slices=1)
    assert layout.errors == [str(refused.value)]
    assert "2 volume(s) leave the test split empty; at least 3 volumes" in layout.errors[0]
    assert check.num_errors(layout, reports) == 1 and "1 errors" in summary
    assert check.main([str(tmp_path), "--no-progress"]) == 1
