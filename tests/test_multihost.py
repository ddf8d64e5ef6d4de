"""One sweep over two JAX processes (jax.distributed on localhost, CPU collectives, 2 devices
each) equals the single-process sweep; the process start-up's own checks."""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from cmseg_jax import distributed, errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARGS = ["--config=configs/cam_beta.py:tiny", "--num_seeds=4", "--progress=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def sweep_pair(workdir, devices_per_process=2):
    """The sweep's CLI as two processes of one run, both on ``workdir``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flag = f"--xla_force_host_platform_device_count={devices_per_process}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}"
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cmseg_jax.sweep",
                *ARGS,
                f"--workdir={workdir}",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"process failed ({p.returncode}):\n{out}\n{err}"
    return outs


def values(workdir):
    with open(workdir / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # three sweeps, two of them as two processes: minutes
def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "cmseg_jax.sweep", *ARGS, f"--workdir={one}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    (out0, err0), (out1, err1) = sweep_pair(two)
    assert "PROCESS: 0 of 2, 2 local cpu device(s) of 4" in err0
    assert "PROCESS: 1 of 2, 2 local cpu device(s) of 4" in err1
    assert "DEVICES: 4 seeds (padded to 4) over 4 devices" in err1  # one mesh over both
    # Only process 0 reports and writes.
    assert "| MCC |" in out0 and "| MCC |" not in out1
    # results.csv is byte-equal to the one-device run: the same confusion counts, the same
    # printed metrics.
    assert (two / "results.csv").read_bytes() == (one / "results.csv").read_bytes()
    a, b = np.load(one / "final_stats.npz"), np.load(two / "final_stats.npz")
    for key in ("seeds", "confusion", "cls_confusion"):
        np.testing.assert_array_equal(a[key], b[key])
    # Losses are sums reduced by differently partitioned programs (1 device vs 4): float32
    # rounding, nothing more; every count is equal.
    rows = [
        [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()] for w in (one, two)
    ]
    assert len(rows[0]) == len(rows[1]) == 2 * 4 * 3
    for r1, r2 in zip(*rows, strict=True):
        assert r1.keys() == r2.keys()
        for key, value in r1.items():
            if isinstance(value, float):
                np.testing.assert_allclose(r2[key], value, rtol=1e-6, err_msg=key)
            else:
                assert r2[key] == value, key
    # The checkpoints hold the real seeds only, whatever the mesh: one layout for both.
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["1", "2"]
    assert json.loads((two / "config.json").read_text())["seeds"] == [0, 1, 2, 3]
    assert sorted(p.name for p in (two / "tensorboard").iterdir()) == sorted(
        p.name for p in (one / "tensorboard").iterdir()
    )


def test_launcher_is_read_from_the_environment():
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "node[01-02]",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
    }
    assert distributed.launcher(slurm) == "slurm"
    assert distributed.launcher(slurm | {"SLURM_NTASKS": "1"}) is None  # one task: one process
    assert distributed.launcher({"SLURM_JOB_ID": "7"}) is None  # sbatch script, not srun
    assert distributed.launcher({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_MCA_orte_hnp_uri": "x"})
    assert distributed.launcher({}) is None
    # No launcher, no flags: a single process, JAX untouched.
    assert distributed.initialize("auto", environ={}) is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distributed": "off", "process_id": 1}, "--process_id needs --distributed"),
        ({"num_processes": 2, "process_id": 2}, r"--process_id=2: must be in 0 \.\. 1"),
        ({"num_processes": 0}, "--num_processes=0: must be >= 1"),
        ({"distributed": "sometimes"}, "--distributed=sometimes: must be one of"),
    ],
)
def test_bad_process_flags_are_one_line_usage_errors(kwargs, message):
    with pytest.raises(errors.UsageError, match=message):
        distributed.initialize(**kwargs, environ={})
