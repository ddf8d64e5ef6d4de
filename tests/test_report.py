"""cmseg_jax.report on synthetic workdirs (written by cmseg_jax.workdir) and on a real sweep's."""

import csv
import json
import math
import pathlib

import matplotlib.image
import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score

from cmseg_jax import metrics, report, results, stats
from cmseg_jax import workdir as workdir_io
from cmseg_jax.config_base import get_base_config

SPLITS = ("train", "val", "test")
CSV_METRICS = ("acc", "mcc", "iou", "dice", "precision", "recall") + tuple(
    f"cls_{m}" for m in ("acc", "mcc", "iou", "precision", "recall")
)
BINS = 100
PIXELS = 4000


def _scores(rng, quality, n):
    """Liver-score sample of one seed and split: ``quality`` in [0, 1] separates the classes."""
    target = rng.random(n) < 0.15
    noise = rng.normal(0, 0.25, n)
    scores = np.clip(0.5 + (quality - 0.2) * np.where(target, 0.6, -0.6) + noise, 0, 1)
    return scores, target


def _hist(scores, mask):
    bins = np.minimum(np.floor(scores[mask] * BINS).astype(int), BINS - 1)
    return np.bincount(bins, minlength=BINS)


def _conf(pred, target):
    return [
        np.sum(pred & target),
        np.sum(pred & ~target),
        np.sum(~pred & target),
        np.sum(~pred & ~target),
    ]


def _write_final(path, variant, seeds, quality, diverged, rng):
    """final_stats{suffix}.npz and results{suffix}.csv of ``variant``, through the sweep's writers.

    Returns the raw test scores per seed, the confusion counts (S, 3, 4) and the results table.
    """
    test_scores = {}
    confusion = np.zeros((len(seeds), 3, 4), np.int64)
    cls_confusion = np.zeros((len(seeds), 3, 4), np.int64)
    hist_liver = np.zeros((len(seeds), 3, BINS), np.int64)
    hist_background = np.zeros((len(seeds), 3, BINS), np.int64)
    for i, s in enumerate(seeds):
        for j, split in enumerate(SPLITS):
            scores, target = _scores(rng, quality[s], PIXELS)
            if split == "test":
                test_scores[s] = (scores, target)
            confusion[i, j] = _conf(scores >= 0.5, target)
            cls_target = rng.random(40) < 0.5
            cls_pred = np.where(rng.random(40) < 0.5 + quality[s] / 2, cls_target, ~cls_target)
            cls_confusion[i, j] = _conf(cls_pred, cls_target)
            hist_liver[i, j] = _hist(scores, target)
            hist_background[i, j] = _hist(scores, ~target)
    workdir_io.write_final_stats(
        path, seeds, confusion, cls_confusion, hist_liver, hist_background, variant
    )
    bad = np.array([s in diverged for s in seeds])
    table = results.final_table(seeds, confusion, cls_confusion, bad)
    table = {split: {m: table[split][m] for m in CSV_METRICS} for split in SPLITS}
    workdir_io.write_results_csv(path, seeds, table, variant)
    return test_scores, confusion, table


