"""The defaults every experiment config starts from, and the size variants.

Experiment files in ``configs/`` call :func:`get_base_config`, change what their experiment changes,
and finish with :func:`apply_variant`. A variant is chosen after a colon on the command line:
``--config configs/cam_beta.py:tiny``.

Variants:
  (none)  thesis settings: 512×512, h = 256, depth 20, C_t = 100, σ = 7 with 50 taps.
  ``cpu`` a CPU-friendly size for the quickstart (128×128, h = 64, depth 4, at most 4 epochs;
          minutes on 2 cores; FCN-ResNet-50 at a quarter of its width, 16).
  ``tiny`` seconds on a CPU, for tests (32×32, h = 8, depth 1; FCN-ResNet-50 width 8).

Choices the thesis leaves open (stated here so they are visible in every resolved config):
  * batch size 16 for training and evaluation (not given in the thesis). The last incomplete batch
    of an epoch is dropped; data are reshuffled every epoch, per seed.
  * intensity window: HU clipped to [-1024, 1024] and mapped linearly to [-1, 1].
  * at reduced image sizes the Gaussian scales with the image: σ = 7·size/512, K ≈ 50·size/512.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

from cmseg_jax.models.smoothing import scaled_smoothing


def get_base_config() -> ml_collections.ConfigDict:
    """Thesis defaults (ConvMixerSeg, CAM_β, LiTS protocol); experiments override fields."""
    config = ml_collections.ConfigDict()
    config.name = "cam_beta"
    # full | cam_beta | cam_alpha
    config.method = "cam_beta"
    # Root seed: seed i trains with fold_in(PRNGKey(root_seed), i).
    config.root_seed = 0
    config.num_seeds = 8

    config.model = ml_collections.ConfigDict()
    # convmixerseg | fcn_resnet50 (the thesis' baseline, models/fcn_resnet.py; of the fields
    # below it uses num_classes, fcn_width, bn_momentum, dtype and remat).
    config.model.arch = "convmixerseg"
    config.model.num_classes = 2
    config.model.hidden = 256
    config.model.depth = 20
    config.model.patch_size = 7
    config.model.kernel_size = 9
    config.model.transition = 100
    config.model.upsample = "transposed"
    config.model.pointwise_residual = True
    config.model.smoothing = True
    config.model.smoothing_sigma = 7.0
    config.model.smoothing_size = 50
    config.model.bn_momentum = 0.9
    # auto | conv | shift: how the depthwise conv is computed (models/depthwise.py)
    config.model.depthwise_impl = "auto"
    # Computation dtype of activations and matmuls: float32 | bfloat16 (parameters, Adam state,
    # BatchNorm statistics, the Gaussian, losses and metrics stay float32).
    config.model.dtype = "float32"
    # Recompute the scanned mixer layers' activations in the backward pass: one more forward pass
    # of them, a twentieth of their activation memory. Off at the small variants.
    config.model.remat = True
    # Images per pass of the fused full-resolution decoder block (models/decoder.py): its C_t maps
    # exist for this many images at a time; 0 = plain autodiff of the block.
    config.model.decoder_chunk = 2
    # FCN-ResNet-50's stem width (64 = torchvision's ResNet-50; stages have 1, 2, 4, 8 × it).
    config.model.fcn_width = 64

    config.cam = ml_collections.ConfigDict()
    config.cam.threshold = 0.5
    config.cam.gate_with_classifier = True

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
    return config


def apply_variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Shrinks ``config`` in place for the ``cpu`` / ``tiny`` variants (see module docstring)."""
    if arg in (None, "", "thesis"):
        return config
    if arg == "cpu":
        config.train.epochs = min(config.train.epochs, 4)
        config.data.image_size = 128
        config.data.phantom_volumes = 20
        config.data.phantom_shape = (128, 128, 48)
        config.data.liver_slices = 8
        config.data.background_slices = 8
        config.model.hidden = 64
        config.model.depth = 4
        config.model.transition = 16
        config.model.remat = False
        config.model.decoder_chunk = 16  # the whole batch: fastest on a CPU
        config.train.batch_size = 16
        config.eval.batch_size = 64
    elif arg == "tiny":
        config.data.image_size = 32
        config.data.phantom_volumes = 6
        config.data.phantom_shape = (64, 64, 24)
        config.data.liver_slices = 2
        config.data.background_slices = 2
        config.model.hidden = 8
        config.model.depth = 1
        config.model.transition = 4
        config.model.remat = False
        config.train.epochs = min(config.train.epochs, 2)
        config.train.batch_size = 4
        config.eval.batch_size = 8
        config.eval.score_bins = 100
        config.eval.num_examples = 2
        config.num_seeds = 2
    else:
        raise ValueError(f"unknown config variant {arg!r}; expected one of: cpu, tiny")
    if config.model.arch == "fcn_resnet50":
        # Only the FCN's own configs change the field, so a ConvMixerSeg workdir written before
        # it existed still resumes (sweep._check_workdir accepts new fields at their defaults).
        config.model.fcn_width = 16 if arg == "cpu" else 8
    sigma, size = scaled_smoothing(config.data.image_size)
    config.model.smoothing_sigma = sigma
    config.model.smoothing_size = size
    return config


def load_config_file(spec: str, root: str | pathlib.Path = ".") -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:variant]`` (relative to ``root``) as ``--config`` would."""
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cmseg_config", pathlib.Path(root) / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)
