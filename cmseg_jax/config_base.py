"""The defaults every experiment config starts from, and the variants.

Experiment files in ``configs/`` call :func:`get_base_config`, change what their experiment changes,
and finish with :func:`apply_variant`. The argument after a colon on the command line is a
comma-separated list applied left to right; each item is a variant name or ``field=value``:
``--config configs/cam_beta.py:tiny``, ``--config 'configs/cam_beta.py:cpu,train.epochs=15'``.

Variants (:data:`VARIANTS`):
  ``thesis`` (or nothing) thesis settings: 512×512, h = 256, depth 20, C_t = 100, σ = 7, 50 taps.
  ``cpu``  a CPU-friendly size for the quickstart (128×128, h = 64, depth 4, at most 4 epochs;
           minutes on 2 cores; FCN-ResNet-50 at a quarter of its width, 16). Each network's
           sizes come from its record (``models/registry.py``).
  ``tiny`` seconds on a CPU, for tests (32×32, h = 8, depth 1; FCN-ResNet-50 width 8).

Choices the thesis leaves open (stated here so they are visible in every resolved config):
  * batch size 16 for training and evaluation (not given in the thesis). The last incomplete batch
    of an epoch is dropped; data are reshuffled every epoch, per seed.
  * intensity window: HU clipped to [-1024, 1024] and mapped linearly to [-1, 1].
  * the Gaussian scales with the image: σ = 7·size/512, K ≈ 50·size/512 (``model.smoothing_sigma``
    and ``model.smoothing_size`` left unset). They are derived from ``data.image_size`` when the
    model is built (:func:`smoothing`), so ``--config.data.image_size=128`` scales them too; a
    value set explicitly wins. The sweep records the derived values in ``config.json``
    (:func:`resolve`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib

import ml_collections
import numpy as np
from ml_collections import config_dict

from cmseg_jax.models import registry
from cmseg_jax.models.heads import DEFAULT_POOLING, POOLINGS
from cmseg_jax.models.registry import smoothing  # noqa: F401  (σ and K of the Gaussian)


def get_base_config() -> ml_collections.ConfigDict:
    """Thesis defaults (ConvMixerSeg, CAM_β, LiTS protocol); experiments override fields."""
    config = ml_collections.ConfigDict()
    config.name = "cam_beta"
    # full | full_mcc | cam_beta | cam_alpha (cmseg_jax/methods.py METHODS)
    config.method = "cam_beta"
    # Root seed: seed i trains with fold_in(PRNGKey(root_seed), i).
    config.root_seed = 0
    config.num_seeds = 8

    config.model = ml_collections.ConfigDict()
    # convmixerseg | fcn_resnet50 (the thesis' baseline): cmseg_jax/models/registry.py MODELS.
    # Each network's own fields are in its sub-dict, config.model.<arch> (below); the fields
    # here are shared by every network.
    config.model.arch = "convmixerseg"
    config.model.num_classes = 2
    # The fixed Gaussian on the class maps (networks whose record says so: ConvMixerSeg).
    config.model.smoothing = True
    # Unset = derived from data.image_size where the model is built (module docstring).
    config.model.smoothing_sigma = config_dict.placeholder(float)
    config.model.smoothing_size = config_dict.placeholder(int)
    config.model.bn_momentum = 0.9
    # Computation dtype of activations and matmuls: float32 | bfloat16 (parameters, Adam state,
    # BatchNorm statistics, the Gaussian, losses and metrics stay float32).
    config.model.dtype = "float32"
    # Recompute the activations of the network's repeated blocks in the backward pass (the
    # scanned mixer layers of ConvMixerSeg: one more forward pass of them, a twentieth of their
    # activation memory). Off at the small variants.
    config.model.remat = True
    # Each network's own fields at the thesis size (config.model.convmixerseg.hidden, …,
    # config.model.fcn_resnet50.width): the defaults of its record, commented there.
    for model in registry.MODELS.values():
        config.model[model.name] = ml_collections.ConfigDict(dict(model.defaults))

    config.cam = ml_collections.ConfigDict()
    config.cam.threshold = 0.5
    config.cam.gate_with_classifier = True
    # CAM_β's image-level pooling of the class maps (models/heads.py POOLINGS); 'max' = GMP, the
    # thesis'. Methods that do not pool their class maps take only 'max'.
    config.cam.pooling = DEFAULT_POOLING
    # Each pooling's parameters, at their defaults: cam.<parameter> (traced in a grid).
    for pooling in POOLINGS.values():
        for name, default in pooling.params.items():
            config.cam[name] = default

    config.data = ml_collections.ConfigDict()
    # phantom | lits | tfds. With 'lits', data.dir must point at volume-N.nii / segmentation-N.nii.
    # With 'tfds', the lits_slices TFDS dataset under data.tfds_dir (default $TFDS_DATA_DIR or
    # ~/tensorflow_datasets) is read; if it is not built yet, it is built from data.dir.
    config.data.source = "phantom"
    config.data.dir = ""
    config.data.tfds_dir = ""
    config.data.image_size = 512
    config.data.split_seed = 0
    config.data.fractions = (0.6, 0.2, 0.2)
    config.data.liver_slices = 10
    config.data.background_slices = 10
    config.data.hu_window = (-1024.0, 1024.0)
    config.data.cache_dir = ""
    config.data.phantom_volumes = 40
    config.data.phantom_shape = (512, 512, 64)
    config.data.phantom_seed = 0

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 3
    config.train.batch_size = 16
    config.train.learning_rate = 0.01
    config.train.b1 = 0.9
    config.train.b2 = 0.999
    config.train.gamma_augment = True
    config.train.gamma_range = (0.5, 1.5)
    # Steps per compiled call; 0 = a whole epoch per call (one lax.scan). Smaller values only make
    # the progress bar finer; results are identical.
    config.train.steps_per_call = 0
    # Seeds per device per vmapped chunk (lax.map over chunks); 0 = chosen by the sweep (see
    # train.seed_layout). Seeds are sharded over every visible device (mesh axis "seed").
    config.train.seed_chunk = 0
    # How seed_chunk = 0 is chosen: 'auto' = 'map' on a CPU without a memory budget (measured
    # fastest there, benchmarks/README.md), else 'vmap'; 'vmap' = the largest chunk whose compiled
    # step fits the memory budget; 'map' = one seed per chunk (lax.map over seeds).
    config.train.seed_layout = "auto"
    # Device memory to plan for, GiB; 0 = the device's own (memory_stats; on a CPU half the host
    # memory shared by its devices). --dry_run --config.train.memory_budget_gb=80 plans for an
    # 80 GB GPU from any machine.
    config.train.memory_budget_gb = 0.0
    # Plan for a device this machine does not have: '' = the visible devices; tpu-v5e (Colab's
    # TPU), tpu-v6e, tpu-v4, tpu-v2, h100, a100-80, l4 (cmseg_jax/sweep/targets.py). With
    # --dry_run the sweep's step is compiled by that device's own compiler, deviceless (the
    # 'tpu' / 'aot-gpu' extras); a real run checks that it runs on that device.
    config.train.target = ""
    # On an accelerator the plan may run a cheaper execution than model.remat and the network's
    # execution fields say (model.convmixerseg.remat_group / decoder_chunk: fewer FLOPs, the same
    # function) when it fits the same seed chunk.
    config.train.plan_execution = True
    # JAX's persistent compilation cache in <cache root>/xla ($CMSEG_CACHE or
    # ~/.cache/cmseg_jax): a second start of the same sweep skips XLA's compiles.
    config.train.compilation_cache = True

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 16
    config.eval.every_epochs = 1
    config.eval.score_bins = 1000
    config.eval.num_examples = 8
    # Also evaluate the final model with the Gaussian smoothing removed (trained with it); written
    # as results_no_smoothing.csv / final_stats_no_smoothing.npz and a second table in summary.md.
    config.eval.without_smoothing = True
    # The ensemble of the seeds (mean of their liver scores, thresholded as one seed's) in the
    # final evaluation, for every ensemble size k = 1 … N: results_ensemble.csv,
    # final_stats_ensemble.npz and a table under summary.md's. Computed on the device.
    config.eval.ensemble = True
    return config


def _at_most(limit: int):
    return lambda value: min(value, limit)


# Each variant: dotted field -> value, or a function of the field's current value.
VARIANTS: dict[str, dict] = {
    "thesis": {},
    "cpu": {
        "train.epochs": _at_most(4),
        "data.image_size": 128,
        "data.phantom_volumes": 20,
        "data.phantom_shape": (128, 128, 48),
        "data.liver_slices": 8,
        "data.background_slices": 8,
        "model.remat": False,
        "train.batch_size": 16,
        "eval.batch_size": 64,
    },
    "tiny": {
        "data.image_size": 32,
        "data.phantom_volumes": 6,
        "data.phantom_shape": (64, 64, 24),
        "data.liver_slices": 2,
        "data.background_slices": 2,
        "model.remat": False,
        "train.epochs": _at_most(2),
        "train.batch_size": 4,
        "eval.batch_size": 8,
        "eval.score_bins": 100,
        "eval.num_examples": 2,
        "num_seeds": 2,
    },
}


# Each network's sizes per variant, from its record (ConvMixerSeg h = 64, depth 4 at ``cpu``;
# FCN-ResNet-50 width 16 at ``cpu``, 8 at ``tiny``).
for _model in registry.MODELS.values():
    for _variant, _fields in _model.sizes.items():
        VARIANTS[_variant].update({_model.field(k): v for k, v in _fields.items()})


def _split_items(arg: str) -> list[str]:
    """Splits on commas outside brackets: ``cpu,data.fractions=(0.5,0.25,0.25)`` -> 2 items."""
    items, depth, current = [], 0, ""
    for char in arg:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


def _parse_value(field: str, text: str, old):
    """``text`` as a value of the type of ``old`` (the field's current value)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(old, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if old is not None and type(value) is not type(old):
        raise ValueError(f"config variant item {field}={text}: expected a {type(old).__name__}")
    return value


def _lookup(config: ml_collections.ConfigDict, field: str, where: str):
    """(the ConfigDict holding dotted ``field``, its leaf name, its value); a one-line error
    starting with ``where`` if there is no such field."""
    *parents, leaf = field.split(".")
    node = config
    try:
        for name in parents:
            node = node[name]
        return node, leaf, node[leaf]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"{where} {field!r}: no such field") from None


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
    node, leaf, old = _lookup(config, field, "config variant item")
    node[leaf] = value(old) if callable(value) else value