def make_workdir(
    path,
    seeds,
    *,
    quality_shift=0.0,
    diverged=(),
    epochs=3,
    num_epochs=3,
    finished=True,
    rng_seed=0,
    no_smoothing=False,
):
    """A synthetic sweep workdir, written by the sweep's writers (cmseg_jax.workdir).

    A finished run has config.json, metrics.jsonl, results.csv, final_stats.npz, examples.npz,
    run.json and summary.md; an unfinished one only config.json and metrics.jsonl (what a sweep
    has written before ``_finish``). ``no_smoothing`` adds results_no_smoothing.csv and
    final_stats_no_smoothing.npz (a second, worse evaluation of the same seeds). Returns the raw
    test scores per seed for oracle checks.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True)
    (path / "checkpoints").mkdir()
    rng = np.random.default_rng(rng_seed)
    seeds = list(seeds)
    quality = {s: float(np.clip(rng.beta(5, 2) + quality_shift, 0, 1)) for s in seeds}
    config = get_base_config()
    config.name = path.name
    config.train.epochs = num_epochs
    workdir_io.write_config(path, config, seeds)

    for epoch in range(1, epochs + 1):
        q = np.array([quality[s] * epoch / num_epochs for s in seeds])
        conf = np.zeros((len(seeds), 3, 4), np.int64)
        cls_conf = np.zeros((len(seeds), 3, 4), np.int64)
        for i in range(len(seeds)):
            for j in range(len(SPLITS)):
                scores, target = _scores(rng, q[i], 500)
                conf[i, j] = _conf(scores >= 0.5, target)
                cls_target = rng.random(20) < 0.5
                cls_pred = np.where(rng.random(20) < 0.5 + q[i] / 2, cls_target, ~cls_target)
                cls_conf[i, j] = _conf(cls_pred, cls_target)
        evals = {
            split: {
                "loss_num": 1 - q,
                "loss_den": np.ones(len(seeds)),
                "confusion": conf[:, j],
                "cls_confusion": cls_conf[:, j],
            }
            for j, split in enumerate(SPLITS)
        }
        bad = np.array([s in diverged and epoch == epochs for s in seeds])
        workdir_io.append_metrics(path, results.epoch_records(epoch, seeds, 1 - q, evals, bad))
    if not finished:
        return None

    test_scores, confusion, table = _write_final(path, "default", seeds, quality, diverged, rng)
    if no_smoothing:
        # Another evaluation of the same seeds: a worse model, other counts and histograms.
        worse = {s: q * 0.6 for s, q in quality.items()}
        _write_final(path, "no_smoothing", seeds, worse, diverged, rng)

    ok = [s for s in seeds if s not in diverged]
    val_mcc = {s: metrics.metrics_from_confusion(confusion[seeds.index(s), 1])["mcc"] for s in ok}
    ranked = sorted(ok, key=lambda s: val_mcc[s])
    picks = [ranked[-1], ranked[len(ranked) // 2], ranked[0]]
    yy, xx = np.mgrid[:32, :32]
    masks = np.stack(
        [((yy - 12 - k) ** 2 + (xx - 14) ** 2 < 60).astype(np.uint8) for k in range(2)]
    )
    images = (masks * 0.6 - 0.3 + rng.normal(0, 0.1, masks.shape)).astype(np.float32)
    scores = np.stack(
        [np.clip(masks * quality[s] + rng.random(masks.shape) * 0.4, 0, 1) for s in picks]
    ).astype(np.float16)
    workdir_io.write_examples(path, images, masks, picks, scores, threshold=0.5)
    workdir_io.write_run_info(
        path,
        seeds,
        sorted(diverged),
        epochs_completed=epochs,
        num_epochs=num_epochs,
        data="synthetic",
        device="cpu:test",
    )
    bad = [s in diverged for s in seeds]
    workdir_io.write_summary(
        path, results.summary_markdown(path.name, seeds, table, bad, "synthetic")
    )
    return test_scores


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    base_scores = make_workdir(root / "baseline", range(12), diverged={3}, rng_seed=1)
    make_workdir(root / "worse", range(10), quality_shift=-0.3, rng_seed=2)
    make_workdir(root / "partial", range(6), epochs=2, num_epochs=5, finished=False, rng_seed=3)
    return root, base_scores


def _assert_png_ok(path):
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img[..., :3])) > 0


def test_thesis_table_from_results_csv(sweeps):
    root, _ = sweeps
    run = report.load_run(root / "baseline")
    assert run.source.startswith("results.csv")
    assert run.diverged == [3] and len(run.seeds) == 12
    # A workdir written before ensembles were evaluated reports without one, and says nothing.
    assert run.ensemble is None and not any("ensemble" in n for n in run.notes)
    values = {}
    with open(root / "baseline" / "results.csv") as f:
        for row in csv.DictReader(f):
            values.setdefault((row["split"], row["metric"]), []).append(float(row["value"]))
    table = report.thesis_table_markdown(run)
    assert "n = 11 of 12; 1 diverged: [3]" in table
    assert "|  | Training | Validation | Testing |" in table
    for metric, title in (("mcc", "MCC"), ("precision", "Prec"), ("cls_mcc", "Cls-MCC")):
        cells = []
        for split in SPLITS:
            v = np.array(values[(split, metric)])
            v = v[~np.isnan(v)]
            assert v.size == 11
            cells.append(f"{v.mean():.3f} ± {np.std(v, ddof=1):.3f} ({np.median(v):.3f})")
        assert f"| {title} | " + " | ".join(cells) + " |" in table
    # The synthetic results.csv has no cls_dice (the sweep writes one): no row, nothing invented.
    assert "Cls-Dice" not in table and "| Dice |" in table


def test_partial_run_uses_last_complete_epoch(tmp_path):
    make_workdir(tmp_path / "p", range(4), epochs=3, num_epochs=10, finished=False, diverged={1})
    jsonl = tmp_path / "p" / "metrics.jsonl"
    lines = jsonl.read_text().splitlines()
    # Epoch 3 logged for one seed only, then a half-written line: epoch 2 is the latest complete.
    epoch3 = [ln for ln in lines if json.loads(ln)["epoch"] == 3]
    kept = [ln for ln in lines if json.loads(ln)["epoch"] < 3] + epoch3[:3]
    jsonl.write_text("\n".join(kept) + '\n{"epoch": 3, "seed": 1, "spl\n')
    run = report.load_run(tmp_path / "p")
    assert run.source == "metrics.jsonl, epoch 2 of 10"
    assert any("unreadable" in n for n in run.notes)
    epoch2 = [json.loads(ln) for ln in kept if json.loads(ln)["epoch"] == 2]
    want = [r["mcc"] for r in epoch2 if r["split"] == "test"]
    np.testing.assert_allclose(run.values["test"]["mcc"], want)
    assert run.diverged == []  # the divergence was only logged in the dropped epoch 3 rows
    assert any("no run.json" in n for n in run.notes)


@pytest.fixture(scope="module")
def built(sweeps, tmp_path_factory):
    """The report of all three sweeps, built once through the CLI entry point."""
    root, _ = sweeps
    out = tmp_path_factory.mktemp("report")
    argv = [str(root / n) for n in ("baseline", "worse", "partial")]
    report.main([*argv, "--out", str(out), "--format", "csv", "--format", "json"])
    return out


def test_report_end_to_end(sweeps, built):
    root, _ = sweeps
    out = built
    md = (out / "report.md").read_text()
    for needle in (
        "## Run `baseline`",
        "## Run `partial`",
        "### Learning curves",
        "Comparison with baseline `baseline`",
        "Alternative model",
        "fair-threshold",
        "diverged seeds (1, excluded from every statistic below): 3",
        "metrics.jsonl, epoch 2 of 5",
    ):
        assert needle in md, needle
    for name in (
        "baseline_mcc_hist.png",
        "baseline_curves.png",
        "baseline_examples.png",
        "worse_mcc_hist.png",
        "partial_curves.png",
    ):
        assert f"]({name})" in md
        _assert_png_ok(out / name)
    assert not (out / "partial_examples.png").exists()  # a partial run has no examples.npz

    data = json.loads((out / "report.json").read_text())  # strict JSON: NaN became null
    rows = [r for r in data["comparisons"] if r["other"] == "worse"]
    base = report.load_run(root / "baseline").values
    worse = report.load_run(root / "worse").values
    for r in rows:
        a = base[r["split"]][r["metric"]]
        b = worse[r["split"]][r["metric"]]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        assert r["n_baseline"] == 11 and r["n_other"] == 10
        assert r["mood_p"] == pytest.approx(sps.median_test(a, b)[1])
        assert r["welch_p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    mcc_test = next(r for r in rows if r["metric"] == "mcc" and r["split"] == "test")
    assert mcc_test["higher_median"] == "baseline"

    for name in ("summary.csv", "seeds.csv", "thresholds.csv", "curves.csv", "comparisons.csv"):
        with open(out / name) as f:
            assert len(list(csv.reader(f))) > 1, name
    with open(out / "seeds.csv") as f:
        diverged_rows = [
            r for r in csv.DictReader(f) if r["run"] == "baseline" and r["seed"] == "3"
        ]
    assert diverged_rows and all(
        r["diverged"] == "True" and r["value"] == "" for r in diverged_rows
    )
    # No results_no_smoothing.csv anywhere: no extra variant in any output.
    assert "without Gaussian smoothing" not in md
    assert all(r["variants"] == {} for r in data["runs"].values())
    for name in ("summary.csv", "seeds.csv", "thresholds.csv"):
        with open(out / name) as f:
            assert {r["variant"] for r in csv.DictReader(f)} == {"default"}, name


def test_learning_curve_t_interval(sweeps):
    root, _ = sweeps
    run = report.load_run(root / "baseline")
    curves = report.learning_curves(run)
    c = curves["mcc"]["val"]
    np.testing.assert_array_equal(c["epoch"], [1, 2, 3])
    rows = [r for r in run.epochs if r["split"] == "val" and r["epoch"] == 2 and r["seed"] != 3]
    v = np.array([r["mcc"] for r in rows])
    half = sps.t.ppf(0.975, v.size - 1) * np.std(v, ddof=1) / math.sqrt(v.size)
    assert c["n"][1] == 11
    assert c["mean"][1] == pytest.approx(v.mean())
    assert c["high"][1] - c["mean"][1] == pytest.approx(half)


def test_pxap_per_seed_vs_sklearn(sweeps):
    root, base_scores = sweeps
    run = report.load_run(root / "baseline")
    fair = report.fair_threshold_evaluation(run.final_stats, exclude_seeds=run.diverged)
    test = fair["splits"].index("test")
    for i, seed in enumerate(fair["seeds"]):
        scores, target = base_scores[int(seed)]
        if int(seed) in run.diverged:
            assert np.isnan(fair["pxap"][i, test])
            continue
        want = average_precision_score(target, scores)
        assert fair["pxap"][i, test] == pytest.approx(want, abs=2e-2)
    # The fixed-threshold numbers are the stored confusion counts' metrics (= results.csv).
    np.testing.assert_allclose(fair["fixed"]["mcc"][:, test], run.values["test"]["mcc"], rtol=1e-5)


def test_val_threshold_independent_of_test_labels(sweeps):
    root, _ = sweeps
    final_stats = dict(report.load_run(root / "baseline").final_stats)
    fair = report.fair_threshold_evaluation(final_stats)
    val = fair["splits"].index("val")
    np.testing.assert_array_equal(
        fair["threshold"],
        metrics.best_threshold(
            final_stats["hist_liver"][:, val], final_stats["hist_background"][:, val]
        ),
    )
    # Flip most test labels: move test liver pixels to background and vice versa.
    test = fair["splits"].index("test")
    perturbed = dict(final_stats)
    for key, other in (("hist_liver", "hist_background"), ("hist_background", "hist_liver")):
        h = final_stats[key].copy()
        h[:, test] = final_stats[other][:, test]
        perturbed[key] = h
    fair2 = report.fair_threshold_evaluation(perturbed)
    np.testing.assert_array_equal(fair2["threshold"], fair["threshold"])
    np.testing.assert_array_equal(fair2["chosen"]["mcc"][:, val], fair["chosen"]["mcc"][:, val])
    assert not np.allclose(fair2["chosen"]["mcc"][:, test], fair["chosen"]["mcc"][:, test])


def test_compare_runs_uses_stats_compare(sweeps):
    root, _ = sweeps
    base, worse = report.load_run(root / "baseline"), report.load_run(root / "worse")
    rows = report.compare_runs(base, worse, alpha=0.1)
    assert {(r["metric"], r["split"]) for r in rows} == {
        (m, s) for m in CSV_METRICS for s in SPLITS
    }
    r = rows[0]
    want = stats.compare(
        base.values[r["split"]][r["metric"]], worse.values[r["split"]][r["metric"]], alpha=0.1
    )
    assert {k: r[k] for k in want if k != "notes"} == pytest.approx(
        {k: want[k] for k in want if k != "notes"}, nan_ok=True
    )


NO_GS = "evaluated without Gaussian smoothing (trained with it)"


def _section(md, heading):
    """The text of a markdown ``### heading`` up to the next heading of level 2 or 3."""
    start = md.index(f"### {heading}\n") + len(heading) + 5
    ends = [i for i in (md.find("\n## ", start), md.find("\n### ", start)) if i >= 0]
    return md[start : min(ends, default=len(md))]


