"""cmseg_jax.stats against direct scipy calls."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from cmseg_jax import stats

BASELINE = np.array([0.91, 0.88, 0.93, 0.42, 0.90, 0.87, 0.95, 0.89, 0.05, 0.92, 0.86, 0.94])
OTHER = np.array([0.81, 0.85, 0.79, 0.88, 0.60, 0.83, 0.80, 0.84, 0.82, 0.78])


def test_summarize_ignores_nan_and_uses_ddof1():
    values = np.array([0.5, np.nan, 0.7, 0.9, np.nan, 0.2])
    got = stats.summarize(values)
    finite = values[~np.isnan(values)]
    assert got["n"] == 4 and got["n_nan"] == 2
    assert got["mean"] == pytest.approx(finite.mean())
    assert got["std"] == pytest.approx(np.std(finite, ddof=1))
    assert got["median"] == pytest.approx(0.6)

    one = stats.summarize([0.3])
    assert one["n"] == 1 and one["mean"] == 0.3 and math.isnan(one["std"])
    none = stats.summarize([np.nan, np.nan])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["median"])


def test_format_cell():
    assert stats.format_cell(0.906, 0.126, 0.927) == "0.906 ± 0.126 (0.927)"
    assert stats.format_cell(0.68249, 0.27, 0.782) == "0.682 ± 0.270 (0.782)"
    assert stats.format_cell(0.5, np.nan, 0.5, digits=2) == "0.50 ± nan (0.50)"


def _legacy_anderson(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sps.anderson(x, dist="norm")


def test_compare_matches_scipy():
    got = stats.compare(BASELINE, OTHER, alpha=0.05)
    mood_stat, mood_p, _, _ = sps.median_test(BASELINE, OTHER)
    welch = sps.ttest_ind(BASELINE, OTHER, equal_var=False)
    assert got["mood_statistic"] == pytest.approx(mood_stat)
    assert got["mood_p"] == pytest.approx(mood_p)
    assert got["welch_statistic"] == pytest.approx(welch.statistic)
    assert got["welch_p"] == pytest.approx(welch.pvalue)
    assert got["mood_significant"] == (mood_p < 0.05)
    assert got["welch_significant"] == (welch.pvalue < 0.05)
    for group, values in (("baseline", BASELINE), ("other", OTHER)):
        ad = _legacy_anderson(values)
        assert ad.significance_level[2] == 5.0
        assert got[f"ad_{group}_statistic"] == pytest.approx(ad.statistic)
        assert got[f"ad_{group}_critical_5"] == pytest.approx(ad.critical_values[2])
        assert got[f"ad_{group}_normal"] == bool(ad.statistic < ad.critical_values[2])
    # The baseline has two failed seeds: heavily skewed, not normal.
    assert got["ad_baseline_normal"] is False and got["welch_valid"] is False
    assert got["higher_median"] == "baseline"
    assert got["median_baseline"] == pytest.approx(np.median(BASELINE))
    assert got["n_baseline"] == 12 and got["n_other"] == 10
    assert got["notes"] == []


def test_compare_normal_groups_and_nan():
    rng = np.random.default_rng(0)
    a = rng.normal(0.7, 0.05, 40)
    b = rng.normal(0.65, 0.05, 35)
    got = stats.compare(np.append(a, [np.nan, np.nan]), b, alpha=0.01)
    assert got["n_baseline"] == 40
    assert got["welch_p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert got["ad_baseline_normal"] and got["ad_other_normal"] and got["welch_valid"]
    assert got["welch_significant"] and got["alpha"] == 0.01
    assert got["higher_mean"] == "baseline"
    assert stats.compare(b, a)["higher_median"] == "other"


@pytest.mark.parametrize(
    "a, b, expect_note",
    [
        ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5], "Mood"),
        ([0.0] * 5, [1.0] * 5, "zero variance"),
        ([0.1, 0.2], [0.3, 0.4, 0.5], "fewer than"),
        ([], [0.3, 0.4, 0.5], "fewer than"),
        ([np.nan] * 4, [0.3, 0.4, 0.5], "fewer than"),
    ],
)
def test_compare_degenerate(a, b, expect_note):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate input must not even warn
        got = stats.compare(a, b)
    assert any(expect_note in note for note in got["notes"]), got["notes"]
    if expect_note == "zero variance":
        # Constant but different groups: Mood's test is still well defined (and significant).
        assert got["mood_p"] == pytest.approx(sps.median_test(a, b)[1])
    else:
        assert math.isnan(got["mood_p"]) and not got["mood_significant"]
    if expect_note != "Mood":
        assert math.isnan(got["welch_p"])


def test_anderson_one_constant_group_other_tested():
    got = stats.compare([0.5] * 6, OTHER)
    assert got["ad_baseline_normal"] is None and not got["welch_valid"]
    assert got["ad_other_statistic"] == pytest.approx(_legacy_anderson(OTHER).statistic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy notes the constant group
        want = sps.ttest_ind([0.5] * 6, OTHER, equal_var=False).pvalue
    assert got["welch_p"] == pytest.approx(want)
