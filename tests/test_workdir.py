"""cmseg_jax.workdir: each writer and its reader round-trip, in the format of docs/workdir.md."""

import json
import math
import pathlib

import numpy as np
import pytest

from cmseg_jax import config_base, errors, results
from cmseg_jax import workdir as workdir_io
from cmseg_jax.config_base import get_base_config
from tests.conftest import load_config

SPLITS = ("train", "val", "test")
SEEDS = [3, 7]


def _no_temporaries(path):
    assert not [p.name for p in path.iterdir() if p.name.startswith(".tmp-")]


def _counts(rng, *shape):
    return rng.integers(0, 50, (*shape, 4))


def _table(rng):
    """split -> metric -> (S,) values from random confusion counts; seed 7 diverged (NaN)."""
    confusion = _counts(rng, len(SEEDS), 3)
    return results.final_table(SEEDS, confusion, _counts(rng, len(SEEDS), 3), [False, True])


def test_config_round_trip(tmp_path):
    config = get_base_config()
    config.train.epochs = 7
    workdir_io.write_config(tmp_path, config, SEEDS)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["seeds"] == SEEDS and record["train"]["epochs"] == 7
    got, seeds = workdir_io.read_config(tmp_path)
    assert seeds == SEEDS
    # Of the networks' sub-dicts only the run's own is recorded.
    assert "convmixerseg" in record["model"] and "fcn_resnet50" not in record["model"]
    del config.model["fcn_resnet50"]
    assert json.loads(got.to_json()) == json.loads(config.to_json())  # tuples come back as lists
    assert workdir_io.config_record(got, seeds) == record


LEGACY = pathlib.Path(__file__).parent / "data" / "legacy_cam_beta_tiny" / "config.json"


