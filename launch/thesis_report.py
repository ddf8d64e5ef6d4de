"""Gathers a thesis reproduction into one ``OUT/report.md`` with the thesis' numbers beside ours.

    python launch/thesis_report.py OUT

``OUT`` is the directory of ``launch/reproduce_thesis.sh``: ``settings.txt``, ``runs/<name>/``
(sweep workdirs), ``comparisons/<name>/`` and ``experiments/<name>/`` (``python -m
cmseg_jax.report --format csv`` directories) and ``timings.tsv``. Our numbers are read from the
reports' ``summary.csv`` and ``comparisons.csv``, the thesis' from ``thesis_reference.py``. Only
the standard library is used.
"""

import csv
import json
import math
import pathlib
import sys

import thesis_reference as ref

METRICS = (
    "acc", "mcc", "iou", "dice", "precision", "recall",
    "cls_acc", "cls_mcc", "cls_iou", "cls_dice", "cls_precision", "cls_recall",
)  # fmt: skip
TITLES = {
    "acc": "Acc",
    "mcc": "MCC",
    "iou": "IoU",
    "dice": "Dice",
    "precision": "Prec",
    "recall": "Rec",
}
SPLIT_TITLES = {"train": "Training", "val": "Validation", "test": "Testing"}
# Rows of the statistical-test tables (testing split), as in the thesis' table 8.7 and text.
TEST_METRICS = ("cls_mcc", "mcc", "iou", "dice", "precision", "recall")


def title(metric: str) -> str:
    """``"cls_precision" -> "Cls-Prec"``."""
    base = metric.removeprefix("cls_")
    return ("Cls-" if metric.startswith("cls_") else "") + TITLES[base]