def _cells(path, metric):
    """``mean ± std (median)`` cells per split of ``metric`` in a results.csv-format file."""
    values = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["metric"] == metric:
                values.setdefault(row["split"], []).append(float(row["value"]))
    cells = []
    for split in SPLITS:
        v = np.array(values[split])
        v = v[~np.isnan(v)]
        cells.append(f"{v.mean():.3f} ± {np.std(v, ddof=1):.3f} ({np.median(v):.3f})")
    return cells


def test_no_smoothing_variant(tmp_path):
    gs = tmp_path / "gs"
    make_workdir(gs, range(6), diverged={2}, rng_seed=5, no_smoothing=True)
    make_workdir(tmp_path / "plain", range(5), rng_seed=6)
    out = tmp_path / "report"
    argv = [str(gs), str(tmp_path / "plain"), "--out", str(out)]
    report.main([*argv, "--format", "csv", "--format", "json"])
    md = (out / "report.md").read_text()

    gs_md = md[: md.index("## Run `plain`")]
    plain_md = md[md.index("## Run `plain`") : md.index("## Comparison")]
    assert NO_GS not in plain_md

    # The default table still comes from results.csv, the extra one from the variant's file.
    default = _section(gs_md, "Results")
    extra = _section(gs_md, f"Results, {NO_GS}")
    assert "Values from results_no_smoothing.csv (final)" in extra
    assert "n = 5 of 6; 1 diverged: [2]" in extra
    want = "| MCC | " + " | ".join(_cells(gs / "results_no_smoothing.csv", "mcc")) + " |"
    assert want in extra and want not in default
    assert "| MCC | " + " | ".join(_cells(gs / "results.csv", "mcc")) + " |" in default

    # Fair-threshold section of the variant: PxAP from final_stats_no_smoothing.npz.
    fair_md = _section(gs_md, f"Threshold-free and fair-threshold evaluation, {NO_GS}")
    run = report.load_run(gs)
    assert set(run.variants) == {"no_smoothing"}
    ns = run.variants["no_smoothing"]
    fair = report.fair_threshold_evaluation(ns.final_stats, exclude_seeds=run.diverged)
    ok = np.array([s != 2 for s in fair["seeds"]])
    assert fair["pxap"][~ok].size and np.all(np.isnan(fair["pxap"][~ok]))
    cells = []
    for split in ("val", "test"):
        pxap = fair["pxap"][ok, fair["splits"].index(split)]
        cells.append(stats.format_cell(pxap.mean(), np.std(pxap, ddof=1), np.median(pxap)))
    assert f"| PxAP | {cells[0]} | — | {cells[1]} | — |" in fair_md
    default_fair = report.fair_threshold_evaluation(run.final_stats, exclude_seeds=run.diverged)
    assert not np.allclose(default_fair["pxap"][ok], fair["pxap"][ok])

    # JSON: the run's own entry is the default variant, the extra one under "variants".
    data = json.loads((out / "report.json").read_text())
    entry = data["runs"]["gs"]
    assert entry["variant"] == "default" and set(entry["variants"]) == {"no_smoothing"}
    ns_json = entry["variants"]["no_smoothing"]
    assert ns_json["variant"] == "no_smoothing" and ns_json["title"] == NO_GS
    assert ns_json["source"] == "results_no_smoothing.csv (final)"
    np.testing.assert_allclose(
        np.array(ns_json["values"]["test"]["mcc"], dtype=float),
        ns.values["test"]["mcc"],
        equal_nan=True,
    )
    assert ns_json["fair_threshold"]["pxap"][0] == pytest.approx(fair["pxap"][0].tolist())
    assert data["runs"]["plain"]["variants"] == {}

    # CSV: a variant column; the no_smoothing rows carry results_no_smoothing.csv's values.
    with open(gs / "results_no_smoothing.csv") as f:
        raw = {(r["seed"], r["split"], r["metric"]): r["value"] for r in csv.DictReader(f)}
    with open(out / "seeds.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["run"], r["variant"]) for r in rows} == {
        ("gs", "default"),
        ("gs", "no_smoothing"),
        ("plain", "default"),
    }
    ns_rows = [r for r in rows if r["variant"] == "no_smoothing"]
    assert len(ns_rows) == 6 * 3 * len(CSV_METRICS)
    for r in ns_rows:
        want = float(raw[(r["seed"], r["split"], r["metric"])])
        got = float(r["value"]) if r["value"] else math.nan
        assert got == pytest.approx(want, rel=1e-5, nan_ok=True)
    for name in ("summary.csv", "thresholds.csv"):
        with open(out / name) as f:
            variants = {(r["run"], r["variant"]) for r in csv.DictReader(f)}
        assert ("gs", "no_smoothing") in variants and ("plain", "no_smoothing") not in variants
    with open(out / "summary.csv") as f:
        row = next(
            r
            for r in csv.DictReader(f)
            if (r["run"], r["variant"], r["split"], r["metric"])
            == ("gs", "no_smoothing", "test", "mcc")
        )
    assert _cells(gs / "results_no_smoothing.csv", "mcc")[2].startswith(
        f"{float(row['mean']):.3f} "
    )


