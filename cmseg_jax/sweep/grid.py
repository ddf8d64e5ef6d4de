"""Hyperparameter grids: grid points × seeds as one run axis, and their files.

A config declares ``sweep.grid`` (:func:`cmseg_jax.config_base.parse_grid`). Fields of
:data:`cmseg_jax.config_base.TRACED_FIELDS` (σ of the Gaussian, the learning rate, the poolings'
parameters; each record says how its value reaches the step) are traced: every traced
point × seed is one row of the seed-stacked state, so one compiled program trains them all (the
rows are vmapped, chunked and sharded like seeds). Any other field changes the program (shapes,
Python control flow), so the sweep trains one program per combination of its values, each in
``<workdir>/programs/<point>/``, one after another.

Files of a grid sweep (besides the usual ones of each program's workdir, whose ``metrics.jsonl``
rows carry the grid fields as extra keys):

* ``<workdir>/grid/<point>/``: one ordinary workdir per grid point (config.json of that point
  alone, metrics.jsonl, results.csv, final_stats.npz, summary.md, run.json, examples.npz,
  tensorboard/), exactly what a sweep of that point's config would write: the report reads it
  like any workdir, and ``python -m cmseg_jax.report <workdir>`` compares the points.
* ``<workdir>/grid_results.csv``: every point's results.csv in one table, the grid fields as
  extra columns (``seed,<field>...,split,metric,value``).
"""

from __future__ import annotations

import dataclasses
import pathlib

import ml_collections
import numpy as np

from cmseg_jax import config_base
from cmseg_jax import workdir as workdir_io


@dataclasses.dataclass(frozen=True)
class RunAxis:
    """The rows of a sweep's seed-stacked state: traced grid points × seeds, point-major.

    Attributes:
      seeds: the sweep's seed ids.
      points: the traced grid points ([{}] without a traced grid).
      fixed: the values of the untraced grid fields this program was built for ({} if none).
      grid_root: where the per-point workdirs go (None: no grid).
    """

    seeds: tuple[int, ...]
    points: tuple[dict, ...]
    fixed: dict
    grid_root: pathlib.Path | None

    @property
    def is_grid(self) -> bool:
        return self.grid_root is not None

    @property
    def run_seeds(self) -> list[int]:
        """The seed id of every row."""
        return [s for _ in self.points for s in self.seeds]

    @property
    def traced(self) -> tuple[str, ...]:
        return tuple(self.points[0])

    def hparams(self) -> dict[str, np.ndarray] | None:
        """field -> (rows,) value of every row (the field's traced dtype); None without traced
        fields."""
        if not self.traced:
            return None
        n = len(self.seeds)
        dtype = {f: config_base.TRACED_FIELDS[f].dtype for f in self.traced}
        return {
            f: np.repeat(np.asarray([p[f] for p in self.points], dtype[f]), n) for f in self.traced
        }

    def point(self, i: int) -> dict:
        """Every grid field's value at traced point ``i``."""
        return {**self.fixed, **self.points[i]}

    def rows(self, i: int) -> slice:
        """The rows of traced point ``i``."""
        n = len(self.seeds)
        return slice(i * n, (i + 1) * n)

    def point_dir(self, i: int) -> pathlib.Path:
        return workdir_io.point_dir(self.grid_root, self.point(i))


def plain(seeds) -> RunAxis:
    """The run axis of a sweep without a grid: its seeds."""
    return RunAxis(tuple(seeds), ({},), {}, None)


def program_config(config, fixed: dict, traced: dict) -> ml_collections.ConfigDict:
    """The config of one program: the untraced values set, the traced grid kept."""
    config = config_base.at_point(config, fixed)
    if traced:
        config.sweep = ml_collections.ConfigDict()
        config.sweep.grid = config_base.grid_spec(traced)
    return config


def with_point_fields(rows: list[dict], axis: RunAxis, per_row: int) -> list[dict]:
    """``rows`` (``per_row`` consecutive rows per run-axis row) with the grid fields added."""
    n = len(axis.seeds)
    return [{**row, **axis.point(k // per_row // n)} for k, row in enumerate(rows)]
