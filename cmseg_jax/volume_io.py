"""Whole CT volumes in and out: read, canonicalise, map slices to the model's grid and back, write.

The forward path is the training loader's (:mod:`cmseg_jax.data.lits`), step for step and with its
own functions, so a slice reaches the model exactly as a training slice did:

1. read the voxels as float32 Hounsfield units (the header's ``scl_slope`` / ``scl_inter``
   applied; any stored dtype; a trailing singleton 4th dimension dropped);
2. reorient to RAS+ like ``nibabel.as_closest_canonical`` (axis 2 is axial, counted from the
   inferior end);
3. show each axial slice in the radiological convention (``image = np.flip(s, (0, 1)).T``:
   anterior up, the patient's right on the image's left);
4. pad a non-square slice, centred, to a square with air (-1024 HU), then clip to the run's
   ``data.hu_window`` and map linearly to [-1, 1];
5. resize the square of side ``max(X, Y)`` to ``image_size``: block means when the side is a
   multiple of ``image_size``, else linear interpolation (``scipy.ndimage.zoom``,
   ``grid_mode=True``); label masks use the loader's rule (at least half a block, else nearest);
6. round to float16 precision, as the loader does for every slice it returns.

Choices stated here because the training loader makes them too, and the model was trained on them:

* **Voxel grid, not millimetres.** In-plane spacing is ignored: a slice is processed on its voxel
  grid whatever ``pixdim`` says, so anisotropic in-plane pixels (rare in CT; LiTS has none) are
  treated as square, as in training. Resampling to isotropic millimetres would show the model
  slices unlike any it was trained on.
* **Non-square slices** are padded with air (not stretched), centred; the padding is cropped off
  again on the way back.
* **Padding values** (-2048, -3024, ... outside the scanner's field of view) are not treated
  specially: the window clips them, so with the default window (-1024, 1024), or any window whose
  lower end is at or above -1024, they become -1, the value of air, exactly as in training.

The inverse path maps a (n, S, S) liver score back onto the input's grid: bilinear interpolation
(``zoom`` with ``grid_mode=True``: pixels are areas, so a score covers the same patch of the slice
it was computed from) up to the padded square, the crop of the padding, the inverse display
transform and the inverse reorientation. Thresholding happens after the interpolation, on the
input's grid. When ``max(X, Y) == image_size`` every step is exact and a score lands on precisely
the voxel whose intensity produced it.

Written files (:func:`write_like`) have the input's exact shape (a 4th singleton dimension kept),
affine, qform / sform (matrices and codes), units and dimension info; only the data type, the
scaling (slope 1, intercept 0) and the display range change.
"""

from __future__ import annotations

import dataclasses
import pathlib

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from cmseg_jax import io_utils
from cmseg_jax.data import lits

# The loader's private pieces are reused on purpose: one implementation of the slice pipeline
# means prediction cannot drift from training.
from cmseg_jax.data.lits import _open, _open_pair, _read_labels

