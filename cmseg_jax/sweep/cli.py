"""``python -m cmseg_jax.sweep`` / ``cmseg-sweep``: flags, config loading, the default workdir."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cmseg_jax import (
    config_base,
    distributed,
    errors,
    validate,
)
from cmseg_jax.data import dataset
from cmseg_jax.sweep.layout import dry_run
from cmseg_jax.sweep.loop import run


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


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (:variant).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, logs and results go (default: runs/<config.name>)."
)
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", None, "Train seeds 0 .. N-1.")
_SEEDS = flags.DEFINE_string("seeds", None, "Train exactly these seeds, e.g. 3,7.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print params, FLOPs and memory, then exit.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_DEBUG = flags.DEFINE_bool("debug", False, "On an error, print its traceback too.")
_DISTRIBUTED = distributed.define_flags()


def enable_compilation_cache(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache (``train.compilation_cache``); its folder."""
    if not config.train.compilation_cache:
        return None
    root = pathlib.Path(config.data.cache_dir) if config.data.cache_dir else None
    path = (root or dataset.default_cache_root()) / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"{argv[1]}: unexpected argument (flags start with --)")
    distributed.initialize(**{name: holder.value for name, holder in _DISTRIBUTED.items()})
    # Orbax logs every save at INFO; keep the terminal for the progress bar and the summary.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _load_config()
    seeds = resolve_seeds(_NUM_SEEDS.value, _SEEDS.value, config.num_seeds)
    validate.check_config(config)  # before any compilation, the dry run's included
    enable_compilation_cache(config)
    if _DRY_RUN.value:
        info = dry_run(config, len(seeds), report=_print_seed_step)
        print(f"layout: {info['plan'].describe(len(seeds))}")
        print(
            f"estimated_device_bytes: {info['estimated_device_bytes'] / 2**30:.2f} GiB per device "
            f"({len(seeds)} seeds padded to {info['padded_seeds']} over {info['devices']} "
            f"devices, {info['seeds_per_chunk']} per chunk; compiled sweep step "
            f"{info['program_bytes_per_device'] / 2**30:.2f} GiB + data)"
        )
        return
    workdir = _WORKDIR.value or default_workdir(config)
    t0 = time.time()
    with errors.StopSignals() as stop:
        out = run(config, workdir, seeds, progress=_PROGRESS.value, stop=stop)
    if distributed.is_writer():
        print(out["summary"])
        print(f"wrote {workdir} in {time.time() - t0:.0f} s")


def _print_seed_step(info: dict) -> None:
    print(f"params: {info['params']}")
    print(f"flops_per_seed_step: {info['flops_per_seed_step']:.4g}")
    print(f"bytes_per_seed_step: {info['bytes_per_seed_step']:.4g}")
    print(f"cost_source: {info['cost_source']}")
    print(f"state_bytes_per_seed: {info['state_bytes_per_seed']}")
    print(f"temp_bytes_per_seed_step: {info['temp_bytes_per_seed_step']}", flush=True)


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


def _load_config() -> ml_collections.ConfigDict:
    try:
        config = _CONFIG.value
        if config is not None:
            config.get("num_seeds")  # a config that failed to load raises on first use
    except Exception as e:
        raise errors.UsageError(
            f"--config: cannot load the config file ({errors.last_line(e)})"
        ) from e
    if config is None:
        raise errors.UsageError("--config is required, e.g. --config configs/cam_beta.py")
    return config_base.resolve(config)


def entry() -> None:
    app.run(errors.guarded(main, _DEBUG), flags_parser=errors.parse_absl_flags)
