"""The sweep through its real CLI: every config end to end, seed equivalence, resume, dry run."""

import csv
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmseg_jax import xla_flags
from cmseg_jax.checkpoint import Checkpointer
from cmseg_jax.results import RESULT_METRICS
from cmseg_jax.sweep import over_seeds, resolve_seeds
from cmseg_jax.sweep.layout import _call_lengths
from cmseg_jax.workdir import check_same_run as _check_workdir

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


def run_cli(*args, check=True, devices=None):
    env = dict(os.environ)
    if devices:  # that many CPU devices in the subprocess: the seed axis is sharded over them
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}"
        env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "cmseg_jax.sweep", *args, "--progress=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_results(workdir):
    with open(pathlib.Path(workdir) / "results.csv") as f:
        return list(csv.DictReader(f))


def test_legacy_checkpoint_resumes_with_identical_results(tmp_path):
    # A finished 1-epoch workdir written before the mixer layers became one scan: its checkpoint
    # is mapped onto the new layout and evaluates to the results it had.
    legacy = ROOT / "tests" / "data" / "legacy_cam_beta_tiny"
    workdir = tmp_path / "legacy"
    shutil.copytree(legacy, workdir)
    proc = run_cli(
        "--config=configs/cam_beta.py:tiny",
        "--num_seeds=2",
        f"--workdir={workdir}",
        "--config.train.epochs=1",
    )
    assert "after epoch 1" in proc.stderr
    assert read_results(workdir) == read_results(legacy)


def test_the_thesis_configs_exist():
    # Its seven ConvMixerSeg experiments and the FCN-ResNet-50 baseline, and full supervision with
    # the MCC loss the thesis discusses.
    assert CONFIGS == sorted(
        [
            "fcn_resnet50",
            "full_ce",
            "full_mcc",
            "cam_beta",
            "cam_alpha",
            "ablation_no_gs",
            "ablation_no_gs_bilinear",
            "ablation_no_res",
            "ablation_no_aug",
        ]
    )


# full_ce and cam_beta have tests of their own, fcn_resnet50 and full_mcc too (tests/test_fcn.py,
# tests/test_mcc_loss.py).
# The ablations differ from their parent configs by one model or data field each: their whole
# runs are in the slow run.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(c, marks=pytest.mark.slow) if c.startswith("ablation_") else c
        for c in CONFIGS
        if c not in ("full_ce", "cam_beta", "fcn_resnet50", "full_mcc")
    ],
)
def test_tiny_sweep_end_to_end(name, tmp_path):
    proc = run_cli(f"--config=configs/{name}.py:tiny", "--num_seeds=2", f"--workdir={tmp_path}")
    _check_outputs(tmp_path, seeds=[0, 1], epochs=2)
    assert "SYNTHETIC embedded CT phantom" in proc.stderr  # the data used is said loudly
    # The seed layout the sweep chose by itself, and why: one seed per chunk on a CPU.
    assert "LAYOUT: 2 seeds (padded to 2) over 1 device(s), 1 per chunk" in proc.stderr
    assert "lax.map over 2 chunks; map)" in proc.stderr
    assert "| MCC |" in proc.stdout
    # The XLA flags the backend started with: the sweep's defaults (none are on), then ours.
    flags, defaults = xla_flags.compose(os.environ.get("XLA_FLAGS"), xla_flags.CPU_DEFAULTS)
    assert f"XLA: flags {flags or '(none)'} " in proc.stderr
    xla = json.loads((tmp_path / "run.json").read_text())["xla"]
    assert xla["flags"] == flags and xla["defaults"] == defaults and not xla["backend_started"]