def test_variant_npz_without_results_is_noted(tmp_path):
    """An interrupted sweep can leave final_stats_no_smoothing.npz without its results csv."""
    make_workdir(tmp_path / "gs", range(4), no_smoothing=True)
    (tmp_path / "gs" / "results_no_smoothing.csv").unlink()
    run = report.load_run(tmp_path / "gs")
    assert run.variants == {}
    assert any("final_stats_no_smoothing.npz without" in n for n in run.notes)


def _rows(markdown: str) -> list[str]:
    """The body rows of the markdown tables in ``markdown`` (header and rule lines left out)."""
    return [
        ln
        for ln in markdown.splitlines()
        if ln.startswith("| ") and not ln.startswith(("|  |", "| |")) and "---" not in ln
    ]


def test_report_of_a_real_sweep(tiny_sweep, tmp_path):
    """The report of a real tiny sweep's workdir agrees with that workdir's files."""
    out = tmp_path / "report"
    report.main([str(tiny_sweep), "--out", str(out), "--format", "json", "--format", "csv"])
    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    entry = data["runs"][tiny_sweep.name]

    # Values: results.csv's rows, read here with the csv module (not the report's reader).
    with open(tiny_sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tiny_sweep / "run.json") as f:
        info = json.load(f)
    assert entry["seeds"] == info["seeds"] == [0, 1] and entry["diverged"] == []
    assert entry["info"] == info and entry["source"] == "results.csv (final)"
    for split in SPLITS:
        for metric in results.RESULT_METRICS:
            want = [float(r["value"]) for r in rows if (r["split"], r["metric"]) == (split, metric)]
            assert entry["values"][split][metric] == pytest.approx(want), (split, metric)
            assert entry["summary"][split][metric]["mean"] == pytest.approx(np.mean(want))
    test_mcc = [float(r["value"]) for r in rows if (r["split"], r["metric"]) == ("test", "mcc")]
    assert entry["summary"]["test"]["mcc"]["mean"] == pytest.approx(np.mean(test_mcc))
    mcc_row = "| MCC | " + " | ".join(_cells(tiny_sweep / "results.csv", "mcc")) + " |"
    assert mcc_row in _section(md, "Results").splitlines()

    # The thesis table: report.md has every row of summary.md's, for both evaluations.
    summary = (tiny_sweep / "summary.md").read_text()
    default_md, no_gs_md = summary.split("\n# ")
    seeds_md, ensemble_md = default_md.split("\nEnsemble of ")
    assert _rows(seeds_md) and _rows(seeds_md) == _rows(_section(md, "Results"))
    assert _rows(no_gs_md.split("\nEnsemble of ")[0]) == _rows(_section(md, f"Results, {NO_GS}"))

    # The ensemble: summary.md's table, the report's ensemble column and report.json all give
    # results_ensemble.csv's whole ensemble (size 2), read here with the csv module.
    with open(tiny_sweep / "results_ensemble.csv") as f:
        ens_rows = list(csv.DictReader(f))
    assert {int(r["size"]) for r in ens_rows} == {1, 2}
    whole = {(r["split"], r["metric"]): float(r["value"]) for r in ens_rows if r["size"] == "2"}
    mcc = [f"{whole[(s, 'mcc')]:.3f}" for s in SPLITS]
    assert "| MCC | " + " | ".join(mcc) + " |" in _rows(ensemble_md)
    section = _rows(_section(md, "The ensemble of the seeds"))
    mcc_line = next(ln for ln in section if ln.startswith("| MCC |"))
    assert mcc_line.split(" | ")[2::2] == mcc[:2] + [mcc[2] + " |"]
    for (split, metric), value in whole.items():
        assert entry["ensemble"][split][metric][-1] == pytest.approx(value, rel=1e-5)
    assert "Every comparison and test in this report is over the seeds" in md
    assert entry["variants"]["no_smoothing"]["source"] == "results_no_smoothing.csv (final)"

    # Learning curves: one point per epoch of metrics.jsonl, the mean over its seeds.
    with open(tiny_sweep / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    curve = entry["curves"]["mcc"]["val"]
    epochs = sorted({r["epoch"] for r in logged})
    assert curve["epoch"] == epochs == [1, 2]
    for k, epoch in enumerate(epochs):
        vals = [r["mcc"] for r in logged if (r["epoch"], r["split"]) == (epoch, "val")]
        assert curve["n"][k] == 2 and curve["mean"][k] == pytest.approx(np.mean(vals))

    # Fair threshold from final_stats.npz: the fixed-threshold metrics are results.csv's.
    with np.load(tiny_sweep / "final_stats.npz") as npz:
        assert entry["fair_threshold"]["seeds"] == npz["seeds"].tolist()
    test = entry["fair_threshold"]["splits"].index("test")
    fixed_test_mcc = [row[test] for row in entry["fair_threshold"]["fixed"]["mcc"]]
    assert fixed_test_mcc == pytest.approx(test_mcc, rel=1e-5, abs=1e-6)

    name = tiny_sweep.name
    for kind in ("mcc_hist", "curves", "examples", "ensemble"):
        assert entry["figures"][kind] == f"{name}_{kind}.png"
        assert f"]({name}_{kind}.png)" in md
        _assert_png_ok(out / f"{name}_{kind}.png")
    assert not list(out.glob(".tmp-*"))  # every file written atomically
