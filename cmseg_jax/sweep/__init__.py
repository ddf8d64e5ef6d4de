"""Trains many seeds of one experiment at once; the CLI entry, the only module that knows devices.

    python -m cmseg_jax.sweep --config configs/cam_beta.py --num_seeds 48   # workdir runs/cam_beta
    python -m cmseg_jax.sweep --config configs/full_ce.py:cpu --seeds 3,7 --workdir runs/x \
        --config.train.epochs=5
    python -m cmseg_jax.sweep --config configs/cam_beta.py --dry_run

The per-seed functions of :mod:`cmseg_jax.train` are ``vmap``-ed over a seed axis that is sharded
over every visible device (a 1-D mesh with axis ``seed``; the data are replicated), optionally in
chunks of ``train.seed_chunk`` seeds per device (``lax.map`` over chunks, to fit memory), and
``jit``-ed once: an epoch is one compiled call (one ``lax.scan`` over its steps) on data that stay
on the devices.
After each epoch the three splits are evaluated, one line per seed and split goes to
``metrics.jsonl`` and the seed-stacked state is checkpointed; re-running the same command on the
same workdir resumes after the last checkpoint. Outputs: docs/workdir.md.
"""

from cmseg_jax.sweep.layout import SeedLayout, SweepFns, over_seeds
from cmseg_jax.sweep.loop import run
from cmseg_jax.sweep.options import default_workdir, enable_compilation_cache, resolve_seeds
from cmseg_jax.sweep.plan import (
    HEADROOM,
    Plan,
    dry_run,
    estimated_data_bytes,
    memory_budget,
    plan_layout,
    step_bytes,
)
from cmseg_jax.workdir import EXECUTION_FIELDS

__all__ = [
    "EXECUTION_FIELDS",
    "HEADROOM",
    "Plan",
    "SeedLayout",
    "SweepFns",
    "default_workdir",
    "dry_run",
    "enable_compilation_cache",
    "estimated_data_bytes",
    "memory_budget",
    "over_seeds",
    "plan_layout",
    "resolve_seeds",
    "run",
    "step_bytes",
]