def _check_outputs(workdir, seeds, epochs):
    workdir = pathlib.Path(workdir)
    config = json.loads((workdir / "config.json").read_text())
    assert config["seeds"] == seeds
    rows = read_results(workdir)
    assert len(rows) == len(seeds) * 3 * len(RESULT_METRICS)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert {r["metric"] for r in rows} == set(RESULT_METRICS)
    values = np.array([float(r["value"]) for r in rows])
    assert np.all(np.isfinite(values)) and np.all(values >= -1) and np.all(values <= 1)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == epochs * len(seeds) * 3
    assert [x["epoch"] for x in lines[:: 3 * len(seeds)]] == list(range(1, epochs + 1))
    stats = np.load(workdir / "final_stats.npz")
    assert stats["confusion"].shape == (len(seeds), 3, 4)
    # Every pixel of every split lands in exactly one histogram bin.
    np.testing.assert_array_equal(
        stats["hist_liver"].sum(-1) + stats["hist_background"].sum(-1), stats["confusion"].sum(-1)
    )
    examples = np.load(workdir / "examples.npz")
    assert examples["scores"].shape[0] == 3
    run = json.loads((workdir / "run.json").read_text())
    assert run["epochs_completed"] == epochs
    summary = (workdir / "summary.md").read_text()
    assert "± " in summary and "| Testing |" in summary
    assert Checkpointer(workdir).latest_epoch() == epochs


