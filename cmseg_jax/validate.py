"""Up-front checks of a sweep's config and data sizes, before anything is compiled or written.

:func:`check_config` runs before the data are read and before any compilation: every field the
sweep uses has the right type and a usable value. :func:`check_splits` runs after the data are
read and before anything is written to the workdir: every split has slices and the training split
fills at least one batch. Both raise :class:`~cmseg_jax.errors.UsageError` naming the field
(``config.train.epochs=0: must be an integer >= 1``); a data directory with too few volumes is a
:class:`~cmseg_jax.data.nifti.DataError` naming the directory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_collections

from cmseg_jax import config_base, methods
from cmseg_jax.data import lits, sources
from cmseg_jax.errors import UsageError
from cmseg_jax.models import registry
from cmseg_jax.models.heads import DEFAULT_POOLING, POOLINGS

DTYPES = ("float32", "bfloat16")
SEED_LAYOUTS = ("auto", "vmap", "map")


def _get(config: ml_collections.ConfigDict, field: str):
    node = config
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UsageError(f"config.{field}: missing from the config")
        node = node[part]
    return node


def _bad(field: str, value, what: str) -> UsageError:
    return UsageError(f"config.{field}={value!r}: {what}")


def _int(config, field: str, low: int) -> int:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(field, value, f"must be an integer >= {low}")
    return value


def _real(config, field: str, low: float, high: float = math.inf, open_low=False) -> float:
    value = _get(config, field)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        if high < math.inf:
            bound += f" and <= {high:g}"
        raise _bad(field, value, f"must be a finite number {bound}")
    return float(value)


def _choice(config, field: str, choices: Sequence[str]) -> str:
    value = _get(config, field)
    if value not in choices:
        raise _bad(field, value, f"must be one of {', '.join(choices)}")
    return value


def _numbers(config, field: str, length: int) -> tuple[float, ...]:
    value = _get(config, field)
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != length or not all(math.isfinite(v) for v in out):
        raise _bad(field, value, f"must be {length} finite numbers")
    return out


def _fields_of(pooling) -> list[str]:
    """The config fields of a pooling's parameters."""
    return [f"cam.{p}" for p in pooling.params]


def _pooling_params() -> dict[str, str]:
    """Every pooling parameter's config field -> the pooling that takes it."""
    return {f: name for name, pooling in POOLINGS.items() for f in _fields_of(pooling)}


def _check_pooling(config: ml_collections.ConfigDict) -> None:
    """``cam.pooling`` and its parameters, at every combination of the grid's values of the
    method and the cam fields: a known pooling; every pooling parameter (``cam.<parameter>``)
    a finite number > 0; a pooling other than the default only for a method that pools its
    class maps (CAM_β: CAM_α max-pools its C_t maps inside the model's head, ``full`` has no
    image-level loss); a grid over a pooling parameter only where the pooling takes it (else its
    points would all train alike)."""
    params = _pooling_params()
    try:
        grid = config_base.parse_grid(config)
    except ValueError:
        grid = {}  # a malformed grid: one line from where the sweep reads it
    for field in sorted(grid.keys() & params.keys()):
        for value in grid[field]:
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise _bad(field, value, "must be a finite number > 0 (a sweep.grid value)")
    pooling_methods = [m.name for m in methods.METHODS.values() if m.pools_class_maps]
    chosen = {f: v for f, v in grid.items() if f == "method" or f.startswith("cam.")}
    for point in config_base.grid_points(chosen):
        at = config_base.at_point(config, point) if point else config
        method = methods.get(_choice(at, "method", tuple(methods.METHODS)))
        name = _choice(at, "cam.pooling", tuple(POOLINGS))
        for field in params:
            _real(at, field, 0.0, open_low=True)
        if name != DEFAULT_POOLING and not method.pools_class_maps:
            raise _bad(
                "cam.pooling",
                name,
                f"pools the class maps of method {' / '.join(pooling_methods)} only; "
                f"method {method.name!r} takes {DEFAULT_POOLING!r}",
            )
        for field in sorted(grid.keys() & params.keys()):
            used = method.pools_class_maps and field in _fields_of(POOLINGS[name])
            if not used:
                raise UsageError(
                    f"config.sweep.grid: {field} is a parameter of cam.pooling="
                    f"{params[field]!r} (method {' / '.join(pooling_methods)}), unused by method "
                    f"{method.name!r} with cam.pooling={name!r}: its points would all train alike"
                )


