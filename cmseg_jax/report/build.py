"""Putting a report together: read the workdirs, compute, draw, write ``REPORT_DIR``."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Sequence

from cmseg_jax import config_base, io_utils
from cmseg_jax import workdir as workdir_io
from cmseg_jax.report import figures, render
from cmseg_jax.report.analysis import (
    compare_runs,
    fair_threshold_evaluation,
    learning_curves,
    summary_table,
)
from cmseg_jax.report.runs import VARIANT_TITLES, Run, load_run
from cmseg_jax.workdir import GRID_DIR, GRID_RESULTS


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def expand_grids(workdirs: Sequence[pathlib.Path]) -> tuple[list[pathlib.Path], list[dict]]:
    """Replaces every grid sweep's workdir by its grid points' workdirs, in grid order.

    Returns:
        (workdirs, grids): ``grids`` has one {"workdir", "fields", "points"} per grid sweep.
    """
    out, grids = [], []
    for path in workdirs:
        if not (path / GRID_RESULTS).is_file() or not (path / GRID_DIR).is_dir():
            out.append(path)
            continue
        config, _ = workdir_io.read_config(path)
        traced, untraced = config_base.split_grid(config)
        points = config_base.grid_points({**untraced, **traced})
        dirs = [workdir_io.point_dir(path / GRID_DIR, p) for p in points]
        out += [d for d in dirs if d.is_dir()]
        grids.append({"workdir": path, "fields": [*untraced, *traced], "points": points})
    return out, grids


def _unique_names(workdirs: Sequence[pathlib.Path]) -> list[str]:
    names = [w.name for w in workdirs]
    if len(set(names)) == len(names):
        return names
    return [f"{w.parent.name}/{w.name}" if names.count(w.name) > 1 else w.name for w in workdirs]


def _fair(run: Run, threshold_metric: str) -> dict | None:
    if run.final_stats is None:
        return None
    return fair_threshold_evaluation(run.final_stats, threshold_metric, run.diverged)


def _variant_content(run: Run, threshold_metric: str) -> dict:
    """The per-variant part of a run's report entry (an extra evaluation variant's
    ``report.json`` entry under ``runs.<name>.variants``)."""
    return {
        "variant": run.variant,
        "title": VARIANT_TITLES[run.variant],
        "source": run.source,
        "notes": run.notes,
        "values": run.values,
        "summary": summary_table(run),
        "fair_threshold": _fair(run, threshold_metric),
        "ensemble": run.ensemble,
    }


def _figures(run: Run, curves: dict, out: pathlib.Path) -> dict[str, str]:
    """Draws the run's figures into ``out``; kind -> file name of those drawn."""
    drawn = {}
    slug = _slug(run.name)
    for kind, plot in (
        ("mcc_hist", lambda p: figures.plot_mcc_histogram(run, p)),
        ("curves", lambda p: figures.plot_learning_curves(run, curves, p)),
        ("examples", lambda p: figures.plot_examples(run, p)),
        ("ensemble", lambda p: figures.plot_ensemble_size(run, p)),
    ):
        path = out / f"{slug}_{kind}.png"
        if plot(path):
            drawn[kind] = path.name
    return drawn


def _run_entry(run: Run, threshold_metric: str, out: pathlib.Path) -> dict:
    """A run's entry of the report (``runs.<name>`` of ``report.json``); draws its figures."""
    curves = learning_curves(run)
    return {
        "workdir": str(run.workdir),
        "seeds": run.seeds,
        "diverged": run.diverged,
        "source": run.source,
        "info": run.info,
        "notes": run.notes,
        "values": run.values,
        "summary": summary_table(run),
        "curves": curves,
        "fair_threshold": _fair(run, threshold_metric),
        "ensemble": run.ensemble,
        "figures": _figures(run, curves, out),
        "variant": run.variant,
        "variants": {v: _variant_content(r, threshold_metric) for v, r in run.variants.items()},
    }


def _grid_figure(g: dict, runs: list[Run], out: pathlib.Path) -> list[str]:
    """A one-field numeric grid: test MCC against the field (``grid_<field>.png``)."""
    if len(g["fields"]) != 1:
        return []
    field = g["fields"][0]
    by_dir = {r.workdir.resolve(): r for r in runs}
    dirs = [workdir_io.point_dir(g["workdir"] / GRID_DIR, p) for p in g["points"]]
    chosen = [(p[field], by_dir[d.resolve()]) for p, d in zip(g["points"], dirs, strict=True)]
    name = f"grid_{_slug(field)}.png"
    if not figures.plot_grid([r for _, r in chosen], field, [v for v, _ in chosen], out / name):
        return []
    return ["", f"## Grid over `{field}`", "", f"![test MCC against {field}]({name})"]


def build_report(
    workdirs: Sequence[str | pathlib.Path],
    out: str | pathlib.Path,
    formats: Sequence[str] = ("md",),
    alpha: float = 0.05,
    threshold_metric: str = "mcc",
) -> dict:
    """Reads ``workdirs`` and writes the report into ``out`` (every file atomically).

    Args:
        workdirs: sweep workdirs; the first is the baseline of the comparisons.
        out: report directory (created).
        formats: any of ``"md"`` (always written), ``"csv"``, ``"json"``.
        alpha: significance level.
        threshold_metric: metric maximised on validation to choose the fair threshold.

    Returns:
        The report's content as a JSON-ready dict (also written as ``report.json`` for ``json``).
    """
    out = pathlib.Path(out)
    paths, grids = expand_grids([pathlib.Path(w) for w in workdirs])
    runs = [load_run(p, n) for p, n in zip(paths, _unique_names(paths), strict=True)]
    out.mkdir(parents=True, exist_ok=True)

    md = render.report_markdown_head(runs, alpha)
    report: dict = {"alpha": alpha, "baseline": runs[0].name, "runs": {}, "comparisons": []}
    for run in runs:
        entry = _run_entry(run, threshold_metric, out)
        md += render.run_markdown(run, entry)
        report["runs"][run.name] = entry
    if len(runs) > 1:
        comparisons = {r.name: compare_runs(runs[0], r, alpha) for r in runs[1:]}
        report["comparisons"] = [row for rows in comparisons.values() for row in rows]
        md += render.comparison_markdown(runs, comparisons, alpha)

    for g in grids:
        md += _grid_figure(g, runs, out)

    report = render.jsonable(report)
    io_utils.write_text(out / "report.md", "\n".join(md) + "\n")
    if "json" in formats:
        text = json.dumps(report, indent=1, allow_nan=False) + "\n"
        io_utils.write_text(out / "report.json", text)
    if "csv" in formats:
        for filename, text in render.csv_files(report).items():
            io_utils.write_text(out / filename, text)
    return report
