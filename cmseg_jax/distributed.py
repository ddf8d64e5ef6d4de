"""Multi-process sweeps on JAX's own runtime: start-up, who writes, host copies of global arrays.

One sweep can span several hosts (a TPU pod slice, a SLURM job over nodes): every host runs the
same command as one JAX process, :func:`initialize` joins them with
``jax.distributed.initialize`` before any other JAX call, and from then on ``jax.devices()``
lists every process's devices, so the sweep's ``seed`` mesh spans all of them with no other
change. Each process loads the same data (deterministically) and runs the same program on its
own block of seeds; XLA's collectives (gloo on CPU, NCCL on GPU, ICI/DCN on TPU) carry what
crosses processes.

Who does what:

* every process reads the workdir (config check, resume) and calls Orbax, whose
  ``CheckpointManager`` is multi-process aware (process 0 writes the host arrays, all processes
  wait for the write); the workdir must therefore be one directory every process sees (a shared
  file system; on one host, any directory);
* only process 0 (:func:`is_writer`) writes the workdir's other files: ``config.json``,
  ``metrics.jsonl``, ``tensorboard/``, results, summaries, examples;
* arrays sharded over several processes are brought to the host with
  :func:`to_host` (``multihost_utils.process_allgather``), which every process must call at the
  same point of the program.

A single process (no launcher, no flags) goes through the same functions at no cost.
"""

from __future__ import annotations

import os
import pathlib
import sys
import uuid

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from cmseg_jax import errors, io_utils

MODES = ("auto", "on", "off")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
    """The CLI flags of a multi-process launch, named as ``jax.distributed.initialize`` names
    its arguments; returns their holders by name."""
    return {
        "distributed": flags.DEFINE_enum(
            "distributed",
            "auto",
            MODES,
            "Join a multi-process run with jax.distributed.initialize(): 'auto' when launched "
            "by srun / mpirun over several tasks or given --coordinator_address; 'on' always "
            "(a TPU pod slice: JAX finds the other hosts); 'off' never.",
            flag_values=flag_values,
        ),
        "coordinator_address": flags.DEFINE_string(
            "coordinator_address",
            None,
            "host:port of process 0's coordinator (jax.distributed.initialize).",
            flag_values=flag_values,
        ),
        "num_processes": flags.DEFINE_integer(
            "num_processes", None, "Number of processes of the run.", flag_values=flag_values
        ),
        "process_id": flags.DEFINE_integer(
            "process_id",
            None,
            "This process' index, 0 .. num_processes - 1.",
            flag_values=flag_values,
        ),
    }


def launcher(environ=None) -> str | None:
    """The multi-process launcher this process was started by, if JAX can read the rest from
    its environment: 'slurm' (a step of several tasks) or 'openmpi'; else None."""
    env = os.environ if environ is None else environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
    if all(k in env for k in slurm) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 and "OMPI_MCA_orte_hnp_uri" in env:
        return "openmpi"
    return None


def initialize(
    distributed: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ=None,
) -> bool:
    """Joins a multi-process run when there is one; must precede every other JAX call.

    Args:
      distributed: 'auto' (join when a launcher or the flags say so), 'on' (always; JAX detects the
        cluster: TPU pod slices, SLURM, Open MPI) or 'off'.
      coordinator_address, num_processes, process_id: as for ``jax.distributed.initialize``;
        with ``mode='auto'`` giving any of them joins. Unset ones come from the launcher's
        environment.
      environ: the environment to read (default ``os.environ``).

    Returns:
      Whether ``jax.distributed`` was started.

    Raises:
      UsageError: a bad flag combination, naming the flag.
    """
    mode = distributed
    if mode not in MODES:
        raise errors.UsageError(f"--distributed={mode}: must be one of {', '.join(MODES)}")
    given = {
        k: v
        for k, v in (
            ("coordinator_address", coordinator_address),
            ("num_processes", num_processes),
            ("process_id", process_id),
        )
        if v is not None
    }
    if mode == "off":
        if given:
            raise errors.UsageError(f"--{next(iter(given))} needs --distributed=auto or on")
        return False
    if mode == "auto" and not given and launcher(environ) is None:
        return False
    if num_processes is not None and num_processes < 1:
        raise errors.UsageError(f"--num_processes={num_processes}: must be >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise errors.UsageError(
            f"--process_id={process_id}: must be in 0 .. {num_processes - 1} (--num_processes)"
        )
    try:
        jax.distributed.initialize(**given)
    except (ValueError, TypeError) as e:
        raise errors.UsageError(
            f"jax.distributed.initialize: {errors.first_line(e)} (give --coordinator_address, "
            "--num_processes and --process_id, or launch with srun / mpirun)"
        ) from e
    local = jax.local_devices()
    print(
        f"PROCESS: {jax.process_index()} of {jax.process_count()}, {len(local)} local "
        f"{local[0].platform} device(s) of {jax.device_count()}",
        file=sys.stderr,
        flush=True,
    )
    return True


def is_writer() -> bool:
    """Whether this process writes the workdir's files (process 0; the only one if single)."""
    return jax.process_index() == 0


def to_host(tree):
    """Host numpy copies of every leaf, whole on every process.

    Arrays sharded over several processes are gathered (a collective: every process calls it at
    the same point); others, replicated ones included, are copied from a local device.
    """

    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def put(tree, sharding):
    """Places host data (the same on every process) onto ``sharding``, which may span every
    process's devices; each process fills only its own devices' shards."""

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(one, tree)


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (e.g. a stop signal reached only one);
    a collective when several processes run."""
    if jax.process_count() == 1:
        return bool(flag)
    flags_ = multihost_utils.process_allgather(np.asarray(bool(flag)))
    return bool(np.any(flags_))


def check_same(value: int, what: str) -> None:
    """Raises on every process unless all processes hold the same ``value`` (a decision each
    took alone, such as the seed chunk planned from its own device memory)."""
    if jax.process_count() == 1:
        return
    values = np.asarray(multihost_utils.process_allgather(np.asarray(int(value))))
    if np.any(values != values[0]):
        raise errors.UsageError(
            f"the processes planned different values of {what} ({values.tolist()}); "
            f"give it explicitly (--config.{what}=...)"
        )


def check_shared_dir(directory: str | pathlib.Path) -> None:
    """Raises on every process unless each one sees a file process 0 wrote in ``directory``
    (the workdir must be shared: every process reads the checkpoints back)."""
    if jax.process_count() == 1:
        return
    token = int(multihost_utils.broadcast_one_to_all(np.int32(uuid.uuid4().int % 2**31)))
    marker = pathlib.Path(directory) / f".process-check-{token}"
    if is_writer():
        io_utils.write_text(marker, f"{token}\n")
    multihost_utils.sync_global_devices(f"cmseg_jax wrote {marker.name}")
    seen = multihost_utils.process_allgather(np.asarray(marker.exists()))
    multihost_utils.sync_global_devices(f"cmseg_jax read {marker.name}")
    if is_writer():
        marker.unlink(missing_ok=True)
    missing = np.flatnonzero(~np.asarray(seen, bool)).tolist()
    if missing:
        raise errors.UsageError(
            f"{directory}: process(es) {missing} do not see the files process 0 writes there; "
            "--workdir must be a directory every process sees (a shared file system)"
        )
