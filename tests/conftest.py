"""Shared fixtures: a private data cache, the tiny configs and a real tiny sweep."""

import os
import pathlib
import subprocess
import sys

import pytest

# The tests check behaviour and equalities, not speed: XLA:CPU's LLVM backend at optimisation
# level 0 compiles about a quarter faster, and most of a test's time is compiling. Both sides of
# every equality test are compiled alike; CLI subprocesses inherit the setting.
os.environ["XLA_FLAGS"] = " ".join(
    (os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0")
).strip()

from cmseg_jax.config_base import load_config_file  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def whole_epoch(trainer):
    """(state, split, class_weights, epoch) -> one whole epoch of ``trainer.train_steps``."""

    def epoch_fn(state, split, class_weights, epoch):
        return trainer.train_steps(
            state, split, class_weights, epoch, 0, length=trainer.steps_per_epoch
        )

    return epoch_fn


def load_config(spec: str):
    """Loads ``configs/<name>.py[:variant]`` the way ``--config`` does."""
    return load_config_file(spec, ROOT)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Every test (and every CLI subprocess it starts) caches generated data in one temp dir."""
    path = tmp_path_factory.getbasetemp().parent / "cmseg_cache"
    path.mkdir(exist_ok=True)
    old = os.environ.get("CMSEG_CACHE")
    os.environ["CMSEG_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CMSEG_CACHE", None)
    else:
        os.environ["CMSEG_CACHE"] = old


@pytest.fixture(scope="session")
def cli_env(data_cache) -> dict:
    """Environment of a CLI subprocess: CPU, data and compiled programs cached in $CMSEG_CACHE."""
    return dict(
        os.environ,
        CMSEG_CACHE=str(data_cache),
        JAX_COMPILATION_CACHE_DIR=str(data_cache / "jax_compilation_cache"),
        JAX_PLATFORMS="cpu",
    )


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, cli_env):
    """A real 2-seed cam_beta:tiny sweep, trained through the CLI.

    Its phantom data and JAX's persistent compilation cache live under ``$CMSEG_CACHE``
    (:func:`data_cache`: a pytest temp dir that outlives one session): compiling the training
    step dominates a cold run (over a minute on two busy cores); a warm run takes ~15 s. Shared
    by the predict and report tests.
    """
    workdir = tmp_path_factory.mktemp("sweep") / "run"
    cmd = [
        sys.executable,
        "-m",
        "cmseg_jax.sweep",
        "--config",
        "configs/cam_beta.py:tiny",
        "--num_seeds",
        "2",
        "--workdir",
        str(workdir),
        "--progress=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir
