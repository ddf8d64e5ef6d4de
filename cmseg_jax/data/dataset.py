"""From a config to the three splits the engine trains on, and their device layout (host numpy)."""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
from absl import logging

from cmseg_jax.data import lits, sources
from cmseg_jax.data.lits import SPLITS
from cmseg_jax.io_utils import default_cache_root

# Images live on the device as int16 codes round(x · IMAGE_SCALE) of intensities x in [-1, 1]:
# 2 bytes a pixel instead of float32's 4, exact to 1.5e-5 (0.016 HU in the thesis' 2,048 HU
# window, far finer than bfloat16), in a type every backend has. Decoded per batch on device.
IMAGE_SCALE = 32767.0


def load_dataset(config: ml_collections.ConfigDict) -> tuple[dict[str, lits.SliceSet], str]:
    """Loads (and caches) the slice sets of ``config.data`` through its source's record
    (:mod:`cmseg_jax.data.sources`: the embedded phantom, LiTS, the TFDS dataset, ...).

    Returns:
      ({'train', 'val', 'test'} -> SliceSet, a one-line description of the data used).
    """
    d = config.data
    cache_root = pathlib.Path(d.cache_dir) if d.cache_dir else default_cache_root()
    sampling = dict(
        image_size=d.image_size,
        split_seed=d.split_seed,
        fractions=tuple(d.fractions),
        liver_slices=d.liver_slices,
        background_slices=d.background_slices,
        hu_window=tuple(d.hu_window),
    )
    source = sources.of(config)
    source.check(config)
    splits, what = source.load(config, cache_root, sampling)
    sizes = ", ".join(f"{name} {len(splits[name].labels)}" for name in SPLITS)
    what = f"{what}; slices: {sizes}; image size {d.image_size}"
    logging.info("DATA: %s", what)
    return splits, what


def class_weights(masks: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Inverse pixel frequency of each class in ``masks`` (N, S, S), normalised to mean 1.

    The normalisation does not change the loss (it is divided by the summed weights) but keeps the
    numbers readable. A class absent from the training set gets weight 0.
    """
    counts = np.bincount(masks.ravel().astype(np.int64), minlength=num_classes).astype(np.float64)
    freq = counts / counts.sum()
    inv = np.where(counts > 0, 1.0 / np.maximum(freq, 1e-300), 0.0)
    return (inv / inv[inv > 0].mean()).astype(np.float32)


def encode_images(images: np.ndarray) -> np.ndarray:
    """(…) intensities in [-1, 1] -> int16 codes (see :data:`IMAGE_SCALE`)."""
    images = np.asarray(images, np.float32)
    if not np.all(np.isfinite(images)):
        raise ValueError("images hold non-finite values")
    return np.round(np.clip(images, -1.0, 1.0) * IMAGE_SCALE).astype(np.int16)


def decode_images(codes):
    """int16 codes -> float32 intensities in [-1, 1]; float images pass through as float32.

    Works on numpy and jax arrays alike (the training step decodes each batch on device).
    """
    if codes.dtype.kind in "iu":
        return codes.astype(np.float32) * np.float32(1.0 / IMAGE_SCALE)
    return codes.astype(np.float32)


def device_layout(split: lits.SliceSet, pad_to: int = 1) -> dict[str, np.ndarray]:
    """The engine's split dict, padded with empty slices to a multiple of ``pad_to``.

    Returns:
      {"images": (M, S, S) int16 codes (:func:`encode_images`), "masks": (M, S, S) uint8,
       "labels": (M,) int32, "valid": (M,) bool}, M = N rounded up to a multiple of ``pad_to``.
      3 bytes per pixel: 1,572 thesis training slices at 512² take 1.2 GB.
    """
    n = len(split.labels)
    pixels = n * split.images.shape[1] * split.images.shape[2]
    if pixels >= 2**31:
        raise ValueError(
            f"a split of {n} slices has {pixels} pixels; confusion counts are int32 on device "
            "(exact below 2**31): use fewer slices per split"
        )
    m = -(-n // pad_to) * pad_to
    pad = m - n

    def padded(x, fill):
        return np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x

    return {
        "images": padded(encode_images(split.images), -int(IMAGE_SCALE)),
        "masks": padded(split.masks.astype(np.uint8), 0),
        "labels": padded(split.labels.astype(np.int32), 0),
        "valid": padded(np.ones(n, bool), False),
    }
