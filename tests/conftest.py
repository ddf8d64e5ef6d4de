"""Shared fixtures: a private data cache and the tiny configs."""

import os
import pathlib

import pytest

from cmseg_jax.config_base import load_config_file

ROOT = pathlib.Path(__file__).resolve().parent.parent


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
