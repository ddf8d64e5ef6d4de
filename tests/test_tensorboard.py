"""TensorBoard curves written during a sweep: the values of metrics.jsonl, purged on resume."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cmseg_jax import tensorboard_log
from cmseg_jax.results import RESULT_METRICS

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARGS = ["--config=configs/cam_beta.py:tiny", "--num_seeds=3", "--progress=false"]


def sweep(workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "cmseg_jax.sweep", *ARGS, f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def rows_of(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_board_equals_jsonl(workdir):
    board = tensorboard_log.read_scalars(workdir / "tensorboard")
    rows = rows_of(workdir)
    epochs = sorted({r["epoch"] for r in rows})
    assert set(board) == {"seed_00", "seed_01", "seed_02", "mean", "std", "min", "max"}
    for run, scalars in board.items():
        for tag, events in scalars.items():
            assert [step for step, _ in events] == epochs, (run, tag)  # each epoch once
    for row in rows:
        run = board[f"seed_{row['seed']:02d}"]
        for metric in ("loss", *RESULT_METRICS):
            tag = f"{'eval_loss' if metric == 'loss' else metric}/{row['split']}"
            got = dict(run[tag])[row["epoch"]]
            assert got == np.float32(row[metric]), (row["seed"], row["split"], metric)
        assert dict(run["loss/train"])[row["epoch"]] == np.float32(row["train_loss"])
    for epoch in epochs:
        for split in ("train", "val", "test"):
            for metric in ("mcc", "iou", "cls_mcc", "loss"):
                values = [r[metric] for r in rows if (r["epoch"], r["split"]) == (epoch, split)]
                tag = f"{'eval_loss' if metric == 'loss' else metric}/{split}"
                stats = {
                    "mean": np.mean(values),
                    "std": np.std(values, ddof=1),
                    "min": np.min(values),
                    "max": np.max(values),
                }
                for name, want in stats.items():
                    got = dict(board[name][tag])[epoch]
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=tag)
    return board


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tb") / "run"
    sweep(workdir)
    return workdir


def test_scalars_equal_metrics_jsonl(finished):
    board = assert_board_equals_jsonl(finished)
    assert len(rows_of(finished)) == 2 * 3 * 3
    assert "loss/train" in board["mean"] and "cls_mcc/test" in board["max"]


def test_resume_purges_what_a_killed_run_logged_after_its_checkpoint(finished, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(finished, killed)
    # A run killed after epoch 1's checkpoint that had logged epoch 2 and a bogus epoch 3.
    shutil.rmtree(killed / "checkpoints" / "2")
    for name in ("results.csv", "summary.md", "final_stats.npz", "run.json", "examples.npz"):
        (killed / name).unlink()
    bogus = [dict(r, epoch=3, mcc=0.123) for r in rows_of(killed) if r["epoch"] == 2]
    board = tensorboard_log.EpochBoard(killed, first_epoch=3)
    board.write(bogus)
    board.close()
    proc = sweep(killed)
    assert "after epoch 1" in proc.stderr
    assert rows_of(killed) == rows_of(finished)
    assert_board_equals_jsonl(killed)  # epoch 2 once, no epoch 3
