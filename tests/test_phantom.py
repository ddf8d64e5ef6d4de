"""Tests of the procedural CT phantom: format, determinism, anatomy statistics and hardness."""

import hashlib
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef

from cmseg_jax.data import phantom
from cmseg_jax.data.phantom import tissues

SMALL = (64, 64, 24)
# sha256 of the voxels (HU, labels, tissue map) and affines of two tiny volumes, per generator
# version: a change of the anatomy or the intensities must come with a GENERATOR_VERSION bump
# (which regenerates every cached dataset) and a new entry here.
CHECKSUMS = {
    2: "f2c0c02ad6bae74cd31fa2b2e4a49b11164fd8fb087d34b671b22aab558806c7",
}


def best_window_mcc(hu_volumes, liver_volumes, step=5, lo=-1030, hi=3075):
    """Best MCC of 'liver iff lo <= HU < hi' over a step-HU grid of windows, pooled over volumes.

    Returns (mcc, lo, hi). Exhaustive over all window pairs through cumulative histograms.
    """
    edges = np.arange(lo, hi + step, step)
    pos = np.zeros(len(edges) - 1)
    neg = np.zeros(len(edges) - 1)
    for hu, liver in zip(hu_volumes, liver_volumes, strict=True):
        pos += np.histogram(hu[liver], edges)[0]
        neg += np.histogram(hu[~liver], edges)[0]
    cp = np.concatenate([[0.0], np.cumsum(pos)])
    cn = np.concatenate([[0.0], np.cumsum(neg)])
    tp = cp[None, :] - cp[:, None]  # window [edges[i], edges[j])
    fp = cn[None, :] - cn[:, None]
    fn, tn = cp[-1] - tp, cn[-1] - fp
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = np.where(den > 0, (tp * tn - fp * fn) / np.sqrt(np.maximum(den, 1.0)), 0.0)
    mcc = np.triu(mcc, 1)
    i, j = np.unravel_index(np.argmax(mcc), mcc.shape)
    return float(mcc[i, j]), float(edges[i]), float(edges[j])


@pytest.fixture(scope="module")
def volumes():
    """Eight volumes at the quickstart's shape, with their tissue maps."""
    return [
        phantom.generate_volume(np.random.default_rng([0, i]), (128, 128, 48), return_tissue=True)
        for i in range(8)
    ]


def test_generate_volume_format():
    hu, labels, affine = phantom.generate_volume(np.random.default_rng(0), SMALL)
    assert hu.shape == labels.shape == SMALL
    assert hu.dtype == np.int16 and labels.dtype == np.uint8
    assert affine.shape == (4, 4)
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert hu.min() >= -1024 and hu.max() <= 3071
    # Stored L-P-S, so the loader has to flip two axes to reach RAS+.
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    spacing = np.abs(np.diag(affine)[:3])
    assert np.all(spacing > 0)
    assert 300 <= spacing[0] * SMALL[0] <= 500  # field of view, mm


def test_spacing_at_full_resolution_is_lits_like():
    # The one full-resolution volume in the suite (~2 s).
    _, _, affine = phantom.generate_volume(np.random.default_rng(3), (512, 512, 64))
    sx, sy, sz = np.abs(np.diag(affine)[:3])
    assert 0.55 <= sx <= 1.0 and sx == sy
    assert 1.0 <= sz <= 5.1


@pytest.mark.parametrize("shape", [(8, 8, 8), (40, 64, 12), (32, 32, 100)])
def test_odd_shapes(shape):
    hu, labels, _ = phantom.generate_volume(np.random.default_rng(0), shape)
    assert hu.shape == labels.shape == shape


def test_deterministic_per_seed():
    a = phantom.generate_volume(np.random.default_rng([7, 1]), SMALL)
    b = phantom.generate_volume(np.random.default_rng([7, 1]), SMALL)
    c = phantom.generate_volume(np.random.default_rng([7, 2]), SMALL)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_labels_and_tumours(volumes):
    for _, labels, _, _ in volumes:
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert (labels == 1).sum() > 1000
    assert sum(int((v[1] == 2).sum()) for v in volumes) > 100
    assert sum(int((v[1] == 2).any()) for v in volumes) >= 4


def test_about_half_the_slices_contain_liver(volumes):
    fractions = [np.any(labels > 0, axis=(0, 1)).mean() for _, labels, _, _ in volumes]
    assert all(0.35 <= f <= 0.65 for f in fractions), fractions
    # The liver is in the upper part of the volume: contiguous slices reaching the top quarter.
    for _, labels, _, _ in volumes:
        z = np.nonzero(np.any(labels > 0, axis=(0, 1)))[0]
        assert z.max() - z.min() + 1 == len(z)
        assert z.min() > labels.shape[2] * 0.25 and z.max() > labels.shape[2] * 0.75


def test_air_outside_and_body_tissues(volumes):
    hu, _, _, tissue = volumes[0]
    assert np.median(hu[tissue == tissues.AIR]) < -950
    present = set(np.unique(tissue))
    for t in (
        tissues.FAT_SUBCUT,
        tissues.MUSCLE,
        tissues.BONE_CORTEX,
        tissues.SPLEEN,
        tissues.KIDNEY_CORTEX,
        tissues.BLOOD,
        tissues.LUNG,
        tissues.GAS,
        tissues.RIB,
    ):
        assert t in present, t