def check_config(config: ml_collections.ConfigDict) -> None:
    """Checks every field the sweep uses; raises UsageError naming the first bad one."""
    method = methods.get(_choice(config, "method", tuple(methods.METHODS)))
    _int(config, "root_seed", 0)
    model = registry.get(_get(config, "model.arch"))
    if method.head not in model.heads:
        raise _bad("method", config.method, f"{model.name} has no {method.head} head")
    if config.model.smoothing and not model.smoothing:
        raise _bad("model.smoothing", True, f"{model.name} has no Gaussian smoothing")
    _int(config, "model.num_classes", 1)
    if config.model.num_classes != 2:
        raise _bad("model.num_classes", config.model.num_classes, "must be 2 (liver, background)")
    _choice(config, "model.dtype", DTYPES)
    for field, low in model.ints.items():
        _int(config, model.field(field), low)
    for field, options in model.choices.items():
        _choice(config, model.field(field), options)
    model.check(config, method.head)
    _real(config, "model.bn_momentum", 0.0, 1.0)
    if config.model.smoothing and config.model.smoothing_sigma is not None:
        _real(config, "model.smoothing_sigma", 0.0, open_low=True)
    if config.model.smoothing and config.model.smoothing_size is not None:
        _int(config, "model.smoothing_size", 1)
    _real(config, "cam.threshold", 0.0, 1.0)
    _check_pooling(config)

    d = "data"
    source = _get(config, f"{d}.source")
    _int(config, f"{d}.image_size", 1)
    _int(config, f"{d}.split_seed", 0)
    fractions = _numbers(config, f"{d}.fractions", 3)
    if any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise _bad(
            f"{d}.fractions",
            config.data.fractions,
            "must be 3 positive fractions (train, val, test) summing to 1",
        )
    liver = _int(config, f"{d}.liver_slices", 0)
    background = _int(config, f"{d}.background_slices", 0)
    if liver + background < 1:
        raise UsageError(
            f"config.{d}.liver_slices={liver}, config.{d}.background_slices={background}: "
            "no slices would be drawn; at least one must be >= 1"
        )
    lo, hi = _numbers(config, f"{d}.hu_window", 2)
    if not hi > lo:
        raise _bad(f"{d}.hu_window", config.data.hu_window, "must be (low, high) with high > low")

    t = "train"
    _int(config, f"{t}.epochs", 1)
    _int(config, f"{t}.batch_size", 1)
    _real(config, f"{t}.learning_rate", 0.0, open_low=True)
    _real(config, f"{t}.b1", 0.0, 1.0)
    _real(config, f"{t}.b2", 0.0, 1.0)
    if config.train.gamma_augment:
        g_lo, g_hi = _numbers(config, f"{t}.gamma_range", 2)
        if not 0 < g_lo <= g_hi:
            raise _bad(f"{t}.gamma_range", config.train.gamma_range, "must be 0 < low <= high")
    _int(config, f"{t}.steps_per_call", 0)
    _int(config, f"{t}.seed_chunk", 0)
    _choice(config, f"{t}.seed_layout", SEED_LAYOUTS)
    _real(config, f"{t}.memory_budget_gb", 0.0)

    e = "eval"
    _int(config, f"{e}.batch_size", 1)
    _int(config, f"{e}.every_epochs", 1)
    _int(config, f"{e}.score_bins", 1)
    _int(config, f"{e}.num_examples", 0)
    # Last: the data source's own fields (:mod:`cmseg_jax.data.sources`).
    sources.get(source).check(config)


def check_splits(config: ml_collections.ConfigDict, sizes: dict[str, int]) -> None:
    """Checks the loaded slice counts against the config before anything is compiled.

    Args:
      config: the sweep's config.
      sizes: split name -> number of slices.
    """
    empty = [name for name in lits.SPLITS if sizes.get(name, 0) < 1]
    where = sources.of(config).where(config)
    if empty:
        counts = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise lits.DataError(
            f"{where}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} would have "
            f"no slices ({counts}); the sweep needs at least 3 volumes, one per split"
        )
    batch = config.train.batch_size
    if sizes["train"] < batch:
        raise UsageError(
            f"config.train.batch_size={batch}: larger than the training split "
            f"({sizes['train']} slices); use a smaller batch or more slices per volume"
        )