def fmt(value: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_p(text: str) -> str:
    """A p-value from ``comparisons.csv`` as the report CLI writes it; empty -> ``n/a``."""
    if text == "":
        return "n/a"
    p = float(text)
    return "n/a" if not math.isfinite(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


def read_csv(path: pathlib.Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_summaries(out: pathlib.Path) -> dict[str, dict]:
    """run -> {"cells": split -> metric -> (mean, std, median, n), "source": report dir}.

    From every report directory's ``summary.csv`` (variant ``default``, the model as trained);
    a run in several reports has the same numbers in each, the first found is kept.
    """
    found: dict[str, dict] = {}
    for path in sorted(out.glob("comparisons/*/summary.csv")) + sorted(
        out.glob("experiments/*/summary.csv")
    ):
        for row in read_csv(path):
            if row["variant"] != "default":
                continue
            entry = found.setdefault(row["run"], {"cells": {}, "source": path.parent})
            if entry["source"] != path.parent:
                continue
            value = (float(row["mean"] or "nan"), float(row["std"] or "nan"))
            value += (float(row["median"] or "nan"), int(row["n"]))
            entry["cells"].setdefault(row["split"], {})[row["metric"]] = value
    return found


def read_timings(path: pathlib.Path) -> dict[str, int]:
    """experiment -> wall seconds of its last training invocation (``timings.tsv``)."""
    times: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, seconds, *_ = line.split("\t")
            if status == "trained":
                times[name] = int(seconds)
    return times


def read_run_info(workdir: pathlib.Path) -> dict:
    try:
        return json.loads((workdir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def cell(summary: dict, split: str, metric: str, num_seeds: int) -> str:
    """Our ``mean ± std (median)``; ``[n=..]`` when fewer seeds than the run has count."""
    value = summary["cells"].get(split, {}).get(metric)
    if value is None:
        return "—"
    mean, std, median, n = value
    text = f"{fmt(mean)} ± {fmt(std)} ({fmt(median)})"
    return text if n == num_seeds else f"{text} [n={n}]"


def thesis_cell(name: str, split: str, metric: str) -> str:
    cells = ref.EXPERIMENTS.get(name, {}).get("cells", {}).get(metric)
    return cells[ref.SPLITS.index(split)] if cells else "—"


def rel(path: pathlib.Path, out: pathlib.Path) -> str:
    return path.relative_to(out).as_posix()


def comparison_section(out, key, spec, summaries, seeds) -> list[str]:
    """One comparison: testing-split table (ours | thesis per run) and the tests vs the baseline."""
    directory = out / "comparisons" / key
    lines = ["", f"## {spec['title']} (`{key}`, thesis {spec['section']})", ""]
    if not (directory / "comparisons.csv").exists():
        missing = [r for r in spec["runs"] if r not in summaries]
        return lines + [
            f"Not run: needs finished runs of {', '.join(spec['runs'])}; "
            f"missing: {', '.join(missing) or 'the comparison report'}.",
            "",
            f"Thesis: {spec['conclusion']}",
        ]
    rows = read_csv(directory / "comparisons.csv")
    runs = [spec["runs"][0]] + list(dict.fromkeys(r["other"] for r in rows))
    figures = sorted(directory.glob("*.png"))
    lines += [
        f"Full report: [{rel(directory / 'report.md', out)}]({rel(directory / 'report.md', out)})"
        f" (baseline `{runs[0]}`; also the per-run heat maps, learning curves and fair-threshold"
        " evaluation). Figures: " + ", ".join(f"[{p.stem}]({rel(p, out)})" for p in figures) + ".",
        "",
        "### Testing split, ours beside the thesis",
        "",
    ]
    header = ["Metric"] + [f"`{r}` {who}" for r in runs for who in ("ours", "thesis")]
    table = []
    for m in METRICS:
        table.append(
            [title(m)]
            + [
                c
                for r in runs
                for c in (cell(summaries[r], "test", m, seeds[r]), thesis_cell(r, "test", m))
            ]
        )
    lines += md_table(header, table)
    lines += [
        "",
        f"### Tests against the baseline `{runs[0]}`, testing split",
        "",
        "Ours: Mood's median test and Welch's t-test over seeds (`python -m cmseg_jax.report`); "
        "↑ baseline higher, ↓ alternative higher (median for Mood, mean for Welch); † Welch "
        "not trustworthy (a group fails Anderson-Darling or has too few values).",
        "",
    ]
    by_key = {(r["other"], r["metric"], r["split"]): r for r in rows}
    table = []
    for other in runs[1:]:
        for m in TEST_METRICS:
            r = by_key.get((other, m, "test"))
            if r is None:
                continue
            arrow = {"baseline": " ↑", "other": " ↓"}
            mood = fmt_p(r["mood_p"]) + arrow.get(r["higher_median"], "")
            welch = fmt_p(r["welch_p"]) + arrow.get(r["higher_mean"], "")
            welch += "" if r["welch_valid"] == "True" else " †"
            thesis = spec["tests"].get((other, m), "—")
            n = f"{r['n_baseline']}/{r['n_other']}"
            table.append([f"`{other}`", title(m), n, mood, welch, thesis])
    header = ["Alternative", "Metric", "n (B/A)", "Mood p (ours)", "Welch p (ours)", "Thesis"]
    lines += md_table(header, table)
    lines += ["", f"Thesis: {spec['conclusion']}"]
    return lines


def experiment_section(out, name, summaries, seeds, info) -> list[str]:
    """One experiment, every split, ours beside the thesis."""
    spec = ref.EXPERIMENTS[name]
    summary = summaries[name]
    lines = [
        "",
        f"### `{name}`: {spec['title']}",
        "",
        f"Thesis tables {spec['tables']}, seeds: {spec['seeds']}. Ours: {seeds[name]} seeds "
        f"({len(info.get('diverged', []))} diverged), {info.get('num_epochs', '?')} epochs, "
        f"numbers from [{rel(summary['source'] / 'summary.csv', out)}]"
        f"({rel(summary['source'] / 'summary.csv', out)}).",
        "",
    ]
    header = ["Metric"] + [
        f"{SPLIT_TITLES[s]} {who}" for s in ref.SPLITS for who in ("ours", "thesis")
    ]
    rows = []
    for m in METRICS:
        rows.append(
            [title(m)]
            + [
                c
                for s in ref.SPLITS
                for c in (cell(summary, s, m, seeds[name]), thesis_cell(name, s, m))
            ]
        )
    lines += md_table(header, rows)
    hist = summary["source"] / f"{name}_mcc_hist.png"
    if hist.exists():
        lines += ["", f"![{name} MCC per seed]({rel(hist, out)})"]
    return lines


def build(out: pathlib.Path) -> str:
    """The text of ``OUT/report.md``."""
    settings = dict(
        line.split("=", 1) for line in (out / "settings.txt").read_text().splitlines() if line
    )
    summaries = read_summaries(out)
    timings = read_timings(out / "timings.tsv")
    infos = {name: read_run_info(out / "runs" / name) for name in ref.EXPERIMENTS}
    done = [name for name in ref.EXPERIMENTS if name in summaries]
    seeds = {name: len(infos[name].get("seeds", [])) - len(infos[name].get("diverged", []))
             for name in done}  # fmt: skip
    data = sorted({infos[name].get("data", "?") for name in done})
    lines = [
        "# Reproduction of the thesis' experiments",
        "",
        f"Generated by `launch/reproduce_thesis.sh` (size `{settings.get('size')}`, "
        f"{settings.get('num_seeds')} seeds per experiment"
        + (f", sweep flags `{settings['sweep_flags']}`" if settings.get("sweep_flags") else "")
        + ").",
        "",
        "Data: " + "; ".join(data or ["none"]) + ".",
    ]
    if any("NOT LiTS" in d for d in data):
        lines += [
            "",
            "**These runs use the synthetic phantom, not LiTS.** The thesis' numbers come from "
            "its LiTS subset at 512×512; beside the phantom they show what the thesis found, "
            "not what these runs should reach.",
        ]
    lines += [
        "",
        "Cells: mean ± std (median) over non-diverged seeds, std with ddof = 1 (the thesis' "
        "format); a cell over fewer seeds says [n=..]. Thesis cells are copied as printed "
        "(chapter 8 and appendix 10.1); — = not reported (the thesis gives no Dice, and no Cls-* "
        "for full supervision).",
        "",
        "## Experiments",
        "",
    ]
    rows = []
    for name, spec in ref.EXPERIMENTS.items():
        info = infos[name]
        if name in done:
            status = f"{seeds[name]} / {len(info.get('seeds', []))}"
            epochs = f"{info.get('epochs_completed', '?')} / {info.get('num_epochs', '?')}"
        else:
            status, epochs = "not run", "—"
        wall = f"{timings[name]} s" if name in timings else "—"
        rows.append([f"`{name}`", spec["title"], status, epochs, wall, spec["seeds"]])
    header = [
        "Experiment",
        "Thesis system",
        "Seeds ok / run",
        "Epochs",
        "Wall time",
        "Thesis seeds",
    ]
    lines += md_table(header, rows)
    lines += ["", "Wall time: the last invocation that trained it (a skipped one is not counted)."]
    for key, spec in ref.COMPARISONS.items():
        lines += comparison_section(out, key, spec, summaries, seeds)
    lines += ["", "## Per experiment, every split"]
    for name in done:
        lines += experiment_section(out, name, summaries, seeds, infos[name])
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python launch/thesis_report.py OUT", file=sys.stderr)
        return 2
    out = pathlib.Path(argv[1])
    if not (out / "settings.txt").is_file():
        print(
            f"{out / 'settings.txt'}: no such file (not a reproduction directory)", file=sys.stderr
        )
        return 2
    (out / "report.md").write_text(build(out))
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