@pytest.fixture(scope="module")
def full_three_seeds(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full3")
    # All three seeds in one vmap (not the CPU's default lax.map over seeds), the layout the
    # sharded runs below are compared with bit for bit.
    run_cli(
        "--config=configs/full_ce.py:tiny",
        "--num_seeds=3",
        f"--workdir={workdir}",
        "--config.train.seed_layout=vmap",
    )
    return workdir


def test_full_ce_end_to_end(full_three_seeds):
    _check_outputs(full_three_seeds, seeds=[0, 1, 2], epochs=2)


def test_seed_of_a_sweep_equals_the_seed_alone(full_three_seeds, tmp_path):
    run_cli("--config=configs/full_ce.py:tiny", "--seeds=1", f"--workdir={tmp_path}")
    alone = [r for r in read_results(tmp_path)]
    in_sweep = [r for r in read_results(full_three_seeds) if r["seed"] == "1"]
    assert alone == in_sweep  # to the last printed digit
    a = np.load(tmp_path / "final_stats.npz")
    b = np.load(full_three_seeds / "final_stats.npz")
    np.testing.assert_array_equal(a["confusion"][0], b["confusion"][1])
    np.testing.assert_array_equal(a["hist_liver"][0], b["hist_liver"][1])


def test_seed_chunks_equal_one_vmap(full_three_seeds, tmp_path):
    # 3 seeds in chunks of 2 (padded to 4, lax.map over chunks) give the same numbers.
    run_cli(
        "--config=configs/full_ce.py:tiny",
        "--num_seeds=3",
        f"--workdir={tmp_path}",
        "--config.train.seed_chunk=2",
        "--config.train.steps_per_call=3",
    )
    got = {(r["seed"], r["split"], r["metric"]): float(r["value"]) for r in read_results(tmp_path)}
    ref = {
        (r["seed"], r["split"], r["metric"]): float(r["value"])
        for r in read_results(full_three_seeds)
    }
    assert got.keys() == ref.keys()
    np.testing.assert_allclose(list(got.values()), list(ref.values()), atol=1e-4)


def _assert_same_results(workdir, ref, exact=True):
    got, want = read_results(workdir), read_results(ref)
    if exact:
        assert got == want  # to the last printed digit
    else:
        assert [(r["seed"], r["split"], r["metric"]) for r in got] == [
            (r["seed"], r["split"], r["metric"]) for r in want
        ]
        values = [[float(r["value"]) for r in rows] for rows in (got, want)]
        np.testing.assert_allclose(*values, atol=1e-4)


def test_seeds_sharded_over_four_devices_equal_one_device(full_three_seeds, tmp_path):
    # 3 seeds padded to 4, one per device on a 4-device mesh (axis 'seed').
    proc = run_cli(
        "--config=configs/full_ce.py:tiny", "--num_seeds=3", f"--workdir={tmp_path}", devices=4
    )
    assert "DEVICES: 3 seeds (padded to 4) over 4 devices" in proc.stderr
    _check_outputs(tmp_path, seeds=[0, 1, 2], epochs=2)
    xla = json.loads((tmp_path / "run.json").read_text())["xla"]
    assert "--xla_force_host_platform_device_count=4" in xla["flags"].split()
    _assert_same_results(tmp_path, full_three_seeds)
    a, b = np.load(tmp_path / "final_stats.npz"), np.load(full_three_seeds / "final_stats.npz")
    for key in ("confusion", "cls_confusion"):
        np.testing.assert_array_equal(a[key], b[key])
    # The per-device program is partitioned differently from the one-device vmap; float32
    # rounding can move a pixel's score across a histogram bin edge (seen: 1 pixel of 16,384),
    # never change a count.
    for key in ("hist_liver", "hist_background"):
        np.testing.assert_array_equal(a[key].sum(-1), b[key].sum(-1))
        np.testing.assert_allclose(np.cumsum(a[key], -1), np.cumsum(b[key], -1), atol=2)


def test_sharded_chunks_and_resume_on_another_device_count(full_three_seeds, tmp_path):
    # 2 devices x chunks of 1 seed: 3 seeds padded to 4, two chunks per device (lax.map).
    chunked = tmp_path / "chunked"
    args = ["--config=configs/full_ce.py:tiny", "--num_seeds=3", "--config.train.seed_chunk=1"]
    proc = run_cli(*args, f"--workdir={chunked}", devices=2)
    assert "DEVICES: 3 seeds (padded to 4) over 2 devices" in proc.stderr
    _assert_same_results(chunked, full_three_seeds, exact=False)
    # A checkpoint does not depend on the mesh: stop a 1-device run after epoch 1 and finish it
    # on 4 devices.
    resumed = tmp_path / "resumed"
    shutil.copytree(full_three_seeds, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")
    for name in ("results.csv", "summary.md", "final_stats.npz", "run.json", "examples.npz"):
        (resumed / name).unlink()
    proc = run_cli(
        "--config=configs/full_ce.py:tiny", "--num_seeds=3", f"--workdir={resumed}", devices=4
    )
    assert "after epoch 1" in proc.stderr and "over 4 devices" in proc.stderr
    _assert_same_results(resumed, full_three_seeds)
    # Per-epoch logs agree to float32 rounding: the loss sums come from differently
    # partitioned programs (on one device count a resume is bit-identical, tested below).
    got, want = (
        [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]
        for w in (resumed, full_three_seeds)
    )
    assert [r.keys() for r in got] == [r.keys() for r in want]
    for a, b in zip(got, want, strict=True):
        for key, value in b.items():
            if isinstance(value, float):
                np.testing.assert_allclose(a[key], value, rtol=1e-6, err_msg=key)
            else:
                assert a[key] == value, key


def test_resume_after_a_kill_gives_identical_results(tmp_path):
    done = tmp_path / "done"
    args = ["--config=configs/cam_beta.py:tiny", "--num_seeds=2"]
    run_cli(*args, f"--workdir={done}")
    _check_outputs(done, seeds=[0, 1], epochs=2)
    # Simulate a kill after epoch 1 was checkpointed and epoch 2 was half logged.
    killed = tmp_path / "killed"
    shutil.copytree(done, killed)
    shutil.rmtree(killed / "checkpoints" / "2")
    for name in ("results.csv", "summary.md", "final_stats.npz", "run.json", "examples.npz"):
        (killed / name).unlink()
    proc = run_cli(*args, f"--workdir={killed}")
    assert "RESUME" in proc.stderr and "after epoch 1" in proc.stderr
    assert read_results(killed) == read_results(done)
    assert (killed / "metrics.jsonl").read_text() == (done / "metrics.jsonl").read_text()
    # A finished workdir re-run does not train again and reproduces its results.
    again = run_cli(*args, f"--workdir={done}")
    assert "after epoch 2" in again.stderr
    assert read_results(done) == read_results(killed)


def test_workdir_refuses_a_different_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"seeds": [0], "name": "other"}))
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # that run trained an epoch
    proc = run_cli(
        "--config=configs/cam_beta.py:tiny", "--num_seeds=1", f"--workdir={tmp_path}", check=False
    )
    assert proc.returncode == 2
    assert "different settings" in proc.stderr