AXIAL = 2


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume read from disk and reoriented to RAS+.

    Attributes:
      path: the file it was read from.
      image: the nibabel image (header and affine of the input, voxels not cached).
      hu: (X, Y, Z) float32 Hounsfield units in canonical RAS+ order: axis 0 to the patient's right,
        axis 1 anterior, axis 2 superior. Possibly a non-contiguous view (flips / transposes).
      ornt: (3, 2) nibabel orientation of the stored axes (stored axis -> canonical axis, flip).
      shape: the input's full shape, e.g. (X', Y', Z') or (X', Y', Z', 1), in stored order.
    """

    path: pathlib.Path
    image: nib.spatialimages.SpatialImage
    hu: np.ndarray
    ornt: np.ndarray
    shape: tuple[int, ...]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) in RAS+ order."""
        return tuple(int(s) for s in self.hu.shape)

    @property
    def spacing(self) -> np.ndarray:
        """(3,) float64 voxel sizes in mm along the canonical axes (x, y, z)."""
        return canonical_spacing(self.image.affine)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation of the stored axes, e.g. ('L', 'P', 'S')."""
        return tuple(nib.aff2axcodes(self.image.affine))


def spatial_shape(image, path) -> tuple[int, int, int]:
    """The 3-D shape of ``image`` (a trailing singleton 4th dimension dropped).

    Raises:
      DataError: the image is not 3-D (or 4-D with one volume).
    """
    return lits._spatial_shape(image, path)


def canonical_spacing(affine) -> np.ndarray:
    """(3,) voxel sizes in mm along the canonical RAS+ axes of an image with this ``affine``."""
    affine = np.asarray(affine, np.float64)
    zooms = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))  # per stored axis
    ornt = orientations.io_orientation(affine)
    out = np.zeros(3)
    out[ornt[:, 0].astype(int)] = zooms
    return out


def to_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Stored (3-D) array -> RAS+ order (a view): ``nibabel.orientations.apply_orientation``."""
    return orientations.apply_orientation(arr, ornt)


def from_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical`: RAS+ array -> stored order (a view).

    Args:
      arr: (X, Y, Z, ...) array in canonical order; trailing axes are carried along.
      ornt: (3, 2) orientation of the stored axes, as given to :func:`to_canonical`.
    """
    axes = [int(a) for a in ornt[:, 0]]
    stored = np.transpose(arr, axes + list(range(3, arr.ndim)))
    flips = tuple(i for i in range(3) if ornt[i, 1] < 0)
    return np.flip(stored, flips) if flips else stored


def load_volume(path) -> Volume:
    """Reads a CT volume as float32 Hounsfield units in RAS+ order.

    Any stored dtype; ``scl_slope`` / ``scl_inter`` are applied; a trailing singleton 4th dimension
    is allowed. Reads the voxels once (float32, about 1 GiB for 512 x 512 x 1000).

    Args:
      path: a ``.nii`` or ``.nii.gz`` file (anything nibabel reads with an affine).

    Returns:
      The :class:`Volume`.

    Raises:
      DataError: unreadable file, not 3-D, singular or non-finite affine.
    """
    path = pathlib.Path(path)
    image = _open(path)
    shape3 = spatial_shape(image, path)
    affine = np.asarray(image.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise lits._error(path, "affine is singular or not finite")
    try:
        data = image.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as e:
        raise lits._error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
    lits.check_finite(data, path)
    ornt = orientations.io_orientation(affine)
    hu = to_canonical(data.reshape(shape3), ornt)
    return Volume(
        path=path, image=image, hu=hu, ornt=ornt, shape=tuple(int(s) for s in image.shape)
    )


def load_labels(volume: Volume, seg_path) -> np.ndarray:
    """Reads the segmentation of ``volume`` in the same RAS+ order.

    The training loader's checks apply: same 3-D shape and affine as the volume, labels in
    {0, 1, 2}.

    Args:
      volume: the volume the labels belong to.
      seg_path: its segmentation file.

    Returns:
      (X, Y, Z) uint8 labels: 0 background, 1 liver, 2 tumour.

    Raises:
      DataError: naming the offending file.
    """
    return _read_labels(_open_pair(volume.path, seg_path))


# ----------------------------------------------------------------------------------------------
# Slices to the model's grid and back.


def axial_slices(canonical: np.ndarray, z) -> np.ndarray:
    """(X, Y, Z) canonical array -> (n, X, Y) axial slices ``z`` (index, slice or index array)."""
    return np.moveaxis(canonical[:, :, z], 2, 0)


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
    top, left = (side - y) // 2, (side - x) // 2  # _pad_square's offsets on the (Y, X) display
    display = scores[:, top : top + y, left : left + x]
    return np.ascontiguousarray(np.flip(display.transpose(0, 2, 1), (1, 2)))


# ----------------------------------------------------------------------------------------------
# Writing.


def write_like(canonical: np.ndarray, volume: Volume, path, dtype) -> pathlib.Path:
    """Writes a canonical (X, Y, Z) array as a NIfTI file on the grid of ``volume``'s file.

    The file has the input's exact shape (a trailing singleton 4th dimension kept), affine,
    qform / sform with their codes, units and dimension info; the voxels are stored as ``dtype``
    without scaling.

    Args:
      canonical: (X, Y, Z) array in RAS+ order (same shape as ``volume.hu``).
      volume: the volume whose grid and header to copy.
      path: output file (``.nii`` or ``.nii.gz``); parent directories are created.
      dtype: stored dtype (e.g. np.uint8 for masks, np.float32 for probabilities).

    Returns:
      path as a Path.
    """
    canonical = np.asarray(canonical)
    if canonical.shape != volume.canonical_shape:
        raise ValueError(f"array shape {canonical.shape} != volume {volume.canonical_shape}")
    data = np.ascontiguousarray(from_canonical(canonical, volume.ornt), dtype=dtype)
    data = data.reshape(volume.shape)
    src = volume.image
    if isinstance(src, nib.Nifti1Image | nib.Nifti2Image):
        header = src.header.copy()
        cls = type(src)
    else:  # e.g. Analyze or MGH input: the grid (affine) is what can be kept
        header, cls = None, nib.Nifti1Image
    img = cls(data, src.affine, header=header)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    # The copied header's qform / sform (matrices and codes) stay as they are: nibabel rewrites
    # them only when the affine differs from the header's, and here it is the header's own.
    path = pathlib.Path(path)
    with io_utils.atomic_path(path) as tmp:  # same suffix: same format
        nib.save(img, tmp)
    return path
