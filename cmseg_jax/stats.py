"""Across-seed summaries and hypothesis tests (host side, numpy + scipy).

A sweep gives one value of each metric per seed; these helpers summarise such a sample and compare
two of them the way the thesis does (chapter 8): Mood's median test first, because per-seed scores
are often skewed (a few seeds overfit or fail to train), and Welch's t-test where the
Anderson-Darling test does not reject normality in either group.

Conventions:

* NaN values (diverged seeds) are ignored everywhere; the counts ``n`` say how many values were
  used, so nothing is dropped silently.
* The standard deviation is the sample standard deviation, ``ddof=1`` (NaN for fewer than 2 values).
* A test that cannot be computed (fewer than :data:`MIN_VALUES` values in a group, or every value
  in a group identical) returns NaN p-values / statistics and a human-readable entry in ``notes``
  rather than raising.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps

# Below three values a median test, a t-test or a normality test says nothing useful.
MIN_VALUES = 3

# Anderson-Darling (normal, mean and variance estimated) critical value at the 5 % level before the
# small-sample correction; D'Agostino & Stephens (1986), Table 4.7 -- the table SciPy uses.
_AD_NORM_CRITICAL_5 = 0.752


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[~np.isnan(values)]


def summarize(values) -> dict:
    """Mean, standard deviation (``ddof=1``), median and count of a sample, ignoring NaN.

    Args:
        values: ``(n,)`` array-like of floats (any shape is flattened); NaN marks a missing value.

    Returns:
        ``{"mean", "std", "median", "n", "n_nan"}``: floats (NaN when undefined: no values, or
        ``std`` with fewer than 2), ``n`` the number of non-NaN values and ``n_nan`` the number of
        NaN values ignored.
    """
    raw = np.asarray(values, dtype=np.float64).ravel()
    x = _finite(raw)
    n = int(x.size)
    return {
        "mean": float(np.mean(x)) if n else math.nan,
        "std": float(np.std(x, ddof=1)) if n >= 2 else math.nan,
        "median": float(np.median(x)) if n else math.nan,
        "n": n,
        "n_nan": int(raw.size - n),
    }


def _fmt(value: float, digits: int) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def format_cell(mean: float, std: float, median: float, digits: int = 3) -> str:
    """The thesis' table cell ``mean ± std (median)``, e.g. ``"0.906 ± 0.126 (0.927)"``.

    Undefined values are written ``nan``.
    """
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)} ({_fmt(median, digits)})"


def anderson_normal(values) -> dict:
    """Anderson-Darling test of normality (mean and variance estimated from the sample).

    Args:
        values: ``(n,)`` sample; NaN ignored.

    Returns:
        ``{"statistic", "critical_5", "pvalue", "normal", "note"}``: the A² statistic, the critical
        value at the 5 % level for this ``n`` (as ``scipy.stats.anderson`` reports it), SciPy's
        interpolated p-value (clipped to the table's range [0.01, 0.15]), ``normal`` True when
        A² < critical value (normality not rejected at 5 %), None when the test cannot be run,
        and ``note`` ("" or why it was not run).
    """
    x = _finite(values)
    n = x.size
    out = {"statistic": math.nan, "critical_5": math.nan, "pvalue": math.nan, "normal": None}
    if n < MIN_VALUES:
        return out | {"note": f"fewer than {MIN_VALUES} values (n={n})"}
    out["critical_5"] = round(_AD_NORM_CRITICAL_5 / (1.0 + 0.75 / n + 2.25 / n**2), 3)
    if np.all(x == x[0]):
        return out | {"note": "all values equal"}
    result = sps.anderson(x, dist="norm", method="interpolate")
    statistic = float(result.statistic)
    return out | {
        "statistic": statistic,
        "pvalue": float(result.pvalue),
        "normal": bool(statistic < out["critical_5"]),
        "note": "",
    }


def _higher(a: float, b: float) -> str:
    if not (np.isfinite(a) and np.isfinite(b)):
        return "n/a"
    return "baseline" if a > b else "other" if b > a else "equal"


def compare(baseline_values, other_values, alpha: float = 0.05) -> dict:
    """Compare one metric between a baseline and another model, seed by seed (thesis table 8.7).

    Tests (two-sided): Mood's median test (``scipy.stats.median_test``, default ``ties="below"``
    and continuity correction), Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``), and an
    Anderson-Darling normality test per group (:func:`anderson_normal`). The t-test is only
    trustworthy when both groups pass; ``welch_valid`` says so.

    Args:
        baseline_values: ``(n_baseline,)`` per-seed values of the baseline; NaN ignored.
        other_values: ``(n_other,)`` per-seed values of the alternative; NaN ignored.
        alpha: significance level for the ``*_significant`` flags.

    Returns:
        A flat dict (one row of an ablation table): ``n_baseline``, ``n_other``,
        ``mean_baseline``, ``mean_other``, ``median_baseline``, ``median_other``,
        ``higher_median`` and ``higher_mean`` (``"baseline"``, ``"other"``, ``"equal"`` or
        ``"n/a"``), ``mood_statistic``, ``mood_p``, ``mood_significant``, ``welch_statistic``,
        ``welch_p``, ``welch_significant``, ``welch_valid``, ``ad_baseline_statistic``,
        ``ad_baseline_critical_5``, ``ad_baseline_normal``, the same three for ``ad_other``,
        ``alpha`` and ``notes`` (a list of strings). P-values are NaN and flags False/None when a
        test could not be run; ``notes`` says why.
    """
    a, b = _finite(baseline_values), _finite(other_values)
    sa, sb = summarize(a), summarize(b)
    notes: list[str] = []
    row = {
        "n_baseline": sa["n"],
        "n_other": sb["n"],
        "mean_baseline": sa["mean"],
        "mean_other": sb["mean"],
        "median_baseline": sa["median"],
        "median_other": sb["median"],
        "higher_median": _higher(sa["median"], sb["median"]),
        "higher_mean": _higher(sa["mean"], sb["mean"]),
        "mood_statistic": math.nan,
        "mood_p": math.nan,
        "welch_statistic": math.nan,
        "welch_p": math.nan,
    }

    for group, values in (("baseline", a), ("other", b)):
        ad = anderson_normal(values)
        row[f"ad_{group}_statistic"] = ad["statistic"]
        row[f"ad_{group}_critical_5"] = ad["critical_5"]
        row[f"ad_{group}_normal"] = ad["normal"]
        if ad["note"]:
            notes.append(f"Anderson-Darling ({group}): {ad['note']}")

    if min(a.size, b.size) < MIN_VALUES:
        notes.append(
            f"fewer than {MIN_VALUES} values in a group (n_baseline={a.size}, n_other={b.size}):"
            " no between-group tests"
        )
    else:
        try:
            mood_stat, mood_p, _, _ = sps.median_test(a, b)
            row["mood_statistic"], row["mood_p"] = float(mood_stat), float(mood_p)
        except ValueError as err:  # every value on one side of the grand median
            notes.append(f"Mood's median test undefined: {err}")
        if np.all(a == a[0]) and np.all(b == b[0]):
            notes.append("Welch t-test undefined: both groups have zero variance")
        else:
            with warnings.catch_warnings():
                # One constant group is fine for Welch (the other carries the variance).
                warnings.simplefilter("ignore", RuntimeWarning)
                welch = sps.ttest_ind(a, b, equal_var=False)
            row["welch_statistic"], row["welch_p"] = float(welch.statistic), float(welch.pvalue)

    row["mood_significant"] = bool(row["mood_p"] < alpha)  # NaN < alpha is False
    row["welch_significant"] = bool(row["welch_p"] < alpha)
    row["welch_valid"] = bool(row["ad_baseline_normal"] and row["ad_other_normal"])
    row["alpha"] = float(alpha)
    row["notes"] = notes
    return row
