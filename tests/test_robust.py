"""Robustness through the real CLIs: malformed inputs, corrupt checkpoints, full disks, signals.

* One table of malformed inputs over every command (sweep, report, predict, data.check, the
  phantom writer, the TFDS build): the exit status, one line on stderr that names what is wrong,
  no traceback and nothing left behind.
* Recovery of a tiny sweep (``configs/cam_beta.py:tiny``, 2 seeds, 3 epochs, 2 steps per compiled
  call) from a flipped-byte, truncated or stray checkpoint, a torn ``metrics.jsonl`` line, orphan
  temporary files, a full disk (a write wrapper raising ENOSPC, :mod:`tests.diskfull`, and a small
  tmpfs where one can be mounted) during the ``metrics.jsonl`` append, the TensorBoard events and
  a checkpoint, SIGTERM, SIGINT and a stop in mid-epoch: each resumed run ends bit-identical to the
  uninterrupted one, and each failure is one line.
* One writer per workdir: two sweeps on one workdir, a held lock, a killed holder.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest

from cmseg_jax import errors
from cmseg_jax.data import phantom

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = "--config=configs/cam_beta.py:tiny"
# The recovery tests' run: 2 seeds, 3 epochs of 4 steps in calls of 2 (a mid-epoch boundary).
RUN = [
    TINY,
    "--num_seeds=2",
    "--config.train.epochs=3",
    "--config.train.steps_per_call=2",
    "--config.eval.without_smoothing=false",
    "--progress=false",
]
OUTPUTS = ("results.csv", "summary.md", "final_stats.npz", "run.json", "examples.npz")


def cli(module: str, *args: str, prefix=(), timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *prefix, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------------------------
# Data directories for the table.


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> pathlib.Path:
    """A LiTS-format directory of 3 small phantom cases (valid)."""
    return phantom.write_phantom_dataset(
        tmp_path_factory.mktemp("good") / "lits", num_volumes=3, shape=(16, 16, 12)
    )


def _copy(good: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(good, tmp / "data"))


def bad_crc(good, tmp):
    d = _copy(good, tmp)
    path = d / "volume-0.nii.gz"
    raw = bytearray(path.read_bytes())
    for i in range(64):  # 64 flipped bytes in the compressed stream, the header left intact
        raw[-9 - 3 * i] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncated_gz(good, tmp):
    d = _copy(good, tmp)
    path = d / "segmentation-1.nii.gz"
    path.write_bytes(path.read_bytes()[:-40])


def nan_voxels(good, tmp):
    d = _copy(good, tmp)
    img = nib.load(d / "volume-2.nii.gz")
    hu = np.asarray(img.dataobj, np.float32)
    hu[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(hu, img.affine), d / "volume-2.nii.gz")


def broken_symlink(good, tmp):
    d = _copy(good, tmp)
    (d / "volume-1.nii.gz").unlink()
    (d / "volume-1.nii.gz").symlink_to(tmp / "missing.nii.gz")


def directory_as_volume(good, tmp):
    d = _copy(good, tmp)
    (d / "volume-7.nii.gz").mkdir()


def one_volume(good, tmp):
    d = _copy(good, tmp)
    for n in (1, 2):
        (d / f"volume-{n}.nii.gz").unlink()
        (d / f"segmentation-{n}.nii.gz").unlink()


def no_segmentation(good, tmp):
    d = _copy(good, tmp)
    (d / "segmentation-2.nii.gz").unlink()


def other_run(good, tmp):
    (tmp / "w" / "checkpoints" / "1").mkdir(parents=True)
    (tmp / "w" / "config.json").write_text(json.dumps({"seeds": [0], "name": "other"}))


def garbage_config(good, tmp):
    (tmp / "w" / "checkpoints" / "1").mkdir(parents=True)
    (tmp / "w" / "config.json").write_text("{ not json")


def a_file(good, tmp):
    (tmp / "file").write_text("x")


def empty_dir(good, tmp):
    (tmp / "w").mkdir()


def garbage_results(good, tmp):
    (tmp / "w").mkdir()
    (tmp / "w" / "results.csv").write_text("seed,split,metric,value\n0,train,mcc,zero\n")


def some_volume(good, tmp):
    shutil.copy(good / "volume-0.nii.gz", tmp / "ct.nii.gz")


def a_volume_and_a_file(good, tmp):
    some_volume(good, tmp)
    a_file(good, tmp)


@dataclasses.dataclass(frozen=True)
class Case:
    """A malformed command line: ``{tmp}``, ``{data}``, ``{good}``, ``{sweep}`` are filled in."""

    name: str
    module: str
    args: tuple[str, ...]
    code: int
    words: tuple[str, ...]
    setup: Callable | None = None
    # "stderr": one error line; "report" (data.check): its problem lines on stderr, the summary
    # on stdout.
    stream: str = "stderr"


SWEEP, REPORT, PREDICT = "cmseg_jax.sweep", "cmseg_jax.report", "cmseg_jax.predict"
CHECK, PHANTOM, TFDS = "cmseg_jax.data.check", "cmseg_jax.data.phantom", "cmseg_jax.data.tfds_build"
W = "--workdir={tmp}/w"
LITS = ("--config.data.source=lits", "--config.data.dir={tmp}/data")


OUT, TF = "--out={tmp}/r", "--data_dir={tmp}/t"
CT = ("{tmp}/ct.nii.gz", "{tmp}/m.nii.gz")


def sweep(name, args, code, words, setup=None):
    return Case(name, SWEEP, (TINY, W, "--progress=false", *args), code, words, setup)


def predict(name, args, code, words, setup=some_volume):
    """predict with the finished sweep; a trailing path in ``args`` replaces the input or output."""
    paths = list(CT)
    for a in args:
        if a.endswith(".png"):
            paths[1] = a
        elif a.endswith(".nii.gz"):
            paths[0] = a
    flags = tuple(a for a in args if a.startswith("--"))
    return Case(name, PREDICT, ("--workdir={sweep}", *flags, *paths), code, words, setup)


CASES = [
    # The sweep: usage (2).
    Case("no_config", SWEEP, (W,), 2, ("--config", "required")),
    sweep("missing_config_file", ("--config=configs/nope.py",), 2, ("--config", "nope.py")),
    sweep("unknown_variant", ("--config=configs/cam_beta.py:huge",), 2, ("huge", "variant")),
    # Without --workdir the sweep writes to runs/<config.name>; a name that is no directory
    # name cannot be one (the default itself: tests/test_default_workdir.py).
    Case("no_workdir_bad_name", SWEEP, (TINY, "--config.name=a/b"), 2, ("config.name", "workdir")),
    sweep("seeds_comma", ("--seeds=,",), 2, ("--seeds", "no seed ids")),
    sweep("seeds_not_int", ("--seeds=a,b",), 2, ("--seeds", "integers")),
    sweep("seeds_repeated", ("--seeds=3,3",), 2, ("--seeds", "distinct")),
    sweep("seeds_negative", ("--seeds=-1",), 2, ("--seeds", "non-negative")),
    sweep("seeds_and_num_seeds", ("--seeds=1", "--num_seeds=2"), 2, ("--seeds", "--num_seeds")),
    sweep("num_seeds_zero", ("--num_seeds=0",), 2, ("--num_seeds=0", ">= 1")),
    sweep("num_seeds_negative", ("--num_seeds=-3",), 2, ("--num_seeds=-3", ">= 1")),
    sweep("num_seeds_not_int", ("--num_seeds=two",), 2, ("--num_seeds", "two")),
    sweep("epochs_zero", ("--config.train.epochs=0",), 2, ("config.train.epochs=0", ">= 1")),
    sweep("epochs_negative", ("--config.train.epochs=-2",), 2, ("config.train.epochs=-2",)),
    sweep("epochs_not_int", ("--config.train.epochs=abc",), 2, ("config.train.epochs", "abc")),
    sweep("batch_zero", ("--config.train.batch_size=0",), 2, ("config.train.batch_size=0",)),
    sweep("eval_batch_zero", ("--config.eval.batch_size=0",), 2, ("config.eval.batch_size=0",)),
    sweep("every_zero", ("--config.eval.every_epochs=0",), 2, ("config.eval.every_epochs=0",)),
    sweep("unknown_field", ("--config.train.nope=1",), 2, ("--config.train.nope", "no such")),
    sweep("unknown_group", ("--config.nope.x=1",), 2, ("--config.nope.x", "no such")),
    sweep("bad_method", ("--config.method=foo",), 2, ("config.method", "foo")),
    sweep("bad_source", ("--config.data.source=foo",), 2, ("config.data.source", "foo")),
    sweep("lits_without_dir", ("--config.data.source=lits",), 2, ("config.data.dir",)),
    sweep("image_size_zero", ("--config.data.image_size=0",), 2, ("config.data.image_size",)),
    sweep("fractions", ("--config.data.fractions=(0.5,0.5,0.5)",), 2, ("config.data.fractions",)),
    sweep("hu_window", ("--config.data.hu_window=(100,-100)",), 2, ("config.data.hu_window",)),
    sweep(
        "no_slices",
        ("--config.data.liver_slices=0", "--config.data.background_slices=0"),
        2,
        ("liver_slices", "background_slices"),
    ),
    sweep("one_phantom_volume", ("--config.data.phantom_volumes=1",), 2, ("phantom_volumes=1",)),
    sweep("seed_chunk", ("--config.train.seed_chunk=-1",), 2, ("config.train.seed_chunk",)),
    sweep("learning_rate", ("--config.train.learning_rate=0.0",), 2, ("learning_rate",)),
    sweep(
        "upsample",
        ("--config.model.convmixerseg.upsample=nearest",),
        2,
        ("config.model.convmixerseg.upsample",),
    ),
    sweep(
        "moved_field",
        ("--config.model.hidden=4",),
        2,
        ("--config.model.hidden", "it is now --config.model.convmixerseg.hidden"),
    ),
    sweep("batch_over_split", ("--config.train.batch_size=1000",), 2, ("batch_size=1000", "split")),
    sweep("stray_argument", ("7",), 2, ("7", "unexpected argument")),
    sweep("dry_run_epochs", ("--dry_run", "--config.train.epochs=0"), 2, ("train.epochs=0",)),
    sweep("workdir_of_another_run", (), 2, ("config.json", "different settings"), other_run),
    # The sweep: data and I/O (1).
    sweep("data_dir_missing", LITS, 1, ("data", "not a directory")),
    sweep("bad_gzip_crc", LITS, 1, ("volume-0.nii.gz", "corrupt gzip"), bad_crc),
    sweep("truncated_gzip", LITS, 1, ("segmentation-1.nii.gz", "truncated"), truncated_gz),
    sweep("nan_voxels", LITS, 1, ("volume-2.nii.gz", "non-finite"), nan_voxels),
    sweep("broken_symlink", LITS, 1, ("volume-1.nii.gz", "broken symbolic link"), broken_symlink),
    sweep("dir_as_volume", LITS, 1, ("volume-7.nii.gz", "a directory"), directory_as_volume),
    sweep("one_volume", LITS, 1, ("at least 3 volumes",), one_volume),
    sweep("no_segmentation", LITS, 1, ("volume-2.nii.gz", "no segmentation"), no_segmentation),
    sweep(
        "tfds_not_built",
        ("--config.data.source=tfds", "--config.data.tfds_dir={tmp}/t"),
        1,
        ("dataset not built", "tfds_build"),
    ),
    sweep("workdir_under_a_file", ("--workdir={tmp}/file/w",), 1, ("not a directory",), a_file),
    sweep("garbage_config_json", (), 1, ("config.json", "unreadable"), garbage_config),
    sweep(
        "workdir_in_proc",
        ("--workdir=/proc/x",),
        1,
        ("/proc/x: cannot create the workdir", "/proc takes no new directories"),
    ),
    # report.
    Case("report_missing", REPORT, ("{tmp}/w", OUT), 1, ("w", "no such directory")),
    Case("report_empty", REPORT, ("{tmp}/w", OUT), 1, ("w", "not a sweep workdir"), empty_dir),
    Case("report_garbage", REPORT, ("{tmp}/w", OUT), 1, ("results.csv", "line 2"), garbage_results),
    Case("report_a_file", REPORT, ("{tmp}/file", OUT), 1, ("file: not a directory",), a_file),
    Case(
        "report_out_a_file",
        REPORT,
        ("{sweep}", "--out={tmp}/file"),
        1,
        ("file: not a directory", "--out"),
        a_file,
    ),
    Case("report_alpha", REPORT, ("{sweep}", OUT, "--alpha=2"), 2, ("--alpha",)),
    Case("report_no_out", REPORT, ("{sweep}",), 2, ("--out",)),
    # predict.
    Case(
        "predict_not_a_sweep", PREDICT, ("--workdir={tmp}", *CT), 2, ("config.json",), some_volume
    ),
    predict("predict_no_input", (), 1, ("ct.nii.gz", "no such file"), None),
    predict("predict_output_name", ("{tmp}/m.png",), 2, ("m.png", ".nii")),
    Case(
        "predict_output_under_a_file",
        PREDICT,
        ("--workdir={sweep}", "{tmp}/ct.nii.gz", "{tmp}/file/m.nii.gz"),
        1,
        ("file: not a directory", "output"),
        a_volume_and_a_file,
    ),
    predict("predict_batch_zero", ("--batch_size=0",), 2, ("--batch_size",)),
    predict("predict_pruned_epoch", ("--epoch=1",), 2, ("--epoch 1", "kept: 2, 3")),
    predict("predict_unknown_seed", ("--seed=9",), 2, ("seed 9",)),
    predict("predict_bad_crc", ("{tmp}/data/volume-0.nii.gz",), 1, ("corrupt gzip",), bad_crc),
    # data.check (its problem lines on stderr, the report's summary on stdout).
    Case("check_missing", CHECK, ("{tmp}/nope",), 1, ("nope", "not a directory")),
    Case("check_bad_range", CHECK, ("{good}", "--hu_min=abc"), 2, ("--hu_min", "abc")),
    Case(
        "check_broken_symlink",
        CHECK,
        ("{tmp}/data", "--no-progress"),
        1,
        ("volume-1.nii.gz: broken symbolic link",),
        broken_symlink,
        "report",
    ),
    Case(
        "check_bad_crc",
        CHECK,
        ("{tmp}/data", "--no-progress"),
        1,
        ("volume-0.nii.gz: corrupt gzip",),
        bad_crc,
        "report",
    ),
    Case(
        "check_one_volume",
        CHECK,
        ("{tmp}/data", "--no-progress"),
        1,
        ("data: 1 volume(s) leave the val and test split empty", "at least 3 volumes"),
        one_volume,
        "report",
    ),
    # The phantom writer.
    Case("phantom_no_volumes", PHANTOM, ("{tmp}/p", "--num_volumes=0"), 2, ("--num_volumes",)),
    Case("phantom_small_shape", PHANTOM, ("{tmp}/p", "--shape", "4", "4", "4"), 2, ("--shape",)),
    Case(
        "phantom_under_a_file",
        PHANTOM,
        ("{tmp}/file/p", "--num_volumes=1", "--shape", "8", "8", "8"),
        1,
        ("file", "Not a directory"),
        a_file,
    ),
    # The TFDS build.
    Case("tfds_no_manual_dir", TFDS, ("--manual_dir={tmp}/nope", TF), 1, ("nope", "not a dir")),
    Case("tfds_bad_config", TFDS, ("--manual_dir={good}", TF, "--config=bogus"), 2, ("bogus",)),
    Case("tfds_unknown_flag", TFDS, ("--manual_dir={good}", "--bogus_flag=3"), 2, ("--bogus",)),
]


def _tree(root: pathlib.Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.lstat().st_mtime for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input_is_one_line(case, tmp_path, good_data, request):
    needs_sweep = any("{sweep}" in a for a in case.args)
    sweep_dir = request.getfixturevalue("finished") if needs_sweep else None
    if case.setup is not None:
        case.setup(good_data, tmp_path)
    before = _tree(tmp_path)
    sweep_before = _tree(sweep_dir) if needs_sweep else None
    args = [
        a.format(tmp=tmp_path, good=good_data, sweep=sweep_dir, data=tmp_path / "data")
        for a in case.args
    ]
    proc = cli(case.module, *args)
    assert proc.returncode == case.code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    # What a command says on every run (predict's model line) is not part of the error.
    err = [ln for ln in lines(proc.stderr) if not ln.startswith("MODEL: ")]
    if case.stream == "stderr":
        assert len(err) == 1, err
        assert err[0].startswith("error: "), err
        for word in case.words:
            assert word in err[0], (word, err[0])
    else:  # the problems on stderr, the report's summary on stdout
        assert err, proc.stdout
        for word in case.words:
            assert any(word in ln for ln in err), (word, err)
            assert word not in proc.stdout, (word, proc.stdout)
        assert "SUMMARY: " in proc.stdout
    # Nothing left behind: no new file or directory, nothing changed.
    assert _tree(tmp_path) == before
    if needs_sweep:
        assert _tree(sweep_dir) == sweep_before


def test_data_check_refuses_what_the_sweep_refuses_in_its_words(good_data, tmp_path):
    one_volume(good_data, tmp_path)
    data = tmp_path / "data"
    swept = cli(SWEEP, TINY, W.format(tmp=tmp_path), *(a.format(tmp=tmp_path) for a in LITS))
    checked = cli(CHECK, str(data), "--no-progress")
    assert swept.returncode == 1 and checked.returncode == 1, (swept.stderr, checked.stderr)
    (line,) = [ln for ln in lines(swept.stderr) if ln.startswith("error: ")]
    assert "at least 3 volumes" in line
    assert lines(checked.stderr) == [line.removeprefix("error: ")]


def test_output_paths_are_checked_before_any_work(finished, good_data, tmp_path):
    a_volume_and_a_file(good_data, tmp_path)
    proc = cli(PREDICT, f"--workdir={finished}", f"{tmp_path}/ct.nii.gz", f"{tmp_path}/file/m.nii")
    assert proc.returncode == 1 and "MODEL: " not in proc.stderr, proc.stderr  # no inference
    assert lines(proc.stderr) == [
        f"error: {tmp_path}/file: not a directory (output {tmp_path}/file/m.nii)"
    ]
    proc = cli(SWEEP, TINY, "--workdir=/proc/x", "--progress=false")
    assert proc.returncode == 1 and "DATA: " not in proc.stderr, proc.stderr  # no data read
    assert lines(proc.stderr) == [
        "error: /proc/x: cannot create the workdir: /proc takes no new directories "
        "(a virtual file system?)"
    ]


def test_sigterm_during_the_imports_is_one_line(tmp_path):
    args = [sys.executable, "-m", SWEEP, TINY, f"--workdir={tmp_path}/w", "--progress=false"]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # importing JAX and the package takes seconds
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert lines(stderr) == ["interrupted (SIGTERM): while starting up; nothing was written"]
    assert not list(tmp_path.iterdir())


def test_the_table_is_large_enough():
    assert len(CASES) >= 30
    assert {c.module for c in CASES} == {SWEEP, REPORT, PREDICT, CHECK, PHANTOM, TFDS}


# ----------------------------------------------------------------------------------------------
# Recovery: every interrupted or damaged run resumes to the uninterrupted run's results.


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted run (the reference every recovery is compared with)."""
    workdir = tmp_path_factory.mktemp("finished") / "w"
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    return workdir


