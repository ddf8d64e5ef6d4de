"""A sweep started without --workdir: runs/<config.name> under the current directory."""

import os
import pathlib
import subprocess
import sys

import pytest

from cmseg_jax import errors
from cmseg_jax.sweep import default_workdir
from tests.conftest import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_headline_command_runs_without_workdir_and_resumes(tmp_path):
    args = [
        sys.executable,
        "-m",
        "cmseg_jax.sweep",
        f"--config={ROOT}/configs/cam_beta.py:tiny",
        "--num_seeds=3",
        "--progress=false",
    ]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    workdir = tmp_path / "runs" / "cam_beta"
    assert "WORKDIR: --workdir not given, using runs/cam_beta" in first.stderr
    assert f"wrote runs{os.sep}cam_beta in" in first.stdout
    results = (workdir / "results.csv").read_text()
    assert len(results.splitlines()) == 1 + 3 * 3 * 12
    second = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "RESUME: runs/cam_beta after epoch 2" in second.stderr  # finished: not trained again
    assert (workdir / "results.csv").read_text() == results


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_a_config_name_that_is_no_directory_name_asks_for_workdir(name):
    config = load_config("configs/cam_beta.py:tiny")
    config.name = name
    with pytest.raises(errors.UsageError, match="config.name=.*give --workdir"):
        default_workdir(config)