def apply_variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the variant string ``arg`` to ``config`` in place (see the module docstring).

    Args:
      config: an experiment's config.
      arg: comma-separated variant names (:data:`VARIANTS`) and ``field=value`` items, applied
        left to right; None or "" changes nothing.

    Raises:
      ValueError: an unknown variant or field, or a value of the wrong type (one line).
    """
    for item in _split_items(arg or ""):
        field, eq, text = item.partition("=")
        if eq:
            field = field.strip()
            _, _, old = _lookup(config, field, "config variant item")
            _set(config, field, _parse_value(field, text.strip(), old))
        elif item in VARIANTS:
            for name, value in VARIANTS[item].items():
                _set(config, name, value)
        else:
            raise ValueError(
                f"unknown config variant {item!r}; expected one of: {', '.join(VARIANTS)} "
                "or field=value"
            )
    return config


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with its derived fields (:func:`smoothing`) filled in."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.smoothing_sigma, config.model.smoothing_size = smoothing(config)
    return config


# ----------------------------------------------------------------------------------------------
# Hyperparameter grids.
#
# A config declares a grid as ``config.sweep.grid = grid_spec({field: values})``: the string form
# ``"model.smoothing_sigma=3,5,7,9; train.learning_rate=0.01,0.003"`` (a ConfigDict cannot hold
# dotted keys; the string also overrides from the command line,
# ``--config.sweep.grid='model.smoothing_sigma=3,5'``). Every combination of values is a grid
# point; each is trained for every seed.


def grid_spec(grid: dict) -> str:
    """The string form of ``{field: values}`` for ``config.sweep.grid``."""
    items = (f"{field}={','.join(str(v) for v in values)}" for field, values in grid.items())
    return "; ".join(items)


def parse_grid(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """``config.sweep.grid`` as {field: values} in declaration order ({} without a grid).

    Raises:
      ValueError: an unknown field, a value of the wrong type, a repeated field or value (one
        line naming the field).
    """
    spec = config.get("sweep", {}).get("grid", "") if "sweep" in config else ""
    grid: dict[str, tuple] = {}
    for item in (spec or "").split(";"):
        if not item.strip():
            continue
        field, eq, text = item.partition("=")
        field = field.strip()
        if not eq or not text.strip():
            raise ValueError(f"sweep.grid: {item.strip()!r} is not field=value,value,...")
        if field in grid:
            raise ValueError(f"sweep.grid: {field} appears twice")
        _, _, old = _lookup(config, field, "sweep.grid:")
        if old is None and field in TRACED_FIELDS:  # an unset derived field (σ): typed as traced
            old = np.dtype(TRACED_FIELDS[field].dtype).type(0).item()
        values = tuple(_parse_value(field, v.strip(), old) for v in text.split(","))
        if len(set(values)) != len(values):
            raise ValueError(f"sweep.grid: {field} repeats a value")
        grid[field] = values
    return grid


@dataclasses.dataclass(frozen=True)
class TracedField:
    """A grid field that is traced: vmapped next to the seeds in one compiled program rather
    than compiled once per value.

    Attributes:
      field: the dotted config field.
      inject: how a grid point's value reaches the step (:mod:`cmseg_jax.train`):
        ``model`` — keyword ``name`` of the model's apply (it builds the Gaussian inside the
        step); ``optimizer`` — hyperparameter ``name`` of ``optax.inject_hyperparams``, carried
        in ``opt_state.hyperparams``; ``method`` — keyword ``name`` of the method's outputs
        (:meth:`cmseg_jax.methods.Method.outputs`: a pooling parameter). ``model`` and
        ``method`` values are carried in ``GridTrainState.hparams[name]``.
      name: that keyword or hyperparameter (unique across the table: the state's key).
      dtype: the value's dtype on the device.
    """

    field: str
    inject: str
    name: str
    dtype: str = "float32"


# Every traced grid field: σ, the learning rate, and each pooling's parameters (cam.<parameter>).
TRACED_FIELDS: dict[str, TracedField] = {
    t.field: t
    for t in (
        TracedField("model.smoothing_sigma", "model", "smoothing_sigma"),
        TracedField("train.learning_rate", "optimizer", "learning_rate"),
        *(
            TracedField(f"cam.{name}", "method", name)
            for pooling in POOLINGS.values()
            for name in pooling.params
        ),
    )
}
TRACED = tuple(TRACED_FIELDS)


def split_grid(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(traced fields -> values, untraced fields -> values) of the config's grid."""
    grid = parse_grid(config)
    traced = {f: v for f, v in grid.items() if f in TRACED}
    return traced, {f: v for f, v in grid.items() if f not in traced}


def grid_points(grid: dict[str, tuple]) -> list[dict]:
    """Every combination of the grid's values, the first field varying slowest ([{}] if none)."""
    points = [{}]
    for field, values in grid.items():
        points = [{**p, field: v} for p in points for v in values]
    return points


def point_name(point: dict) -> str:
    """A grid point as a directory name: ``model.smoothing_sigma=3.0,train.learning_rate=0.01``."""
    return ",".join(f"{field}={value}" for field, value in point.items()) or "default"


def at_point(config: ml_collections.ConfigDict, point: dict) -> ml_collections.ConfigDict:
    """The config of one grid point: the point's values set, no grid left (the config a run of
    that point alone would have)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "sweep" in config:
        del config["sweep"]
    for field, value in point.items():
        _set(config, field, value)
    return config


def with_fields(config: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the dotted ``fields`` set (the planner's execution choices)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for field, value in fields.items():
            _set(config, field, value)
    return config


def load_config_file(spec: str, root: str | pathlib.Path = ".") -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:variant]`` (relative to ``root``) as ``--config`` would."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cmseg_config", pathlib.Path(root) / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)
