"""The sweep CLI's plain helpers (no flags): which seeds, which workdir, the compilation cache."""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import ml_collections

from cmseg_jax import errors
from cmseg_jax.data import dataset


def resolve_seeds(num_seeds: int | None, seeds: str | None, default: int) -> list[int]:
    """Seeds to train: ``--seeds 3,7`` exactly, else ``range(--num_seeds)``, else the config's.

    Raises:
      UsageError: naming the flag.
    """
    if seeds is not None:
        if num_seeds is not None:
            raise errors.UsageError("--seeds and --num_seeds: give one of them, not both")
        try:
            out = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise errors.UsageError(
                f"--seeds={seeds}: must be comma-separated integers, e.g. 3,7"
            ) from None
        if not out:
            raise errors.UsageError(f"--seeds={seeds}: no seed ids, e.g. 3,7")
        if len(set(out)) != len(out) or any(s < 0 for s in out):
            raise errors.UsageError(f"--seeds={seeds}: must be distinct non-negative integers")
        return out
    if num_seeds is not None:
        if num_seeds < 1:
            raise errors.UsageError(f"--num_seeds={num_seeds}: must be >= 1")
        return list(range(num_seeds))
    if isinstance(default, bool) or not isinstance(default, int) or default < 1:
        raise errors.UsageError(f"config.num_seeds={default!r}: must be an integer >= 1")
    return list(range(default))


def enable_compilation_cache(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache (``train.compilation_cache``); its folder."""
    if not config.train.compilation_cache:
        return None
    root = pathlib.Path(config.data.cache_dir) if config.data.cache_dir else None
    path = (root or dataset.default_cache_root()) / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def default_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
    """``runs/<config.name>`` under the current directory, for a sweep started without
    ``--workdir``; said in one line, as the same command resumes there."""
    name = config.get("name")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or os.sep in name:
        raise errors.UsageError(
            f"config.name={name!r}: not a directory name for the default workdir; give --workdir"
        )
    workdir = pathlib.Path("runs") / name
    print(
        f"WORKDIR: --workdir not given, using {workdir} (the same command resumes there)",
        file=sys.stderr,
        flush=True,
    )
    return workdir