def test_workdir_accepts_fields_added_to_the_config_later(tmp_path):
    older = {"seeds": [0], "name": "x", "data": {"dir": ""}, "train": {"epochs": 2}}
    record = older | {"data": {"dir": "", "tfds_dir": ""}}
    (tmp_path / "config.json").write_text(json.dumps(older))
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    _check_workdir(tmp_path, record)  # data.tfds_dir is new, at its default: same run
    for changed in ({"data": {"dir": "", "tfds_dir": "/elsewhere"}}, {"train": {"epochs": 3}}):
        with pytest.raises(ValueError, match="different settings"):
            _check_workdir(tmp_path, record | changed)


def _planned(proc):
    assert "ensemble_bytes_per_device: " in proc.stdout  # the final ensemble's memory is stated
    line = [x for x in proc.stdout.splitlines() if x.startswith("estimated_device_bytes:")][0]
    gib = float(line.split()[1])
    per_chunk = int(line.split(" per chunk")[0].rsplit(" ", 1)[1])
    return gib, per_chunk


def test_dry_run_plans_the_headline_sweep_for_an_80gb_gpu():
    proc = run_cli(
        "--config=configs/cam_beta.py",
        "--dry_run",
        "--num_seeds=48",
        "--config.train.memory_budget_gb=80",
    )
    assert "params: 3024374" in proc.stdout.splitlines()
    assert "flops_per_seed_step:" in proc.stdout
    for field in ("flops_per_seed_step", "bytes_per_seed_step", "temp_bytes_per_seed_step"):
        line = [x for x in proc.stdout.splitlines() if x.startswith(f"{field}:")][0]
        value = float(line.split()[1])
        assert math.isfinite(value) and value > 0, line
    gib, per_chunk = _planned(proc)
    assert gib <= 80 and per_chunk >= 12, proc.stdout
    # Chunks are balanced: 48 seeds run as equal chunks, none padded.
    assert "(48 seeds padded to 48 over 1 devices" in proc.stdout


@pytest.mark.slow  # a thesis-size plan compiled by XLA:CPU; the f32 one runs by default
def test_dry_run_bfloat16_puts_a_dozen_seeds_in_a_chunk():
    proc = run_cli(
        "--config=configs/cam_beta.py",
        "--dry_run",
        "--num_seeds=48",
        "--config.train.memory_budget_gb=80",
        "--config.model.dtype=bfloat16",
    )
    gib, per_chunk = _planned(proc)
    assert gib <= 80 and per_chunk >= 12, proc.stdout


