"""Canonical axial slices to the model grid and back: one preprocessing for training and predict.

The forward path (:func:`images_to_model`, :func:`masks_to_model`) is what every training slice
and every slice of a volume to segment goes through, so a slice reaches the model exactly as a
training slice did. Its input is a canonical RAS+ slice ``s[x, y]`` (:mod:`cmseg_jax.data.nifti`):

1. show it in the radiological convention (``image = np.flip(s, (0, 1)).T``): rows run anterior
   (top) to posterior and columns from the patient's right (left of the image) to the patient's
   left, so the liver appears on the left of the image;
2. pad a non-square slice, centred, to a square with air (-1024 HU; label 0);
3. clip to the run's ``data.hu_window`` and map linearly to [-1, 1];
4. resize the square of side ``max(X, Y)`` to ``image_size``: block means when the side is a
   multiple of ``image_size``, else linear interpolation (``scipy.ndimage.zoom``,
   ``grid_mode=True``: pixels treated as areas); a mask pixel is liver when at least half its
   block is, else nearest neighbour; tumour (2) counts as liver;
5. round images to float16 precision (< 0.001, about 0.5 HU with the default window), so a
   cached slice is bitwise the slice a fresh load returns.

Choices stated here because the model was trained on them:

* **Voxel grid, not millimetres.** In-plane spacing is ignored: a slice is processed on its voxel
  grid whatever ``pixdim`` says, so anisotropic in-plane pixels (rare in CT; LiTS has none) are
  treated as square. Resampling to isotropic millimetres would show the model slices unlike any
  it was trained on.
* **Non-square slices** are padded with air (not stretched), centred; the padding is cropped off
  again on the way back.
* **Padding values** (-2048, -3024, ... outside the scanner's field of view) are not treated
  specially: the window clips them, so with the default window (-1024, 1024), or any window whose
  lower end is at or above -1024, they become -1, the value of air.

The inverse path (:func:`postprocess_scores`) maps a (n, S, S) liver score back onto the input's
grid: bilinear interpolation (``zoom`` with ``grid_mode=True``, so a score covers the same patch
of the slice it was computed from) up to the padded square, the crop of the padding and the
inverse display transform. Thresholding happens after the interpolation, on the input's grid.
When ``max(X, Y) == image_size`` every step is exact and a score lands on precisely the voxel
whose intensity produced it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU = -1024.0


def hu_to_unit(hu, window=(-1024.0, 1024.0)) -> np.ndarray:
    """Clips Hounsfield units to window = (lo, hi) and maps them linearly to [-1, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must have hi > lo, got {window}")
    hu = np.clip(np.asarray(hu, np.float32), lo, hi)
    return ((hu - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)).astype(
        np.float32
    )


def axial_slices(canonical: np.ndarray, z) -> np.ndarray:
    """(X, Y, Z) canonical array -> (n, X, Y) axial slices ``z`` (index, slice or index array)."""
    return np.moveaxis(canonical[:, :, z], 2, 0)


def display(slices: np.ndarray) -> np.ndarray:
    """(n, X, Y) canonical slices -> (n, Y, X) radiological view: anterior up, right left."""
    return np.flip(slices, (1, 2)).transpose(0, 2, 1)


def pad_square(slices: np.ndarray, value) -> np.ndarray:
    """(n, H, W) -> (n, S, S), S = max(H, W), centred, the margin filled with ``value``."""
    n, h, w = slices.shape
    side = max(h, w)
    if h == w:
        return slices
    top, left = (side - h) // 2, (side - w) // 2
    pad = ((0, 0), (top, side - h - top), (left, side - w - left))
    return np.pad(slices, pad, constant_values=value)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resizes (n, S0, S0) float32 images to (n, size, size): block mean or linear."""
    n, s0, _ = images.shape
    if s0 == size:
        return images
    if s0 % size == 0:
        f = s0 // size
        return images.reshape(n, size, f, size, f).mean(axis=(2, 4), dtype=np.float32)
    z = (1.0, size / s0, size / s0)
    return ndimage.zoom(images, z, order=1, mode="nearest", grid_mode=True).astype(np.float32)


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Resizes (n, S0, S0) bool masks to (n, size, size) uint8: block majority or nearest."""
    n, s0, _ = masks.shape
    if s0 == size:
        return masks.astype(np.uint8)
    if s0 % size == 0:
        f = s0 // size
        frac = masks.reshape(n, size, f, size, f).mean(axis=(2, 4))
        return (frac >= 0.5).astype(np.uint8)
    z = (1.0, size / s0, size / s0)
    return ndimage.zoom(masks.astype(np.uint8), z, order=0, mode="nearest", grid_mode=True)


def images_to_model(hu: np.ndarray, image_size: int, hu_window) -> np.ndarray:
    """Canonical axial HU slices -> model input (steps 1-5 of the module docstring).

    Args:
      hu: (n, X, Y) Hounsfield units, canonical RAS+ in-plane axes.
      image_size: side S of the model's square input.
      hu_window: (lo, hi) window mapped to [-1, 1].

    Returns:
      (n, S, S) float32 in [-1, 1], radiological view, rounded to float16 precision.
    """
    hu = np.asarray(hu, np.float32)
    images = hu_to_unit(pad_square(display(hu), AIR_HU), hu_window)
    images = resize_images(images, int(image_size))
    return images.astype(np.float16).astype(np.float32)


def masks_to_model(labels: np.ndarray, image_size: int) -> np.ndarray:
    """Canonical axial label slices -> the model grid (nonzero, i.e. liver or tumour, is liver).

    Args:
      labels: (n, X, Y) labels.
      image_size: side S.

    Returns:
      (n, S, S) uint8 {0, 1}.
    """
    return resize_masks(pad_square(display(np.asarray(labels) > 0), False), int(image_size))


def postprocess_scores(scores: np.ndarray, in_plane: tuple[int, int]) -> np.ndarray:
    """Model-grid scores -> canonical axial slices of the input: the inverse of the forward path.

    Bilinear up- (or down-) sampling to the padded square (pixels as areas), crop of the padding,
    inverse display transform.

    Args:
      scores: (n, S, S) float scores on the model grid.
      in_plane: (X, Y) canonical in-plane shape of the volume.

    Returns:
      (n, X, Y) float32 scores.
    """
    scores = np.asarray(scores, np.float32)
    n, s, s2 = scores.shape
    if s != s2:
        raise ValueError(f"scores must be (n, S, S), got {scores.shape}")
    x, y = (int(v) for v in in_plane)
    side = max(x, y)
    if side != s:
        out = np.empty((n, side, side), np.float32)
        ndimage.zoom(
            scores, (1.0, side / s, side / s), output=out, order=1, mode="nearest", grid_mode=True
        )
        scores = out
    top, left = (side - y) // 2, (side - x) // 2  # pad_square's offsets on the (Y, X) display
    shown = scores[:, top : top + y, left : left + x]
    return np.ascontiguousarray(np.flip(shown.transpose(0, 2, 1), (1, 2)))
