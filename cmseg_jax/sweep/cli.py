"""``python -m cmseg_jax.sweep`` / ``cmseg-sweep``: the flags and config loading.

Importing this module defines the sweep's absl flags (``--config`` ...) in absl's global flag
set; the library (``cmseg_jax.sweep``) does not import it, so other absl or argparse programs
in the same process keep their own ``--config``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cmseg_jax import (
    distributed,
    errors,
    validate,
    xla_flags,
)
from cmseg_jax.sweep import targets
from cmseg_jax.sweep.loop import run
from cmseg_jax.sweep.options import default_workdir, enable_compilation_cache, resolve_seeds
from cmseg_jax.sweep.plan import dry_run, target_of

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


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise errors.UsageError(f"{argv[1]}: unexpected argument (flags start with --)")
    # Before any backend starts (XLA reads XLA_FLAGS then): the defaults, the user's flags. The
    # sweep states them at the end of its LAYOUT: line (the dry run: an xla: line on stdout).
    xla_flags.apply()
    distributed.initialize(**{name: holder.value for name, holder in _DISTRIBUTED.items()})
    # Orbax logs every save at INFO; keep the terminal for the progress bar and the summary.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _load_config()
    seeds = resolve_seeds(_NUM_SEEDS.value, _SEEDS.value, config.num_seeds)
    if _DRY_RUN.value:
        validate.check_config(config)  # before any compilation (run() checks its own config)
        if target_of(config) is not None:
            # The target is compiled for deviceless; the host needs no other backend (an
            # installed libtpu or CUDA plugin would otherwise look for its absent hardware).
            targets.start_host_backend()
    enable_compilation_cache(config)
    if _DRY_RUN.value:
        print(xla_flags.describe(xla_flags.record()).replace("XLA: ", "xla: ", 1))
        info = dry_run(config, len(seeds), report=_print_seed_step)
        print(f"layout: {info['plan'].describe(len(seeds))}")
        print(
            f"estimated_device_bytes: {info['estimated_device_bytes'] / 2**30:.2f} GiB per device "
            f"({len(seeds)} seeds padded to {info['padded_seeds']} over {info['devices']} "
            f"devices, {info['seeds_per_chunk']} per chunk; compiled sweep step "
            f"{info['program_bytes_per_device'] / 2**30:.2f} GiB + data)"
        )
        if "ensemble_bytes_per_device" in info:
            ens = info["ensemble_bytes_per_device"]
            if not isinstance(ens, str):
                ens = f"{ens / 2**30:.2f} GiB" if ens >= 2**30 else f"{ens / 2**20:.1f} MiB"
                ens += " per device"
            print(
                f"ensemble_bytes_per_device: {ens} (the final evaluation's ensemble of every "
                "seed, beyond the states and data; XLA's memory analysis: memory, not time)"
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
    print(f"device: {info['device']} (compiled by {info['compiler']})")
    print(f"params: {info['params']}")
    for name in ("flops_per_seed_step", "bytes_per_seed_step"):
        value = info[name]
        print(f"{name}: " + ("not reported" if value is None else f"{value:.4g}"))
    print(f"cost_source: {info['cost_source']}")
    print(f"state_bytes_per_seed: {info['state_bytes_per_seed']}")
    print(f"temp_bytes_per_seed_step: {info['temp_bytes_per_seed_step']}", flush=True)


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
    return config


def entry() -> None:
    app.run(errors.guarded(main, _DEBUG), flags_parser=errors.parse_absl_flags)
