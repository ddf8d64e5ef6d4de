"""The CAM_β probe: its measurements on constructed maps, and its quick mode end to end."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "cam_beta_probe.py"
_SPEC = importlib.util.spec_from_file_location("cam_beta_probe", _PATH)
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def test_periodic_energy_finds_the_patch_period():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    tile = rng.standard_normal((7, 7))
    periodic = tile[yy % 7, xx % 7][None]
    noise = rng.standard_normal((4, 64, 64))
    assert (
        probe.checkerboard(periodic + 0.1 * noise[:1], 7)["ratio_to_neighbour_periods_median"] > 20
    )
    assert probe.checkerboard(periodic, 7)["variance_share_median"] > 0.95
    plain = probe.checkerboard(noise, 7)
    assert 0.5 < plain["ratio_to_neighbour_periods_median"] < 2.0
    assert plain["variance_share_median"] < 0.05


def test_regions_and_argmax_fractions():
    yy, xx = np.mgrid[:32, :32]
    body = ((yy - 16) ** 2 + (xx - 16) ** 2 < 10**2)[None]
    liver = ((yy - 16) ** 2 + (xx - 12) ** 2 < 3**2)[None].astype(np.uint8)
    regions = probe.region_map(liver, body, band_px=1)
    assert regions[0, 16, 12] == 0  # liver
    assert regions[0, 16, 26] == 1  # on the outline
    assert regions[0, 16, 20] == 2  # body
    assert regions[0, 0, 0] == 3  # air
    maps = np.zeros((4, 32, 32))
    for i, (y, x) in enumerate([(16, 12), (16, 26), (16, 20), (0, 0)]):
        maps[i, y, x] = 1.0
    np.testing.assert_allclose(
        probe.argmax_fractions(maps, np.repeat(regions, 4, axis=0)), [0.25] * 4
    )
    dist = probe.argmax_distance(maps, np.repeat(liver, 4, axis=0))
    np.testing.assert_allclose(dist, [0.0, 12.0, 6.0, np.hypot(16, 12) - 3], atol=0.5)


def test_outline_shortcut_on_planted_features():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(10), 8)
    labels = np.tile([0, 1] * 4, 10)
    informative = labels[:, None] + 0.1 * rng.standard_normal((80, 1))
    assert probe.cv_mcc(informative, labels, groups)["logistic"] > 0.9
    assert abs(probe.cv_mcc(rng.standard_normal((80, 2)), labels, groups)["logistic"]) < 0.5


def test_quick_mode_end_to_end(tmp_path):
    out = tmp_path / "probe.json"
    assert probe.main(["--quick", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["image_size"] == 32 and r["seeds"] == [0]

    def is_distribution(d, allow_empty=False):
        total = sum(d.values())
        return all(v >= 0 for v in d.values()) and (
            math.isclose(total, 1.0, abs_tol=1e-9) or (allow_empty and total == 0)
        )

    m = r["maxima"]
    assert is_distribution(m["region_area_share"])
    for seed in m["seeds"]:
        for subset in ("liver_slices", "liverfree_slices"):
            stats = seed[subset].pop("stats")
            assert 0.0 <= stats["predicted_liver_pixel_share"] <= 1.0
            assert stats["liver_peak_over_median"] >= 0 and 0 < stats["liver_peak_width"] <= 1
            for key, value in seed[subset].items():
                assert is_distribution(value), (subset, key)
                if key.endswith("argmax"):
                    assert set(value) == set(probe.REGIONS)
        assert is_distribution(seed["predicted_liver_pixels"], allow_empty=True)
        assert seed["liver_argmax_to_liver_px"]["median"] >= 0
        assert 0.0 <= seed["liver_argmax_to_liver_px"]["within_patch"] <= 1.0
        assert 0.0 <= seed["predicted_liver_pixel_share"] <= 1.0
        assert all(0.0 <= v <= 1.0 for v in seed["mean_liver_score"].values() if v == v)
        assert -1.0 <= seed["test_mcc"] <= 1.0 and -1.0 <= seed["test_cls_mcc"] <= 1.0
        for key in ("checkerboard_liver_logit", "checkerboard_liver_logit_unsmoothed"):
            assert all(np.isfinite(v) and v >= 0 for v in seed[key].values())
    for report in (r["shortcut"],):
        assert report["slices"] > 0 and 0.0 < report["liver_fraction"] < 1.0
        assert 0.85 <= report["body_mask_iou_image_vs_phantom"] <= 1.0
        for scores in report["mcc"].values():
            assert all(-1.0 <= v <= 1.0 for v in scores.values())
    w = r["hu_window"]
    assert 0.0 < w["inside_body"]["mcc"] <= w["pooled"]["mcc"] + 1e-9 <= 1.0 + 1e-9
    lo, hi = w["pooled"]["window_hu"]
    assert lo < hi


@pytest.mark.parametrize("size", [32, 128])
def test_to_grid_matches_the_mask_pipeline(size):
    from cmseg_jax.data import preprocess

    rng = np.random.default_rng(2)
    labels = (rng.random((2, 64, 64)) > 0.5).astype(np.uint8)
    if size == 32:
        labels = np.kron(labels[:, ::2, ::2], np.ones((2, 2), np.uint8))
    np.testing.assert_array_equal(
        probe._to_grid(labels, size), preprocess.masks_to_model(labels, size)
    )
