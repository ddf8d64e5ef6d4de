"""The ``lits_slices`` TFDS dataset as the sweep's data source (``data.source='tfds'``).

Reading uses ``tfds`` data sources over array_record files: plain numpy, no TensorFlow. The
dataset to read is the config named after ``config.data``'s sampling parameters
(:func:`lits_slices_dataset_builder.config_name`) under ``data.tfds_dir``; if it is not built yet
and ``data.dir`` names a manual directory, it is built there first. The parameters stored with
the dataset are checked against the requested ones, so a dataset built for other parameters is
never read by mistake.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import numpy as np

from cmseg_jax.data import lits

DATASET = "lits_slices"


def _builder_module():
    try:
        from cmseg_jax.data.lits_slices import lits_slices_dataset_builder
    except ImportError as e:
        raise ImportError(
            "data.source='tfds' needs tensorflow-datasets and array-record: "
            'pip install -e ".[tfds]"'
        ) from e
    return lits_slices_dataset_builder


def default_tfds_dir() -> pathlib.Path:
    """TFDS' own default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    default = pathlib.Path.home() / "tensorflow_datasets"
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", default))


def make_builder(tfds_dir, **params):
    """The builder of the config for ``params`` (the keyword arguments of ``load_splits``)."""
    mod = _builder_module()
    cfg = mod.LitsSlicesConfig(**params)
    known = {c.name for c in mod.Builder.BUILDER_CONFIGS}
    # A predefined config must be named, not re-created (TFDS refuses a look-alike object).
    return mod.Builder(
        config=cfg.name if cfg.name in known else cfg, data_dir=str(pathlib.Path(tfds_dir))
    )


def load_splits_tfds(tfds_dir, *, manual_dir=None, **sampling) -> dict[str, lits.SliceSet]:
    """Reads (building first if needed) the slice sets, equal to :func:`lits.load_splits`'.

    Args:
      tfds_dir: TFDS data directory (holds ``lits_slices/<config>/<version>``).
      manual_dir: LiTS-format directory to build from when the dataset is not built; None means
        a missing dataset is an error.
      **sampling: the protocol's parameters, as for :func:`lits.load_splits`
        (:func:`lits.sampling_params`).

    Returns:
      {'train', 'val', 'test'} -> SliceSet, ordered by volume id then slice index.

    Raises:
      DataError: the dataset is missing (and no manual_dir), was built with other parameters, or
        a source file is malformed.
    """
    import tensorflow_datasets as tfds

    params = lits.sampling_params(**sampling)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # TFDS warns that a dataset not built yet has no info
    try:
        builder = make_builder(tfds_dir, **params)
        cfg = builder.builder_config
        data_path = pathlib.Path(str(builder.data_path))
        prepared = builder.is_prepared()
    finally:
        absl_logger.setLevel(level)
    if not prepared:
        if not manual_dir:
            known = {c.name for c in _builder_module().Builder.BUILDER_CONFIGS}
            name = cfg.name if cfg.name in known else f"'{json.dumps(cfg.params())}'"
            raise lits.DataError(
                f"{data_path}: dataset not built; run python -m cmseg_jax.data.tfds_build "
                f"--manual_dir LITS_DIR --data_dir {tfds_dir} --config {name}"
                " (or set data.dir to build it on first use)"
            )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        )
    stored = _metadata(data_path).get("params")
    if stored != json.loads(json.dumps(cfg.params())):
        raise lits.DataError(
            f"{data_path}: built with parameters {stored}, expected {cfg.params()}"
        )
    info_splits = builder.info.splits
    empty = lits.empty_arrays(params["image_size"])
    sets = {}
    mod = _builder_module()
    for tfds_name, name in mod.SPLIT_NAMES.items():
        if tfds_name not in info_splits:
            sets[name] = lits.SliceSet(**empty)
            continue
        source = builder.as_data_source(split=tfds_name)
        records = source.__getitems__(list(range(len(source)))) if len(source) else []
        arrays = {
            "images": [r["image"] for r in records],
            "masks": [r["mask"] for r in records],
            "labels": [r["label"] for r in records],
            "volume_ids": [r["volume_id"] for r in records],
            "slice_index": [r["slice_index"] for r in records],
        }
        arrays = {
            k: np.stack(v).astype(empty[k].dtype) if v else empty[k] for k, v in arrays.items()
        }
        order = np.lexsort((arrays["slice_index"], arrays["volume_ids"]))
        sets[name] = lits.SliceSet(**{k: v[order] for k, v in arrays.items()})
    return sets


def describe(tfds_dir, **params) -> str:
    """One line naming the built dataset for ``params`` and where its volumes came from."""
    data_path = pathlib.Path(str(make_builder(tfds_dir, **params).data_path))
    meta = _metadata(data_path)
    what = f"TFDS {DATASET} at {data_path}, built from {meta.get('source_dir', '?')}"
    if meta.get("synthetic_phantom"):
        what = f"{what} = SYNTHETIC embedded CT phantom -- NOT LiTS"
    return what


def _metadata(data_path: pathlib.Path) -> dict:
    path = data_path / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise lits.DataError(f"{path}: missing or unreadable dataset metadata ({e})") from e
    if not isinstance(meta, dict):
        raise lits.DataError(f"{path}: dataset metadata is not a JSON object")
    return meta
