"""The report's text: markdown sections, and the CSV and JSON forms of its content."""

from __future__ import annotations

import csv
import io
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from cmseg_jax import metrics, stats
from cmseg_jax import workdir as workdir_io
from cmseg_jax.report.runs import VARIANT_TITLES, Run
from cmseg_jax.results import SPLIT_TITLES, SPLITS, metric_title, thesis_table_rows

# The compact ablation table shows these (thesis table 8.7 has Cls-MCC and MCC).
ABLATION_METRICS = ("cls_mcc", "mcc", "iou", "dice", "precision", "recall")


# ----------------------------------------------------------------------------------------------
# Markdown


def _p(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _num(value: float, digits: int = 3) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def thesis_table_markdown(run: Run) -> str:
    """The thesis' results table (tables 8.1-8.6) for one run, with the seed count stated."""
    num_ok = int(run.ok_mask.sum())
    header = ["", *(SPLIT_TITLES[s] for s in SPLITS)]
    lines = [
        f"Seeds: n = {num_ok} of {len(run.seeds)}"
        + (f"; {len(run.diverged)} diverged: {run.diverged}" if run.diverged else "")
        + f". Values from {run.source}. Cells: mean ± std (median) over seeds, std with ddof = 1;"
        " a cell over fewer seeds says [n=..].",
        "",
        *_md_table(header, thesis_table_rows(run.values, num_ok)),
    ]
    return "\n".join(lines)


def ensemble_markdown(run: Run) -> str:
    """The ensemble of the run's seeds beside their statistics: per metric and split, the seeds'
    ``mean ± std (median)`` and the value of the whole ensemble."""
    ens = run.ensemble
    size = len(next(iter(ens[SPLITS[0]].values())))
    header = [""]
    for s in SPLITS:
        header += [f"{SPLIT_TITLES[s]}: seeds", f"{SPLIT_TITLES[s]}: ensemble of {size}"]
    rows = []
    for m in ens[SPLITS[0]]:
        cells = ["PxAP" if m == "pxap" else metric_title(m)]
        for split in SPLITS:
            seeds = run.values[split].get(m)
            if seeds is None and m == "pxap" and run.final_stats is not None:
                seeds = _seed_pxap(run, split)
            if seeds is None:
                cells.append("")
            else:
                st = stats.summarize(seeds)
                cells.append(stats.format_cell(st["mean"], st["std"], st["median"]))
            cells.append(_num(ens[split][m][-1]))
        rows.append(cells)
    lines = [
        f"The ensemble of the {size} seeds that did not diverge: the mean of their liver scores, "
        "thresholded as one seed's, one value per split (not a spread). Every comparison and "
        "test in this report is over the seeds, not over ensembles.",
        "",
        *_md_table(header, rows),
    ]
    return "\n".join(lines)


def _seed_pxap(run: Run, split: str) -> np.ndarray:
    """Per-seed PxAP on ``split`` from ``final_stats`` (NaN for diverged seeds)."""
    fs = run.final_stats
    j = list(fs["splits"]).index(split)
    values = metrics.pxap(fs["hist_liver"][:, j], fs["hist_background"][:, j])
    return np.where(np.isin(fs["seeds"], run.diverged), np.nan, values)


def fair_threshold_markdown(fair: dict, exclude_seeds: Sequence[int] = ()) -> str:
    """Summary table of PxAP and fixed- vs validation-chosen-threshold metrics.

    Args:
        fair: output of :func:`fair_threshold_evaluation`.
        exclude_seeds: diverged seed ids, labelled as such in the per-seed table.
    """
    splits = fair["splits"]
    cols = [(s, kind) for s in ("val", "test") if s in splits for kind in ("fixed", "chosen")]
    header = [""] + [
        f"{SPLIT_TITLES[s]} @ {'fixed' if k == 'fixed' else 'val-chosen'}" for s, k in cols
    ]

    def cell(values):
        s = stats.summarize(values)
        return stats.format_cell(s["mean"], s["std"], s["median"])

    rows = [
        ["PxAP"]
        + [cell(fair["pxap"][:, splits.index(s)]) if k == "fixed" else "—" for s, k in cols]
    ]
    for m in metrics.METRIC_NAMES:
        rows.append([metric_title(m)] + [cell(fair[k][m][:, splits.index(s)]) for s, k in cols])
    thr = stats.summarize(fair["threshold"])
    lines = [
        f"Threshold chosen per seed on the validation split only (maximising "
        f"{metric_title(fair['metric'])}), then applied unchanged to test: "
        f"{stats.format_cell(thr['mean'], thr['std'], thr['median'])} over n = {thr['n']} seeds. "
        "PxAP is threshold-free. Validation @ val-chosen is optimistic by construction.",
        "",
        *_md_table(header, rows),
        "",
        "PxAP over all splits: "
        + ", ".join(f"{SPLIT_TITLES[s]} {cell(fair['pxap'][:, i])}" for i, s in enumerate(splits)),
    ]
    diverged = {int(s) for s in exclude_seeds}
    per_seed = [
        [
            f"{int(seed)} (diverged)" if int(seed) in diverged else str(int(seed)),
            _num(fair["threshold"][i]),
            *(_num(fair["pxap"][i, j]) for j in range(len(splits))),
            _num(fair["fixed"][fair["metric"]][i, splits.index("test")]),
            _num(fair["chosen"][fair["metric"]][i, splits.index("test")]),
        ]
        for i, seed in enumerate(fair["seeds"])
    ]
    name = metric_title(fair["metric"])
    seed_header = [
        "seed",
        "val threshold",
        *(f"PxAP {s}" for s in splits),
        f"test {name} @ fixed",
        f"test {name} @ val-chosen",
    ]
    lines += [
        "",
        "<details><summary>Per seed</summary>",
        "",
        *_md_table(seed_header, per_seed),
        "",
        "</details>",
    ]
    return "\n".join(lines)


def ablation_markdown(comparisons: dict[str, list[dict]], alpha: float) -> str:
    """Thesis table 8.7 (test split, Mood's p) plus Welch and full per-metric detail."""
    if not comparisons:
        return ""
    first = next(iter(comparisons.values()))
    present = {r["metric"] for r in first}
    compact = [m for m in ABLATION_METRICS if m in present]

    def mark(row: dict, test: str) -> str:
        text = _p(row[f"{test}_p"])
        if row[f"{test}_significant"]:
            text += " (*)"
        higher = row["higher_median" if test == "mood" else "higher_mean"]
        return text + {"baseline": " ↑", "other": " ↓"}.get(higher, "")

    lines = [
        f"(*) significant at α = {alpha}; ↑ baseline higher, ↓ alternative higher (median for "
        "Mood, mean for Welch). Welch results marked † are only trustworthy where both groups "
        "pass Anderson-Darling (†: at least one group fails or could not be tested).",
        "",
        "Testing split, Mood's median test p-value:",
        "",
    ]
    table = []
    for other, rows in comparisons.items():
        by_key = {(r["metric"], r["split"]): r for r in rows}
        table.append([other] + [mark(by_key[(m, "test")], "mood") for m in compact])
    lines += _md_table(["Alternative model", *(f"{metric_title(m)}: p" for m in compact)], table)
    lines += ["", "Testing split, Welch t-test p-value:", ""]
    table = []
    for other, rows in comparisons.items():
        by_key = {(r["metric"], r["split"]): r for r in rows}
        cells = []
        for m in compact:
            r = by_key[(m, "test")]
            cells.append(mark(r, "welch") + ("" if r["welch_valid"] else " †"))
        table.append([other, *cells])
    lines += _md_table(["Alternative model", *(f"{metric_title(m)}: p" for m in compact)], table)

    def ad(row: dict, group: str) -> str:
        normal = row[f"ad_{group}_normal"]
        verdict = {True: "normal", False: "not normal", None: "n/a"}[normal]
        return (
            f"{_num(row[f'ad_{group}_statistic'], 2)} / "
            f"{_num(row[f'ad_{group}_critical_5'], 2)} {verdict}"
        )

    header = [
        "Metric",
        "Split",
        "n (B/A)",
        "median B",
        "median A",
        "higher median",
        "Mood p",
        "Welch p",
        "AD B: A² / crit 5 %",
        "AD A: A² / crit 5 %",
        "notes",
    ]
    for other, rows in comparisons.items():
        detail = [
            [
                metric_title(r["metric"]),
                SPLIT_TITLES[r["split"]],
                f"{r['n_baseline']}/{r['n_other']}",
                _num(r["median_baseline"]),
                _num(r["median_other"]),
                r["higher_median"],
                _p(r["mood_p"]) + (" (*)" if r["mood_significant"] else ""),
                _p(r["welch_p"]) + (" (*)" if r["welch_significant"] else ""),
                ad(r, "baseline"),
                ad(r, "other"),
                "; ".join(r["notes"]),
            ]
            for r in rows
        ]
        lines += [
            "",
            f"<details><summary>All metrics and splits: {other} (A) vs baseline (B)</summary>",
            "",
            *_md_table(header, detail),
            "",
            "</details>",
        ]
    return "\n".join(lines)


def report_markdown_head(runs: Sequence[Run], alpha: float) -> list[str]:
    """The title and the runs line of ``report.md``."""
    return [
        "# cmseg_jax report",
        "",
        f"Runs: {', '.join(f'`{r.name}`' for r in runs)}. Baseline for comparisons: "
        f"`{runs[0].name}`. Significance level α = {alpha}.",
    ]


def run_markdown(run: Run, entry: dict) -> list[str]:
    """The ``## Run`` section of ``report.md``.

    Args:
        run: the run.
        entry: its report entry before :func:`jsonable` (``figures``: kind -> file name,
            ``fair_threshold``, and ``variants``: name -> ``notes``, ``fair_threshold``).
    """
    info, figures = run.info, entry["figures"]
    md = ["", f"## Run `{run.name}`", "", f"- workdir: `{run.workdir}`"]
    if info:
        md += [
            f"- epochs: {info.get('epochs_completed', '?')} of {info.get('num_epochs', '?')}",
            f"- data: {info.get('data', '?')}",
            f"- device: {info.get('device', '?')}",
        ]
    md.append(
        f"- diverged seeds ({len(run.diverged)}, excluded from every statistic below): "
        + (", ".join(map(str, run.diverged)) if run.diverged else "none")
    )
    md += [f"- note: {n}" for n in run.notes]
    md += ["", "### Results", "", thesis_table_markdown(run)]
    for v, content in entry["variants"].items():
        notes = [f"- note: {n}" for n in content["notes"]]
        md += ["", f"### Results, {VARIANT_TITLES[v]}", "", *notes, *([""] if notes else [])]
        md.append(thesis_table_markdown(run.variants[v]))
    for title, r in (("", run), *((f", {VARIANT_TITLES[v]}", x) for v, x in run.variants.items())):
        if r.ensemble is not None:
            md += ["", f"### The ensemble of the seeds{title}", "", ensemble_markdown(r)]
    if "ensemble" in figures:
        md += [
            "",
            "### What more seeds buy",
            "",
            "Test MCC and IoU of the ensemble of the first k seeds (seed order), against k; "
            "behind it the seeds' own median and range.",
            "",
            f"![ensemble size]({figures['ensemble']})",
        ]
    if "mcc_hist" in figures:
        md += ["", "### MCC per seed", "", f"![MCC histogram]({figures['mcc_hist']})"]
    if "curves" in figures:
        md += [
            "",
            "### Learning curves",
            "",
            "Mean over non-diverged seeds per logged epoch, band = 95 % t-interval.",
            "",
            f"![learning curves]({figures['curves']})",
        ]
    if "examples" in figures:
        md += ["", "### Examples", "", f"![examples]({figures['examples']})"]
    heading = "Threshold-free and fair-threshold evaluation"
    sections = [(f"{heading} (Choe et al. 2020)", entry["fair_threshold"])]
    sections += [
        (f"{heading}, {VARIANT_TITLES[v]}", content["fair_threshold"])
        for v, content in entry["variants"].items()
    ]
    for title, fair in sections:
        if fair is not None:
            md += ["", f"### {title}", "", fair_threshold_markdown(fair, run.diverged)]
    return md


def comparison_markdown(
    runs: Sequence[Run], comparisons: dict[str, list[dict]], alpha: float
) -> list[str]:
    """The ``## Comparison`` section of ``report.md``: every run against the first."""
    md = ["", f"## Comparison with baseline `{runs[0].name}`", ""]
    # Comparing a run in progress with a finished one compares different epochs: say so.
    md += [
        f"- note: `{r.name}` values come from {r.source}"
        for r in runs
        if not r.source.startswith(workdir_io.RESULTS)
    ]
    return md + ["", ablation_markdown(comparisons, alpha)]


# ----------------------------------------------------------------------------------------------
# Machine-readable output


def jsonable(obj):
    """numpy -> Python, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, pathlib.Path):
        return str(obj)
    return obj


def _csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in jsonable(list(row))])
    return out.getvalue()


def csv_files(report: dict) -> dict[str, str]:
    """The tables of a :func:`jsonable` report as CSV, file name -> text (``--format csv``)."""
    summary, seeds, thresholds, curves = [], [], [], []
    for name, run in report["runs"].items():
        diverged = set(run["diverged"])
        # The run's own entry is the default variant; extra variants have the same keys.
        for content in (run, *run["variants"].values()):
            variant = content["variant"]
            for split, by_metric in content["summary"].items():
                for m, s in by_metric.items():
                    summary.append(
                        [name, variant, split, m, s["mean"], s["std"], s["median"]]
                        + [s["n"], s["n_nan"]]
                    )
            for split, by_metric in content["values"].items():
                for m, vals in by_metric.items():
                    for seed, v in zip(run["seeds"], vals, strict=True):
                        seeds.append([name, variant, seed, split, m, v, seed in diverged])
            fair = content.get("fair_threshold")
            if fair:
                for i, seed in enumerate(fair["seeds"]):
                    for j, split in enumerate(fair["splits"]):
                        row = [name, variant, seed, split, fair["threshold"][i]]
                        row += [fair["pxap"][i][j]]
                        row += [fair["fixed"][m][i][j] for m in metrics.METRIC_NAMES]
                        row += [fair["chosen"][m][i][j] for m in metrics.METRIC_NAMES]
                        thresholds.append(row)
        for m, by_split in run["curves"].items():
            for split, c in by_split.items():
                for k, epoch in enumerate(c["epoch"]):
                    curves.append(
                        [name, m, split, epoch, c["mean"][k], c["low"][k], c["high"][k], c["n"][k]]
                    )
    comparisons = report["comparisons"]
    comp_keys = list(comparisons[0]) if comparisons else []
    comp_rows = [
        [("; ".join(r[k]) if k == "notes" else r[k]) for k in comp_keys] for r in comparisons
    ]
    return {
        "summary.csv": _csv_text(
            ["run", "variant", "split", "metric", "mean", "std", "median", "n", "n_nan"], summary
        ),
        "seeds.csv": _csv_text(
            ["run", "variant", "seed", "split", "metric", "value", "diverged"], seeds
        ),
        "thresholds.csv": _csv_text(
            ["run", "variant", "seed", "split", "val_threshold", "pxap"]
            + [f"{m}_fixed" for m in metrics.METRIC_NAMES]
            + [f"{m}_val_threshold" for m in metrics.METRIC_NAMES],
            thresholds,
        ),
        "curves.csv": _csv_text(
            ["run", "metric", "split", "epoch", "mean", "ci95_low", "ci95_high", "n"], curves
        ),
        "comparisons.csv": _csv_text(comp_keys, comp_rows),
    }
