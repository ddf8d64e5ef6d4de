"""Tests of the LiTS loader and the thesis' sampling protocol (phantom and hand-made files)."""

import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from cmseg_jax.data import lits, nifti, phantom, preprocess

SHAPE = (64, 64, 24)
FIELDS = ("images", "masks", "labels", "volume_ids", "slice_index")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return phantom.write_phantom_dataset(
        tmp_path_factory.mktemp("phantom"), num_volumes=6, shape=SHAPE, seed=0
    )


def _save(path, data, affine=None, dtype=None, **header):
    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    if "slope" in header:
        img.header.set_slope_inter(header["slope"], header["inter"])
    nib.save(img, path)
    return path


def _pair(tmp_path, n=0, hu=None, labels=None, shape=(8, 6, 5), affine=None):
    rng = np.random.default_rng(n)
    hu = rng.integers(-1000, 1000, shape).astype(np.int16) if hu is None else hu
    if labels is None:
        labels = np.zeros(shape, np.uint8)
        labels[2:5, 1:4, 1:3] = 1
        labels[3, 2, 2] = 2
    vol = _save(tmp_path / f"volume-{n}.nii", hu, affine)
    seg = _save(tmp_path / f"segmentation-{n}.nii", labels, affine)
    return vol, seg


def _assert_one_line_error(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg


# ---------------------------------------------------------------------------------------------
# find_cases


def test_find_cases_matches_by_number_across_folders(tmp_path):
    (tmp_path / "volume_pt1").mkdir()
    (tmp_path / "segmentations").mkdir()
    (tmp_path / ".hidden").mkdir()
    for n in (10, 2):
        _save(tmp_path / "volume_pt1" / f"volume-{n}.nii", np.zeros((4, 4, 4), np.int16))
        _save(
            tmp_path / "segmentations" / f"segmentation-{n}.nii.gz", np.zeros((4, 4, 4), np.uint8)
        )
    _save(tmp_path / ".hidden" / "volume-3.nii", np.zeros((4, 4, 4), np.int16))
    (tmp_path / "notes-1.txt").write_text("not a case")
    cases = lits.find_cases(tmp_path)
    assert [c[0] for c in cases] == [2, 10]
    assert cases[0][1].name == "volume-2.nii" and cases[0][2].name == "segmentation-2.nii.gz"


def test_find_cases_errors(tmp_path, caplog):
    with pytest.raises(lits.DataError) as e:
        lits.find_cases(tmp_path)
    _assert_one_line_error(e, tmp_path)
    with pytest.raises(lits.DataError):
        lits.find_cases(tmp_path / "missing")

    _save(tmp_path / "volume-1.nii", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(lits.DataError, match="no segmentation-1") as e:
        lits.find_cases(tmp_path)
    _assert_one_line_error(e, tmp_path / "volume-1.nii")

    _save(tmp_path / "segmentation-1.nii", np.zeros((4, 4, 4), np.uint8))
    _save(tmp_path / "segmentation-7.nii", np.zeros((4, 4, 4), np.uint8))  # orphan: warned
    with caplog.at_level(logging.WARNING):
        assert [c[0] for c in lits.find_cases(tmp_path)] == [1]
    assert "segmentation-7" in caplog.text

    _save(tmp_path / "volume-1.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(lits.DataError, match="duplicate"):
        lits.find_cases(tmp_path)


# ---------------------------------------------------------------------------------------------
# load_case


def test_load_case_equals_nibabel_canonical(data_dir):
    _, vol, seg = lits.find_cases(data_dir)[0]
    hu, labels = nifti.load_case(vol, seg)
    assert hu.dtype == np.float32 and labels.dtype == np.uint8
    ref_hu = nib.as_closest_canonical(nib.load(vol)).get_fdata()
    ref_seg = nib.as_closest_canonical(nib.load(seg)).get_fdata()
    np.testing.assert_array_equal(hu, ref_hu)
    np.testing.assert_array_equal(labels, ref_seg)
    # The phantom is stored L-P-S: the loader undid the flip of the first two axes.
    stored = np.asanyarray(nib.load(vol).dataobj)
    np.testing.assert_array_equal(hu, stored[::-1, ::-1, :])
    assert set(np.unique(labels)) == {0, 1, 2}


def test_orientation_survives_canonicalisation(tmp_path):
    """The same anatomy stored in RAS, LPS and a permuted order loads identically."""
    ras_hu = np.full((8, 6, 5), -1000, np.int16)
    ras_hu[7, 5, 4] = 500  # marker in the right-anterior-superior corner
    ras_hu[0, 0, 0] = 100  # and one in the left-posterior-inferior corner
    ras_lab = np.zeros((8, 6, 5), np.uint8)
    ras_lab[6:, 4:, 3:] = 1
    ras_aff = np.diag([0.7, 0.8, 2.5, 1.0])
    ras_aff[:3, 3] = (-10, 20, -300)
    # (name, stored array from the canonical one, M with canonical index = M @ stored index)
    layouts = [
        ("ras", lambda a: a, np.eye(4)),
        # LiTS-like L-P-S: stored (i, j, k) holds canonical (7 - i, 5 - j, k).
        (
            "lps",
            lambda a: a[::-1, ::-1, :],
            np.array([[-1, 0, 0, 7], [0, -1, 0, 5], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
        ),
        # Permuted: stored (a, b, c) holds canonical (b, c, 4 - a).
        (
            "perm",
            lambda a: np.transpose(a[:, :, ::-1], (2, 0, 1)),
            np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, 4], [0, 0, 0, 1.0]]),
        ),
    ]
    for name, to_stored, to_canonical in layouts:
        d = tmp_path / name
        d.mkdir()
        hu_s = np.ascontiguousarray(to_stored(ras_hu))
        lab_s = np.ascontiguousarray(to_stored(ras_lab))
        vol, seg = _pair(d, hu=hu_s, labels=lab_s, shape=hu_s.shape, affine=ras_aff @ to_canonical)
        hu, labels = nifti.load_case(vol, seg)
        np.testing.assert_array_equal(hu, ras_hu, err_msg=name)
        np.testing.assert_array_equal(labels, ras_lab, err_msg=name)
        # The slice reader (used by load_splits) agrees with the full reader.
        pair = nifti.open_pair(vol, seg)
        np.testing.assert_array_equal(
            pair.axial_hu(np.array([4, 0])),
            np.stack([ras_hu[:, :, 4], ras_hu[:, :, 0]]),
        )


def test_load_case_honours_scaling_and_4d_singleton(tmp_path):
    hu = np.arange(-1024, -1024 + 8 * 6 * 5, dtype=np.float64).reshape(8, 6, 5)
    vol = _save(
        tmp_path / "volume-0.nii",
        (hu + 1024).astype(np.uint16)[..., None],
        dtype=np.uint16,
        slope=1.0,
        inter=-1024.0,
    )
    seg = _save(
        tmp_path / "segmentation-0.nii.gz", np.ones((8, 6, 5), np.float32), dtype=np.float32
    )
    got, labels = nifti.load_case(vol, seg)
    np.testing.assert_array_equal(got, hu.astype(np.float32))
    assert labels.dtype == np.uint8 and labels.min() == 1


@pytest.mark.parametrize(
    "problem", ["shape", "labels", "float_labels", "4d", "2d", "affine", "garbage", "truncated"]
)
def test_load_case_errors_are_one_line_and_name_the_file(tmp_path, problem):
    vol, seg = _pair(tmp_path)
    bad = seg
    if problem == "shape":
        _save(seg, np.zeros((8, 6, 4), np.uint8))
    elif problem == "labels":
        labels = np.zeros((8, 6, 5), np.uint8)
        labels[1, 1, 1] = 5
        _save(seg, labels)
    elif problem == "float_labels":
        _save(seg, np.full((8, 6, 5), 0.5, np.float32))
    elif problem == "4d":
        bad = vol
        _save(vol, np.zeros((8, 6, 5, 2), np.int16))
    elif problem == "2d":
        bad = vol
        _save(vol, np.zeros((8, 6), np.int16))
    elif problem == "affine":
        _save(seg, np.zeros((8, 6, 5), np.uint8), affine=np.diag([2.0, 1, 1, 1]))
    elif problem == "garbage":
        bad = vol.with_name("volume-0.nii.gz")
        vol.unlink()
        bad.write_bytes(b"this is not a NIfTI file" * 20)
        vol = bad
    elif problem == "truncated":
        bad = vol
        vol.write_bytes(vol.read_bytes()[:400])
    with pytest.raises(lits.DataError) as e:
        nifti.load_case(vol, seg)
    _assert_one_line_error(e, bad)
    assert isinstance(e.value, ValueError)
    with pytest.raises(lits.DataError):  # the protocol surfaces the same error
        lits.load_splits(tmp_path, image_size=8, liver_slices=1, background_slices=1)


# ---------------------------------------------------------------------------------------------
# Protocol


def test_hu_to_unit():
    out = preprocess.hu_to_unit(np.array([-3000, -1024, 0, 512, 1024, 3000]))
    np.testing.assert_allclose(out, [-1, -1, 0, 0.5, 1, 1])
    assert out.dtype == np.float32
    window = (-200, 300)
    np.testing.assert_allclose(preprocess.hu_to_unit([-200, 50, 300], window=window), [-1, 0, 1])
    with pytest.raises(ValueError):
        preprocess.hu_to_unit([0], window=(10, 10))


def test_split_cases_by_volume():
    ids = list(range(100, 120))
    split = lits.split_cases(ids, split_seed=3)
    assert [len(split[s]) for s in lits.SPLITS] == [12, 4, 4]
    assert sorted(sum(split.values(), [])) == ids  # disjoint and complete
    assert split == lits.split_cases(list(reversed(ids)), split_seed=3)  # deterministic
    assert split != lits.split_cases(ids, split_seed=4)
    for n in range(3, 9):
        assert all(lits.split_cases(range(n))[s] for s in lits.SPLITS), n
    assert lits.split_cases([1, 2], fractions=(0.5, 0.5, 0.0))["test"] == []
    with pytest.raises(ValueError):
        lits.split_cases(ids, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError):
        lits.split_cases([1, 1, 2])


def test_load_splits_protocol(data_dir):
    sets = lits.load_splits(data_dir, image_size=32, liver_slices=4, background_slices=4)
    split = lits.split_cases(range(6))
    for name in lits.SPLITS:
        s = sets[name]
        assert s.images.shape == (len(s), 32, 32) and s.images.dtype == np.float32
        assert s.masks.shape == (len(s), 32, 32) and s.masks.dtype == np.uint8
        for f in ("labels", "volume_ids", "slice_index"):
            assert getattr(s, f).shape == (len(s),) and getattr(s, f).dtype == np.int32
        assert s.images.min() >= -1 and s.images.max() <= 1
        assert set(np.unique(s.masks)) <= {0, 1}
        assert sorted(set(s.volume_ids.tolist())) == split[name]  # split by volume
        for v in split[name]:  # balanced: 4 liver + 4 background slices per volume
            sel = s.volume_ids == v
            assert s.labels[sel].tolist().count(1) == 4 and s.labels[sel].tolist().count(0) == 4
            assert len(set(s.slice_index[sel].tolist())) == 8
        # Background slices carry no liver; most liver slices keep some at this size.
        assert s.masks[s.labels == 0].sum() == 0
        assert np.mean(s.masks[s.labels == 1].any(axis=(1, 2))) > 0.7
    again = lits.load_splits(data_dir, image_size=32, liver_slices=4, background_slices=4)
    for name in lits.SPLITS:
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(sets[name], f), getattr(again[name], f))


def test_load_splits_pixels_match_the_canonical_volume(data_dir):
    """At native size, images and masks are exactly the displayed canonical slices."""
    # Every liver slice is taken, so every tumour (label 2) voxel is on some returned slice.
    sets = lits.load_splits(data_dir, image_size=SHAPE[0], liver_slices=100, background_slices=2)
    tumour_pixels = 0
    for vid, vol, seg in lits.find_cases(data_dir):
        hu, labels = nifti.load_case(vol, seg)
        for s in sets.values():
            for i in np.nonzero(s.volume_ids == vid)[0]:
                z = s.slice_index[i]
                view = np.flip(labels[:, :, z], (0, 1)).T
                np.testing.assert_allclose(
                    s.images[i], preprocess.hu_to_unit(np.flip(hu[:, :, z], (0, 1)).T), atol=1e-3
                )
                np.testing.assert_array_equal(s.masks[i], view > 0)  # tumour counts as liver
                assert s.labels[i] == int(view.any())
                tumour_pixels += int((s.masks[i][view == 2] == 1).sum())
    assert tumour_pixels > 0


def test_display_orientation(data_dir):
    """Radiological view: liver on the image's left, spine in the lower (posterior) half."""
    s = lits.load_splits(data_dir, image_size=SHAPE[0], liver_slices=5, background_slices=0)
    liver_cols = np.nonzero(s["train"].masks)[2]
    assert liver_cols.mean() < SHAPE[0] / 2 - 4
    centre = s["train"].images[:, :, SHAPE[0] // 2 - 3 : SHAPE[0] // 2 + 3]
    bone_rows = np.nonzero(centre > preprocess.hu_to_unit(350.0))[1]
    assert bone_rows.mean() > SHAPE[1] / 2


def test_resize_paths_and_square_padding(tmp_path):
    shape = (64, 48, 6)  # non-square in-plane
    hu = np.full(shape, 40, np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[10:30, 10:30, 3:] = 1
    _pair(tmp_path, hu=hu, labels=labels, shape=shape)
    for size in (64, 32, 48, 100):
        s = lits.load_splits(
            tmp_path,
            image_size=size,
            fractions=(1.0, 0.0, 0.0),
            liver_slices=3,
            background_slices=3,
        )["train"]
        assert s.images.shape == (6, size, size)
        # Display is (Y, X) = (48, 64): 8 rows of air padding above and below.
        pad = round(8 * size / 64)
        np.testing.assert_allclose(s.images[:, : max(pad - 1, 0)], -1.0)
        inner = s.images[:, pad + 1 : size - pad - 1]
        np.testing.assert_allclose(inner, preprocess.hu_to_unit(40.0), atol=1e-3)
        assert s.masks[s.labels == 1].mean() == pytest.approx(400 / (64 * 64), rel=0.25)


def test_fewer_slices_than_requested_takes_all(data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        sets = lits.load_splits(data_dir, image_size=16, liver_slices=100, background_slices=2)
    assert "requested" in caplog.text
    for vid, vol, seg in lits.find_cases(data_dir):
        _, labels = nifti.load_case(vol, seg)
        n_liver = int(np.any(labels > 0, axis=(0, 1)).sum())
        got = sum(int(((s.volume_ids == vid) & (s.labels == 1)).sum()) for s in sets.values())
        assert got == n_liver


def test_slice_picks_do_not_depend_on_other_volumes(data_dir, tmp_path):
    small = tmp_path / "subset"
    small.mkdir()
    for n in (1, 4, 5):
        for kind in ("volume", "segmentation"):
            shutil.copy(data_dir / f"{kind}-{n}.nii.gz", small / f"{kind}-{n}.nii.gz")

    def picks(d):
        out = {}
        for s in lits.load_splits(d, image_size=16, liver_slices=3, background_slices=3).values():
            for v, z in zip(s.volume_ids.tolist(), s.slice_index.tolist(), strict=True):
                out.setdefault(v, []).append(z)
        return out

    full, sub = picks(data_dir), picks(small)
    for v in (1, 4, 5):
        assert sorted(full[v]) == sorted(sub[v])


def test_cache_hit_returns_identical_arrays(data_dir, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    kwargs = dict(image_size=32, liver_slices=3, background_slices=3, cache_dir=cache)
    first = lits.load_splits(data_dir, **kwargs)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and not list(cache.glob(".*"))  # written atomically, no debris

    def no_reading(*args, **kwargs):
        raise AssertionError("read a volume on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(nifti.Pair, "axial_hu", no_reading)
        second = lits.load_splits(data_dir, **kwargs)
    for name in lits.SPLITS:
        for f in FIELDS:
            a, b = getattr(first[name], f), getattr(second[name], f)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    # Other parameters or a touched file mean another key.
    lits.load_splits(data_dir, **{**kwargs, "split_seed": 1})
    assert len(list(cache.glob("*.npz"))) == 2
    seg = data_dir / "segmentation-0.nii.gz"
    st = seg.stat()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        lits.load_splits(data_dir, **kwargs)
    finally:
        os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(list(cache.glob("*.npz"))) == 3
    # A corrupt cache file is rebuilt, not fatal.
    files[0].write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING):
        third = lits.load_splits(data_dir, **kwargs)
    np.testing.assert_array_equal(third["train"].images, first["train"].images)
