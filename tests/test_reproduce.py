"""launch/reproduce_thesis.sh: usage errors and the reference numbers; end to end (``-m slow``)
at the tiny size: all eight experiments, one report.md, resuming."""

import csv
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "launch" / "reproduce_thesis.sh"
# Every thesis experiment at the tiny size, 2 seeds, 1 epoch; one vmapped program per experiment
# (seed_chunk=2): the FCN's step compiles several times longer under lax.map over seeds on XLA:CPU.
SWEEP_FLAGS = ("--config.train.epochs=1", "--config.train.seed_chunk=2")
ARGS = ("--size", "tiny", "--num_seeds", 2)
CELL = re.compile(r"^(-?\d+\.\d+|nan) ± (-?\d+\.\d+|nan) \((-?\d+\.\d+|nan)\)$")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reference = _module("thesis_reference")
gather = _module("thesis_report")


def _run(*args, root: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["bash", str(root / "launch" / "reproduce_thesis.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    """The whole reproduction: all eight experiments and every comparison (about 5 min)."""
    out = tmp_path_factory.mktemp("reproduce") / "out"
    args = (*ARGS, "--out", out, "--", *SWEEP_FLAGS)
    proc = _run(*args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, args, proc


def _tables(text: str, heading: str) -> list[list[list[str]]]:
    """Every markdown table under the first line starting with ``heading``, up to the next
    heading of the same or a higher level, as rows of cells (header and rule dropped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    level = len(heading) - len(heading.lstrip("#"))
    tables, current = [], None
    for line in lines[start + 1 :]:
        hashes = len(line) - len(line.lstrip("#"))
        if line.startswith("#") and hashes <= level:
            break
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return [table[2:] for table in tables]


def _results(workdir: pathlib.Path) -> dict:
    """split -> metric -> per-seed values from results.csv."""
    values: dict = {}
    with (workdir / "results.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            values.setdefault(row["split"], {}).setdefault(row["metric"], []).append(
                float(row["value"])
            )
    return values


def _assert_cell(text: str, values: list[float], where: str) -> None:
    match = CELL.match(text)
    assert match, f"{where}: {text!r} is not 'mean ± std (median)'"
    mean, std, median = (float(g) for g in match.groups())
    v = np.asarray(values)
    expected = (np.nanmean(v), np.nanstd(v, ddof=1), np.nanmedian(v))
    np.testing.assert_allclose((mean, std, median), expected, atol=5.1e-4, err_msg=where)


def test_one_experiment_end_to_end(tmp_path):
    """The launcher in the default run: one experiment, its report, the comparisons it lacks."""
    out = tmp_path / "one"
    proc = _run(*ARGS, "--only", "cam_beta", "--out", out, "--", *SWEEP_FLAGS)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "missing: cam_alpha" in text and "missing: full_ce" in text
    (table,) = _tables(text, "### `cam_beta`:")
    assert [row[0] for row in table] == [gather.title(m) for m in gather.METRICS]
    results = _results(out / "runs" / "cam_beta")
    _assert_cell(table[[row[0] for row in table].index("MCC")][5], results["test"]["mcc"], "mcc")


@pytest.mark.slow
def test_all_eight_experiments_and_every_comparison_end_to_end(reproduction):
    out, _, _ = reproduction
    text = (out / "report.md").read_text()
    assert "## Experiments" in text and "## Per experiment, every split" in text
    assert "synthetic phantom, not LiTS" in text
    assert "missing:" not in text
    for name in reference.EXPERIMENTS:
        assert (out / "runs" / name / "results.csv").is_file(), name
        assert f"### `{name}`:" in text
    for key, spec in reference.COMPARISONS.items():
        assert f"## {spec['title']} (`{key}`" in text
        assert (out / "comparisons" / key / "comparisons.csv").is_file(), key


@pytest.mark.slow
def test_report_numbers_are_the_runs_results(reproduction):
    out, _, _ = reproduction
    text = (out / "report.md").read_text()
    titles = {gather.title(m): m for m in gather.METRICS}
    checked = 0
    for name in reference.EXPERIMENTS:
        results = _results(out / "runs" / name)
        (table,) = _tables(text, f"### `{name}`:")
        assert [row[0] for row in table] == [gather.title(m) for m in gather.METRICS]
        for row in table:
            metric = titles[row[0]]
            for i, split in enumerate(reference.SPLITS):
                ours, thesis = row[1 + 2 * i], row[2 + 2 * i]
                _assert_cell(ours, results[split][metric], f"{name} {split} {metric}")
                cells = reference.EXPERIMENTS[name]["cells"].get(metric)
                assert thesis == (cells[i] if cells else "—")
                checked += 1
    assert checked == len(reference.EXPERIMENTS) * 3 * len(gather.METRICS)
    # The comparison tables show the same testing-split numbers, beside the thesis'.
    for key, spec in reference.COMPARISONS.items():
        runs = spec["runs"]
        table = _tables(text, f"## {spec['title']}")[0]
        for row in table:
            for j, name in enumerate(runs):
                metric = titles[row[0]]
                _assert_cell(row[1 + 2 * j], _results(out / "runs" / name)["test"][metric], key)


@pytest.mark.slow
def test_report_tests_come_from_the_comparison_reports(reproduction):
    out, _, _ = reproduction
    text = (out / "report.md").read_text()
    titles = {gather.title(m): m for m in gather.METRICS}
    spec = reference.COMPARISONS["ablations"]
    tests = _tables(text, f"## {spec['title']}")[1]
    assert {row[0] for row in tests} == {f"`{name}`" for name in spec["runs"][1:]}
    checked = 0
    for row in tests:
        assert row[2] == "2/2"  # seeds per group
        thesis = spec["tests"].get((row[0].strip("`"), titles[row[1]]))
        if thesis is not None:
            assert row[5] == thesis
            checked += 1
    assert checked == len(spec["tests"])


@pytest.mark.slow
def test_second_invocation_resumes_without_training(reproduction):
    out, args, _ = reproduction
    files = [p for p in (out / "runs").rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in reference.EXPERIMENTS:
        assert f"skip {name}: finished" in proc.stdout
    assert "cmseg_jax.sweep" not in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert (out / "report.md").exists()


@pytest.mark.slow
def test_a_run_in_no_comparison_gets_its_own_report(reproduction, tmp_path):
    out, _, _ = reproduction
    alone = tmp_path / "alone"
    shutil.copytree(out / "runs" / "ablation_no_aug", alone / "runs" / "ablation_no_aug")
    shutil.copy(out / "settings.txt", alone / "settings.txt")
    proc = _run(*ARGS, "--only", "ablation_no_aug", "--out", alone, "--", *SWEEP_FLAGS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skip ablation_no_aug: finished" in proc.stdout
    assert not list((alone / "comparisons").iterdir())
    text = (alone / "report.md").read_text()
    assert "missing: cam_beta" in text
    assert "(experiments/ablation_no_aug/summary.csv)" in text
    (table,) = _tables(text, "### `ablation_no_aug`:")
    results = _results(alone / "runs" / "ablation_no_aug")
    _assert_cell(table[1][5], results["test"]["mcc"], "test mcc")


@pytest.mark.slow
def test_other_settings_in_the_same_out_are_refused(reproduction):
    out, _, _ = reproduction
    proc = _run("--size", "cpu", "--only", "cam_beta", "--out", out)
    assert proc.returncode == 2
    assert "settings.txt" in proc.stderr and "use another --out" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("--only", "cam_gamma"), "--only: unknown experiment 'cam_gamma'"),
        (("--size", "huge"), "--size huge: expected tiny, cpu or thesis"),
        (("--num_seeds", "0"), "--num_seeds 0: expected a positive integer"),
        (("--data", "/nonexistent/lits"), "--data /nonexistent/lits: no such directory"),
        (("--out",), "--out needs a value"),
        (("extra",), "extra: unknown argument"),
    ],
)
def test_usage_errors(tmp_path, args, message):
    proc = _run(*args, "--out", tmp_path / "out") if "--out" not in args else _run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_config_is_named(tmp_path):
    # A tree with the launcher but without configs/full_ce.py (the default list names every config).
    (tmp_path / "launch").mkdir()
    shutil.copy(SCRIPT, tmp_path / "launch")
    (tmp_path / "configs").mkdir()
    proc = _run("--out", tmp_path / "out", root=tmp_path)
    assert proc.returncode == 2
    assert "configs/full_ce.py: no such config (experiment full_ce)" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_docs_hold_the_reference_numbers():
    docs = (ROOT / "docs" / "reproduction.md").read_text()
    for name, spec in reference.EXPERIMENTS.items():
        section = docs.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        rows = {
            cells[0]: cells[1:4]
            for cells in (
                [c.strip() for c in line.strip("|").split("|")]
                for line in section.splitlines()
                if line.startswith("| ")
            )
        }
        for metric, cells in spec["cells"].items():
            assert rows[gather.title(metric)] == list(cells), (name, metric)