def test_layout_planner(monkeypatch):
    from cmseg_jax import sweep
    from tests.conftest import load_config

    config = load_config("configs/cam_beta.py:tiny")
    gib = 2**30
    # The planner's arithmetic on a modelled step: 1 GiB of state plus 2 GiB per vmapped seed
    # (the real compile behind it is exercised by the dry-run tests above).
    compiled = []

    def fake_step_bytes(config, trainer, layout, n, quiet=False):
        chunk = layout.chunk if 0 < layout.chunk < n else n
        compiled.append(chunk)
        extra = gib if chunk >= 12 else 0  # grows faster than a straight line would say
        return gib + 2 * gib * chunk + extra

    monkeypatch.setattr(sweep.plan, "step_bytes", fake_step_bytes)
    # On a CPU with no budget: one seed per chunk (lax.map over seeds).
    plan = sweep.plan_layout(config, None, 5, data_bytes=0)
    assert (plan.mode, plan.chunk, plan.padded) == ("map", 1, 5)
    # Room for 3.5 seeds: chunks of 3, balanced (5 seeds -> 2 chunks of 3, one padded seed),
    # found by bisection over the balanced chunkings 1, 2, 3, 5 of the compiled chunk itself.
    config.train.seed_layout = "vmap"
    config.train.memory_budget_gb = 8.0 / sweep.HEADROOM
    compiled.clear()
    plan = sweep.plan_layout(config, None, 5, data_bytes=0)
    assert (plan.chunk, plan.padded, plan.program_bytes) == (3, 6, 7 * gib), plan
    assert compiled == [5, 1, 2, 3]
    # 48 seeds that fit 13 at a time run as 4 chunks of 12, not 13 + 13 + 13 + 9 padded; the
    # data take their share of the budget.
    config.train.memory_budget_gb = (1 + 2 * 13 + 1 + 0.5) / sweep.HEADROOM
    plan = sweep.plan_layout(config, None, 48, data_bytes=gib)
    assert (plan.chunk, plan.padded) == (12, 48), plan
    # Where the step grows faster than a line, the measured chunk decides: 12 seeds do not fit
    # 1 + 2 * 12 + 1 GiB next to 1 GiB of data; 6 (two chunks of 6) do.
    config.train.memory_budget_gb = (1 + 2 * 12 + 1) / sweep.HEADROOM
    compiled.clear()
    plan = sweep.plan_layout(config, None, 12, data_bytes=gib)
    assert plan.chunk == 6 and compiled == [12, 1, 3, 4, 6], (plan, compiled)
    # The data are counted once: 4 seeds' 9 GiB next to 3 GiB of data fill 12 GiB exactly.
    config.train.memory_budget_gb = 12.0 / sweep.HEADROOM
    assert sweep.plan_layout(config, None, 4, data_bytes=3 * gib).chunk == 4
    # An explicit chunk wins.
    config.train.seed_chunk = 2
    assert sweep.plan_layout(config, None, 5, data_bytes=0).chunk == 2
    # Nothing fits: one line naming the budget and what to change.
    config.train.seed_chunk = 0
    config.train.memory_budget_gb = 1.0
    with pytest.raises(ValueError, match="budget .*model.dtype=bfloat16"):
        sweep.plan_layout(config, None, 5, data_bytes=0)


def test_dry_run_compiles_the_sharded_sweep_ahead_of_time():
    proc = run_cli(
        "--config=configs/cam_beta.py:tiny",
        "--dry_run",
        "--num_seeds=6",
        "--config.train.seed_chunk=1",
        devices=4,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("estimated_device_bytes:")][0]
    assert "(6 seeds padded to 8 over 4 devices, 1 per chunk; compiled sweep step" in line


def test_checkpoint_round_trip(tmp_path):
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray([3, 3], jnp.int32)}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state)
    ckpt.save(2, jax.tree_util.tree_map(lambda x: x + 1, state))
    assert ckpt.latest_epoch() == 2
    restored = ckpt.restore(1, state)
    for a, b in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ckpt.close()


def test_resolve_seeds():
    assert resolve_seeds(None, "3,7", 8) == [3, 7]
    assert resolve_seeds(4, None, 8) == [0, 1, 2, 3]
    assert resolve_seeds(None, None, 2) == [0, 1]
    for bad in ("3,3", "a", "-1"):
        with pytest.raises(ValueError):
            resolve_seeds(None, bad, 8)
    with pytest.raises(ValueError):
        resolve_seeds(2, "1", 8)


def test_over_seeds_chunks_equal_vmap():
    fn = lambda s, k: {"y": s["x"] * k + jnp.sum(s["x"])}  # noqa: E731
    states = {"x": jnp.arange(12.0).reshape(6, 2)}
    ref = over_seeds(fn, 0)(states, 3.0)
    for chunk in (1, 2, 3):
        np.testing.assert_array_equal(over_seeds(fn, chunk)(states, 3.0)["y"], ref["y"])


def test_call_lengths_cover_the_epoch():
    assert _call_lengths(10, 0) == [10]
    assert _call_lengths(10, 4) == [4, 4, 2]
    assert sum(_call_lengths(97, 8)) == 97


def test_run_checks_the_image_size_before_deriving_the_gaussian(tmp_path):
    # The library entry, not only the CLI: σ and K derive from data.image_size, so a bad size is
    # named as itself, before anything is read or written.
    from cmseg_jax import errors, sweep
    from tests.conftest import load_config

    config = load_config("configs/cam_beta.py:tiny,data.image_size=0")
    with pytest.raises(errors.UsageError, match=r"config\.data\.image_size"):
        sweep.run(config, tmp_path / "w", [0], progress=False)
    assert not (tmp_path / "w").exists()