def test_a_flat_config_json_of_an_earlier_version_reads_in_todays_form(tmp_path):
    """config.json written before the networks' fields moved into config.model.<arch>."""
    old = json.loads(LEGACY.read_text())
    assert old["model"]["hidden"] == 8 and "convmixerseg" not in old["model"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    got, seeds = workdir_io.read_config(tmp_path)
    assert got.model.convmixerseg.hidden == 8 and got.model.convmixerseg.depth == 1
    assert "hidden" not in got.model and "fcn_resnet50" not in got.model
    # It identifies the same run as today's config of that command.
    (tmp_path / "metrics.jsonl").write_text("")
    today = config_base.resolve(load_config("configs/cam_beta.py:tiny,train.epochs=1"))
    workdir_io.check_same_run(tmp_path, workdir_io.config_record(today, seeds))
    today.model.convmixerseg.hidden = 16
    changed = r"different settings \(model.convmixerseg.hidden\)"
    with pytest.raises(errors.UsageError, match=changed):
        workdir_io.check_same_run(tmp_path, workdir_io.config_record(today, seeds))


def test_an_earlier_fcn_config_json_keeps_its_width_and_drops_the_other_networks_fields(tmp_path):
    old = json.loads(LEGACY.read_text())
    old["model"].update(arch="fcn_resnet50", fcn_width=8, smoothing=False)
    (tmp_path / "config.json").write_text(json.dumps(old))
    got, _ = workdir_io.read_config(tmp_path)
    assert got.model.fcn_resnet50.width == 8
    assert "convmixerseg" not in got.model and "hidden" not in got.model
    assert "fcn_width" not in got.model


def test_an_earlier_grid_spec_and_its_point_directories_are_found(tmp_path):
    old = json.loads(LEGACY.read_text())
    old["sweep"] = {"grid": "model.hidden=4,8; train.learning_rate=0.01,0.003"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    got, _ = workdir_io.read_config(tmp_path)
    assert got.sweep.grid == "model.convmixerseg.hidden=4,8; train.learning_rate=0.01,0.003"
    # Today's specs come back as written, spacing included.
    today = "model.smoothing_sigma=3,5 ;train.learning_rate=0.01"
    old["sweep"] = {"grid": today}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert workdir_io.read_config(tmp_path)[0].sweep.grid == today
    # A point directory named by the flat field is the point's, where only it exists.
    point = {"model.convmixerseg.hidden": 4, "train.learning_rate": 0.01}
    grid = tmp_path / "grid"
    assert workdir_io.point_dir(grid, point) == grid / config_base.point_name(point)
    (grid / "model.hidden=4,train.learning_rate=0.01").mkdir(parents=True)
    assert workdir_io.point_dir(grid, point).name == "model.hidden=4,train.learning_rate=0.01"
    (grid / config_base.point_name(point)).mkdir()
    assert workdir_io.point_dir(grid, point) == grid / config_base.point_name(point)
    _no_temporaries(tmp_path)


def test_config_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        workdir_io.read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"name": "x"}')  # no seeds
    with pytest.raises(errors.IOFailure, match="config.json: not a sweep's config.json"):
        workdir_io.read_config(tmp_path)


def _rows(epoch, seeds=SEEDS):
    return [
        {"epoch": epoch, "seed": s, "split": split, "mcc": 0.1 * epoch + s}
        for s in seeds
        for split in SPLITS
    ]


def test_metrics_append_read_truncate(tmp_path, capsys):
    assert workdir_io.read_metrics(tmp_path) == ([], 0)
    for epoch in (1, 2, 3):
        workdir_io.append_metrics(tmp_path, _rows(epoch))
    rows, bad = workdir_io.read_metrics(tmp_path)
    assert rows == _rows(1) + _rows(2) + _rows(3) and bad == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows  # one JSON object per line

    # A torn last line (a write cut short) is counted, not fatal; a resume drops it with a warning.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "seed": 3, "spl')
    rows, bad = workdir_io.read_metrics(tmp_path)
    assert len(rows) == 18 and bad == 1
    workdir_io.truncate_metrics(tmp_path, 2)
    assert (
        f"warning: {tmp_path}/metrics.jsonl: dropped 1 unreadable line" in capsys.readouterr().err
    )
    assert workdir_io.read_metrics(tmp_path) == (_rows(1) + _rows(2), 0)
    workdir_io.append_metrics(tmp_path, _rows(3))
    assert workdir_io.read_metrics(tmp_path)[0] == _rows(1) + _rows(2) + _rows(3)
    _no_temporaries(tmp_path)
    workdir_io.remove_metrics(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("variant", ["default", "no_smoothing"])
def test_results_csv_round_trip(tmp_path, variant):
    table = _table(np.random.default_rng(0))
    assert workdir_io.read_results_csv(tmp_path, variant) is None
    workdir_io.write_results_csv(tmp_path, SEEDS, table, variant)
    name = {"default": "results.csv", "no_smoothing": "results_no_smoothing.csv"}[variant]
    lines = (tmp_path / name).read_text().splitlines()
    assert lines[0] == "seed,split,metric,value"
    assert len(lines) == 1 + len(SEEDS) * 3 * len(results.RESULT_METRICS)
    assert lines[1] == f"3,train,acc,{table['train']['acc'][0]:.6g}"
    assert lines[-1] == "7,test,cls_recall,nan"
    got = workdir_io.read_results_csv(tmp_path, variant)
    assert sorted(got) == SEEDS
    for i, seed in enumerate(SEEDS):
        for split in SPLITS:
            assert list(got[seed][split]) == list(results.RESULT_METRICS)
            for m, v in got[seed][split].items():
                want = table[split][m][i]
                assert v == pytest.approx(want, rel=1e-5) or (math.isnan(v) and math.isnan(want))
    _no_temporaries(tmp_path)


def test_results_csv_not_a_table(tmp_path):
    (tmp_path / "results.csv").write_text("seed,split,metric,value\n0,train,mcc,zero\n")
    with pytest.raises(errors.IOFailure, match=r"results.csv: line 2: not a results table"):
        workdir_io.read_results_csv(tmp_path)


@pytest.mark.parametrize("variant", ["default", "no_smoothing"])
def test_final_stats_round_trip(tmp_path, variant):
    rng = np.random.default_rng(1)
    bins = 20
    arrays = {
        "confusion": _counts(rng, 2, 3),
        "cls_confusion": _counts(rng, 2, 3),
        "hist_liver": rng.integers(0, 9, (2, 3, bins)),
        "hist_background": rng.integers(0, 9, (2, 3, bins)),
    }
    assert workdir_io.read_final_stats(tmp_path, variant) is None
    workdir_io.write_final_stats(tmp_path, SEEDS, **arrays, variant=variant)
    name = {"default": "final_stats.npz", "no_smoothing": "final_stats_no_smoothing.npz"}
    assert (tmp_path / name[variant]).exists()
    got = workdir_io.read_final_stats(tmp_path, variant)
    assert set(got) == set(arrays) | {"seeds", "splits", "bin_edges"}
    np.testing.assert_array_equal(got["seeds"], SEEDS)
    assert got["seeds"].dtype == np.int64 and got["splits"].tolist() == list(SPLITS)
    np.testing.assert_array_equal(got["bin_edges"], np.linspace(0, 1, bins + 1))
    for key, value in arrays.items():
        assert got[key].dtype == np.int64, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    _no_temporaries(tmp_path)


def test_unreadable_npz_names_the_file(tmp_path):
    (tmp_path / "final_stats.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(errors.IOFailure, match="final_stats.npz: unreadable"):
        workdir_io.read_final_stats(tmp_path)


def test_examples_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (2, 8, 8))
    masks = rng.integers(0, 2, (2, 8, 8))
    scores = rng.uniform(0, 1, (3, 2, 8, 8))
    assert workdir_io.read_examples(tmp_path) is None
    workdir_io.write_examples(tmp_path, images, masks, [7, 3, 5], scores, 0.25)
    got = workdir_io.read_examples(tmp_path)
    assert {k: v.dtype for k, v in got.items() if k != "roles"} == {
        "images": np.float32,
        "masks": np.uint8,
        "seeds": np.int64,
        "scores": np.float16,
        "threshold": np.float32,
    }
    assert got["roles"].tolist() == ["best", "median", "worst"]
    assert got["seeds"].tolist() == [7, 3, 5] and float(got["threshold"]) == 0.25
    np.testing.assert_allclose(got["images"], images, rtol=1e-6)
    np.testing.assert_array_equal(got["masks"], masks)
    np.testing.assert_allclose(got["scores"], scores, atol=1e-3)


def test_run_info_round_trip(tmp_path):
    assert workdir_io.read_run_info(tmp_path) is None
    info = {
        "seeds": SEEDS,
        "diverged": [7],
        "epochs_completed": 4,
        "num_epochs": 4,
        "data": "phantom",
        "device": "cpu:cpu",
    }
    workdir_io.write_run_info(tmp_path, **info)
    assert json.loads((tmp_path / "run.json").read_text()) == info
    assert workdir_io.read_run_info(tmp_path) == info
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(errors.IOFailure, match="run.json: not a JSON object"):
        workdir_io.read_run_info(tmp_path)


def test_summary_round_trip(tmp_path):
    table = _table(np.random.default_rng(3))
    text = results.summary_markdown("x", SEEDS, table, [False, True], "phantom")
    assert workdir_io.read_summary(tmp_path) is None
    workdir_io.write_summary(tmp_path, text)
    assert workdir_io.read_summary(tmp_path) == text
    assert "diverged (excluded below): [7]" in text
    # Every metric's row: title, then per split the mean ± std (median) of the seed that is left.
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "Training" not in ln]
    assert [r.split(" | ")[0][2:] for r in rows] == [
        results.metric_title(m) for m in results.RESULT_METRICS
    ]
    assert (
        rows[1]
        == "| MCC | "
        + " | ".join(f"{table[s]['mcc'][0]:.3f} ± nan ({table[s]['mcc'][0]:.3f})" for s in SPLITS)
        + " |"
    )