def test_organs_appear_along_z_realistically(volumes):
    for _, labels, _, tissue in volumes:
        z_liver = np.nonzero(np.any(labels > 0, axis=(0, 1)))[0]
        z_kidney = np.nonzero(np.any(tissue == tissues.KIDNEY_CORTEX, axis=(0, 1)))[0]
        z_lung = np.nonzero(np.any(tissue == tissues.LUNG, axis=(0, 1)))[0]
        # Kidneys sit lower than the liver; lung bases sit above it (reaching down behind it).
        assert z_kidney.mean() < z_liver.mean()
        assert z_lung.max() > z_liver.max() and z_lung.min() > z_liver.min()


def test_liver_is_not_the_only_tissue_in_its_hu_band(volumes):
    for hu, labels, _, tissue in volumes:
        liver = labels > 0
        lo, hi = np.percentile(hu[liver], [10, 90])
        others = (hu >= lo) & (hu <= hi) & ~liver
        assert others.sum() > ((hu >= lo) & (hu <= hi) & liver).sum()
        # Several tissues share the band (muscle, bowel, vessels, heart, kidneys, ...).
        _, counts = np.unique(tissue[others], return_counts=True)
        assert np.sum(counts >= 0.05 * others.sum()) >= 3


def test_best_hu_window_is_as_poor_as_on_real_ct(volumes):
    hus = [v[0] for v in volumes]
    livers = [v[1] > 0 for v in volumes]
    mcc, lo, hi = best_window_mcc(hus, livers)
    # Real abdominal CT: 0.62-0.67. Hard, but a model can still learn something from intensity.
    assert 0.3 <= mcc <= 0.70, (mcc, lo, hi)
    # The histogram search agrees with scikit-learn at the window it found.
    hu, liver = hus[0].ravel(), livers[0].ravel()
    pred = (hu >= lo) & (hu < hi)
    tp, fp = np.sum(pred & liver), np.sum(pred & ~liver)
    fn, tn = np.sum(~pred & liver), np.sum(~pred & ~liver)
    ours = (tp * tn - fp * fn) / np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert ours == pytest.approx(matthews_corrcoef(liver, pred), abs=1e-9)
    assert best_window_mcc(hus[:1], livers[:1])[0] >= ours - 1e-12
    # Inside the body alone (no free true negatives from air) it is lower still.
    inside = [v[3] != tissues.AIR for v in volumes]
    mcc_body, _, _ = best_window_mcc(
        [h[m] for h, m in zip(hus, inside, strict=True)],
        [lv[m] for lv, m in zip(livers, inside, strict=True)],
    )
    assert mcc_body <= mcc + 1e-9
    # No single volume is easy either.
    for h, lv in zip(hus, livers, strict=True):
        assert best_window_mcc([h], [lv])[0] <= 0.8


def test_write_phantom_dataset_round_trip(tmp_path):
    out = phantom.write_phantom_dataset(tmp_path / "ds", num_volumes=2, shape=SMALL, seed=5)
    assert out == tmp_path / "ds"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "segmentation-0.nii.gz",
        "segmentation-1.nii.gz",
        "volume-0.nii.gz",
        "volume-1.nii.gz",
    ]
    for n in range(2):
        hu, labels, affine = phantom.generate_volume(np.random.default_rng([5, n]), SMALL)
        vol = nib.load(out / f"volume-{n}.nii.gz")
        seg = nib.load(out / f"segmentation-{n}.nii.gz")
        assert vol.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(vol.dataobj), hu)
        np.testing.assert_array_equal(np.asanyarray(seg.dataobj), labels)
        np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
        np.testing.assert_allclose(seg.affine, affine, atol=1e-5)


def test_ensure_phantom_is_cached_and_atomic(tmp_path, monkeypatch):
    path = phantom.ensure_phantom(tmp_path, num_volumes=2, shape=SMALL, seed=1)
    assert path.parent == tmp_path
    assert sorted(p.name for p in path.glob("volume-*")) == ["volume-0.nii.gz", "volume-1.nii.gz"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary directories left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(phantom, "write_phantom_dataset", fail)
    assert phantom.ensure_phantom(tmp_path, num_volumes=2, shape=SMALL, seed=1) == path
    # A different key is a different dataset; a failed write leaves nothing behind.
    with pytest.raises(AssertionError):
        phantom.ensure_phantom(tmp_path, num_volumes=3, shape=SMALL, seed=1)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_ensure_phantom_replaces_incomplete_directory(tmp_path):
    key_dir = phantom.ensure_phantom(tmp_path, num_volumes=1, shape=SMALL, seed=2)
    (key_dir / "phantom.json").unlink()  # as if something else left a partial directory
    again = phantom.ensure_phantom(tmp_path, num_volumes=1, shape=SMALL, seed=2)
    assert again == key_dir and (again / "phantom.json").is_file()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CMSEG_CACHE", str(tmp_path))
    assert phantom.cache_dir() == tmp_path / "phantom"
    monkeypatch.delenv("CMSEG_CACHE")
    expected = pathlib.Path(os.path.expanduser("~")) / ".cache" / "cmseg_jax" / "phantom"
    assert phantom.cache_dir() == expected


def test_output_is_pinned_to_the_generator_version():
    digest = hashlib.sha256()
    for key, shape in (((0, 0), (24, 20, 16)), ((1, 3), (16, 24, 12))):
        arrays = phantom.generate_volume(np.random.default_rng(key), shape, return_tissue=True)
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())
    version = phantom.GENERATOR_VERSION
    assert version in CHECKSUMS, f"record the checksum of GENERATOR_VERSION {version}"
    assert digest.hexdigest() == CHECKSUMS[version], (
        f"the phantom's output changed without a GENERATOR_VERSION bump (still {version})"
    )