def assert_same_run(workdir: pathlib.Path, ref: pathlib.Path) -> None:
    for name in ("results.csv", "metrics.jsonl", "summary.md", "results_ensemble.csv"):
        assert (workdir / name).read_text() == (ref / name).read_text(), name
    a, b = np.load(workdir / "final_stats.npz"), np.load(ref / "final_stats.npz")
    for key in b.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    leftovers = [p for p in workdir.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers


def killed_after(ref: pathlib.Path, dest: pathlib.Path, epoch: int) -> pathlib.Path:
    """A copy of ``ref`` as a kill right after the checkpoint of ``epoch`` leaves it."""
    shutil.copytree(ref, dest)
    for e in range(epoch + 1, 4):
        shutil.rmtree(dest / "checkpoints" / str(e), ignore_errors=True)
    for name in OUTPUTS:
        (dest / name).unlink()
    return dest


def largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_flipped_bytes_and_a_stray_checkpoint_fall_back(finished, tmp_path):
    workdir = killed_after(finished, tmp_path / "w", 3)
    data = largest_data_file(workdir / "checkpoints" / "3")
    raw = bytearray(data.read_bytes())
    for i in range(16):
        raw[len(raw) // 3 + 5 * i] ^= 0x5A
    data.write_bytes(bytes(raw))
    (workdir / "checkpoints" / "4").mkdir()  # a stray, empty latest checkpoint
    # Orphans of killed writes: this module's, an earlier naming, an Orbax temporary directory.
    (workdir / ".tmp-0123456789ab-results.csv").write_text("x")
    (workdir / ".summary.md.k2j3.tmp").write_text("x")
    (workdir / "checkpoints" / "5.orbax-checkpoint-tmp-1").mkdir()
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in lines(proc.stderr) if ln.startswith("warning: ")]
    assert len(warnings) == 2, proc.stderr
    assert "checkpoints/4: " in warnings[0] and "corrupt_checkpoints" in warnings[0]
    assert "checkpoints/3: " in warnings[1]
    assert "does not match its checksum" in warnings[1] or "unreadable" in warnings[1]
    assert "RESUME: " in proc.stderr and "after epoch 2" in proc.stderr
    assert_same_run(workdir, finished)
    assert sorted(p.name for p in (workdir / "corrupt_checkpoints").iterdir()) == [
        "checkpoints-3",
        "checkpoints-4",
    ]


def test_truncated_checkpoint_and_torn_jsonl_line_recover(finished, tmp_path):
    workdir = killed_after(finished, tmp_path / "w", 3)
    data = largest_data_file(workdir / "checkpoints" / "3")
    data.write_bytes(data.read_bytes()[:50])
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "seed": 0, "split": "tr')  # torn by a full disk
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "checkpoints/3: unreadable" in proc.stderr
    assert f"warning: {workdir}/metrics.jsonl: dropped 1 unreadable line" in proc.stderr
    assert "after epoch 2" in proc.stderr
    assert_same_run(workdir, finished)


def test_rows_of_checkpointed_epochs_lost_to_torn_writes_are_restored(finished, tmp_path):
    workdir = killed_after(finished, tmp_path / "w", 2)  # checkpoint 1 pruned, 2 kept
    text = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert {json.loads(x)["epoch"] for x in text} == {1, 2, 3}
    text[1] = text[1][: len(text[1]) // 2] + "\n"  # a row of epoch 1 torn, mid-file
    del text[10]  # a row of epoch 2 lost
    (workdir / "metrics.jsonl").write_text("".join(text[:15]))  # and the file cut short
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "after epoch 2" in proc.stderr
    warning = f"warning: {workdir}/metrics.jsonl: dropped 1 unreadable line(s)"
    assert warning in proc.stderr and "restored 2 row(s) from the checkpoint" in proc.stderr
    assert_same_run(workdir, finished)  # metrics.jsonl byte for byte


def diskfull_cli(budget: int, pattern: str, *args: str) -> subprocess.CompletedProcess:
    prefix = ["-c", "import tests.diskfull as d; d.main()", str(budget), pattern]
    return cli(SWEEP, *args, prefix=prefix)


def test_disk_full_during_the_jsonl_append_and_a_checkpoint(finished, tmp_path):
    workdir = tmp_path / "w"
    per_epoch = len((finished / "metrics.jsonl").read_text()) // 3
    # metrics.jsonl is rewritten whole each epoch: epoch 1 fits, epoch 2 runs out of space.
    proc = diskfull_cli(per_epoch + per_epoch // 2, r"metrics\.jsonl", *RUN, f"--workdir={workdir}")
    assert proc.returncode == 1, proc.stderr
    err = [ln for ln in lines(proc.stderr) if not ln.startswith(("DATA: ", "LAYOUT: "))]
    assert err == [f"error: {workdir}/metrics.jsonl: No space left on device"]
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in rows} == {1}  # the previous file, intact
    assert not list(workdir.glob(".tmp-*"))
    # The rerun resumes; now the disk fills 100 bytes into the checkpoint of epoch 3.
    proc = diskfull_cli(100, r"/checkpoints/3[./]", *RUN, f"--workdir={workdir}")
    assert proc.returncode == 1, proc.stderr
    err = [ln for ln in lines(proc.stderr) if not ln.startswith(("DATA: ", "LAYOUT: ", "RESUME: "))]
    assert len(err) == 1 and err[0].startswith(f"error: {workdir}/checkpoints/3: "), err
    assert "No space left on device" in err[0]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir())[:2] == ["1", "2"]
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "after epoch 2" in proc.stderr
    assert_same_run(workdir, finished)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed run says besides its progress lines."""
    assert "Traceback" not in proc.stderr, proc.stderr
    said = [
        ln for ln in lines(proc.stderr) if not ln.startswith(("DATA: ", "LAYOUT: ", "RESUME: "))
    ]
    assert len(said) == 1 and said[0].startswith("error: "), said
    return said[0]


def test_disk_full_in_the_tensorboard_writer_thread_is_one_line(finished, tmp_path):
    workdir = tmp_path / "w"
    # tensorboardX writes its events from a thread: the budget runs out there, not in the sweep.
    proc = diskfull_cli(300, r"/tensorboard/", *RUN, f"--workdir={workdir}")
    assert proc.returncode == 1, proc.stderr
    line = _one_error(proc)
    # Which run's writer meets the full disk first (a seed's or the mean's) is the threads' timing.
    board = rf"error: {re.escape(str(workdir))}/tensorboard/(seed_\d+|mean): "
    assert re.match(board + "could not write the TensorBoard events", line), line
    assert "No space left on device" in line
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert_same_run(workdir, finished)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount of a given size (``small_disk(size)``, remountable); skipped where this
    process may not mount one (not root, or no CAP_SYS_ADMIN in a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def sized(size: str) -> pathlib.Path:
        opts = f"size={size}" + (",remount" if os.path.ismount(mount) else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        return mount

    yield sized
    if os.path.ismount(mount):
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_wherever_it_fills(finished, small_disk):
    # Sizes at which this run's workdir fills in the TensorBoard events, the first checkpoint
    # and the second one (where Orbax's threads and tensorboardX's atexit used to print
    # hundreds of lines of tracebacks around the error).
    where = {"12k": "/tensorboard/seed_00: ", "40k": "/checkpoints/1: ", "240k": "/checkpoints/2: "}
    for size, path in where.items():
        disk = small_disk(size)
        shutil.rmtree(disk / "w", ignore_errors=True)
        proc = cli(SWEEP, *RUN, f"--workdir={disk}/w")
        assert proc.returncode == 1, proc.stderr
        line = _one_error(proc)
        assert line.startswith(f"error: {disk}/w{path}") and "No space left on device" in line
        if "checkpoints" in path:  # how much was needed, and what was free
            assert "a checkpoint takes about " in line and " were free" in line, line
    disk = small_disk("16m")  # the disk grows: the same command resumes and finishes
    proc = cli(SWEEP, *RUN, f"--workdir={disk}/w")
    assert proc.returncode == 0, proc.stderr
    assert "after epoch 1" in proc.stderr
    assert_same_run(disk / "w", finished)


def test_sigterm_checkpoints_and_resumes_bit_identically(finished, tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", SWEEP, *RUN, f"--workdir={workdir}"]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (workdir / "checkpoints" / "1").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    last = lines(stderr)[-1]
    assert last.startswith("interrupted (SIGTERM): checkpoint") and "resume" in last, stderr
    assert len([ln for ln in lines(stderr) if not ln.startswith(("DATA: ", "LAYOUT: "))]) == 1, (
        stderr
    )
    rerun = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert rerun.returncode == 0, rerun.stderr
    assert "RESUME: " in rerun.stderr
    assert_same_run(workdir, finished)


def test_sigint_before_training_is_one_line(tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", SWEEP, *RUN, f"--workdir={workdir}"]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (workdir / "config.json").exists():  # data read, compiling
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert lines(stderr)[-1].startswith("interrupted (SIGINT): "), stderr


class StopAfter(errors.StopSignals):
    """A SIGTERM that arrives after ``checks`` safe points (no real signal needed)."""

    def __init__(self, checks: int):
        super().__init__()
        self.checks = checks

    @property
    def requested(self) -> bool:
        self.checks -= 1
        if self.checks < 0 and self.deferring:
            self.signum = signal.SIGTERM
        return self.signum is not None


def test_stop_in_mid_epoch_resumes_bit_identically(finished, tmp_path):
    from conftest import load_config

    from cmseg_jax import sweep

    config = load_config("configs/cam_beta.py:tiny")
    config.train.epochs, config.train.steps_per_call = 3, 2
    config.eval.without_smoothing = False
    workdir = tmp_path / "w"
    # Safe points: 1 before training, then 2 calls + 1 checkpoint per epoch; the 5th is
    # mid-way through epoch 2.
    with pytest.raises(errors.Interrupted, match="in epoch 2 after step 2 of 4"):
        sweep.run(config, workdir, [0, 1], progress=False, stop=StopAfter(4))
    assert (workdir / "interrupted").is_dir()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
    sweep.run(config, workdir, [0, 1], progress=False)
    assert not (workdir / "interrupted").exists()
    assert_same_run(workdir, finished)


def test_flipped_bytes_never_restore_silently(tmp_path):
    from cmseg_jax.checkpoint import Checkpointer, CorruptCheckpoint

    rng = np.random.default_rng(0)
    state = {"w": rng.normal(size=(2, 3000)).astype(np.float32), "n": np.arange(2)}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state)
    data = largest_data_file(tmp_path / "checkpoints" / "1")
    clean = data.read_bytes()
    outcomes = set()
    for start in range(64, len(clean) - 64, max(1, len(clean) // 16)):
        raw = bytearray(clean)
        for i in range(16):
            raw[start + i] ^= 0xA5
        data.write_bytes(bytes(raw))
        try:
            ckpt.restore(1, state)
            outcomes.add("restored")
        except CorruptCheckpoint as e:
            outcomes.add("checksum" if "does not match its checksum" in str(e) else "unreadable")
        ckpt._reopen()
    data.write_bytes(clean)
    np.testing.assert_array_equal(ckpt.restore(1, state)["w"], state["w"])
    ckpt.close()
    # Some flips still decode (to wrong values): only the checksums catch those.
    assert "checksum" in outcomes and "restored" not in outcomes, outcomes


def test_every_checkpoint_records_its_checksums(finished):
    from cmseg_jax.checkpoint import CHECKSUM_KEY

    meta = json.loads((finished / "checkpoints" / "3" / "_CHECKPOINT_METADATA").read_text())
    digests = meta["custom_metadata"][CHECKSUM_KEY]
    assert len(digests) > 10 and all(len(v) == 64 for v in digests.values())


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path):
    from cmseg_jax.workdir import check_same_run as _check_workdir

    # A workdir whose run never trained (e.g. written by a start that failed on its data).
    (tmp_path / "config.json").write_text(json.dumps({"seeds": [0], "data": {"dir": "/bad"}}))
    _check_workdir(tmp_path, {"seeds": [0], "data": {"dir": "/good"}})
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # once it trained, it is protected
    with pytest.raises(errors.UsageError, match="different settings"):
        _check_workdir(tmp_path, {"seeds": [0], "data": {"dir": "/good"}})


def test_outputs_respect_the_umask(tmp_path):
    from cmseg_jax import io_utils

    old = os.umask(0o027)
    try:
        io_utils.write_text(tmp_path / "a.txt", "x")
        io_utils.write_npz(tmp_path / "b.npz", x=np.zeros(2))
    finally:
        os.umask(old)
    for name in ("a.txt", "b.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


def test_gzip_stream_is_verified(tmp_path):
    from cmseg_jax.data import nifti

    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"a" * 10000))
    nifti.verify_gzip(path)
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF  # the CRC-32 in the trailer
    path.write_bytes(bytes(raw))
    with pytest.raises(nifti.DataError, match="corrupt gzip stream"):
        nifti.verify_gzip(path)


# ----------------------------------------------------------------------------------------------
# One writer per workdir.


def _lock_refusal(stderr: str, pid: int | None = None) -> str:
    err = lines(stderr)
    assert len(err) == 1, stderr
    assert err[0].startswith("error: ") and "in use by another sweep" in err[0], err
    assert "started " in err[0] and (pid is None or f"pid {pid} on " in err[0]), err
    return err[0]


def test_two_sweeps_started_together_one_runs(finished, tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", SWEEP, *RUN, f"--workdir={workdir}"]
    procs = [subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, errs)
    winner = codes.index(0)
    _lock_refusal(errs[1 - winner], procs[winner].pid)
    assert_same_run(workdir, finished)
    assert not (workdir / "lock").exists()


def test_a_held_workdir_refuses_and_a_killed_holder_frees_it(finished, good_data, tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "-m", SWEEP, *RUN, f"--workdir={workdir}"]
    holder = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not (workdir / "checkpoints" / "1").exists():
            assert time.time() < deadline and holder.poll() is None
            time.sleep(0.05)
        holder.send_signal(signal.SIGSTOP)  # it holds the lock, and stays at epoch 1 or 2
        proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
        assert proc.returncode == 2, proc.stderr
        _lock_refusal(proc.stderr, holder.pid)
        # Readers may read it; they say it is being written.
        proc = cli(REPORT, str(workdir), f"--out={tmp_path}/r")
        assert proc.returncode == 0, proc.stderr
        assert f"in progress: a sweep is writing it (pid {holder.pid} " in proc.stderr
        assert "in progress" in (tmp_path / "r" / "report.md").read_text()
        some_volume(good_data, tmp_path)
        proc = cli(PREDICT, f"--workdir={workdir}", *(c.format(tmp=tmp_path) for c in CT))
        assert proc.returncode == 0, proc.stderr
        assert f"in progress, a sweep is writing it (pid {holder.pid} " in proc.stderr
    finally:
        holder.kill()  # kill -9: the kernel drops its lock, the file stays
        holder.wait()
    from cmseg_jax import workdir_lock

    assert (workdir / "lock").exists() and workdir_lock.holder(workdir) is None
    proc = cli(SWEEP, *RUN, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "RESUME: " in proc.stderr
    assert_same_run(workdir, finished)
    assert not (workdir / "lock").exists()
