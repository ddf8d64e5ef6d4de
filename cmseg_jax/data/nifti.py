"""NIfTI files in and out: open, validate, canonicalise to RAS+, invert, write like the input.

The one module that reads and writes CT volumes and label maps (through nibabel); the slice
pipeline (:mod:`cmseg_jax.data.preprocess`), the thesis' protocol (:mod:`cmseg_jax.data.lits`), the
dataset check and predict build on it.

Reading:

* any stored data type; intensities honour the header's ``scl_slope`` / ``scl_inter``; a trailing
  singleton 4th dimension is dropped; a ``.gz`` file's whole gzip stream is verified (nibabel
  never reads the CRC at its end);
* every problem is a :class:`DataError` with one line ``<file>: <what is wrong>``: not a regular
  file, unreadable, not 3-D, a singular or non-finite affine, NaN or infinite voxels, a label map
  whose shape or affine differs from its volume's or whose values leave {0, 1, 2}.

Orientation: arrays are reoriented to RAS+ exactly as ``nibabel.as_closest_canonical`` does (the
``nibabel.orientations`` transform of ``io_orientation(affine)``): axis 0 points to the patient's
right, axis 1 anterior, axis 2 superior, so the axial axis is 2 and counts from the inferior end.
:func:`from_canonical` is its inverse.

Written files (:func:`write_like`) have the input's exact shape (a 4th singleton dimension kept),
affine, qform / sform (matrices and codes), units and dimension info; only the data type, the
scaling (slope 1, intercept 0) and the display range change. Voxel spacing never enters the
arrays: slices are processed on their voxel grid (see :mod:`cmseg_jax.data.preprocess`).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import zlib

import nibabel as nib
import numpy as np
from nibabel import affines, orientations

from cmseg_jax import io_utils
from cmseg_jax.errors import DataError  # noqa: F401  (the data modules' error, re-exported)

# The orientation of a canonical array: stored axis i is world axis i, not flipped.
RAS = orientations.axcodes2ornt("RAS")


def data_error(path, what) -> DataError:
    """The :class:`DataError` ``'<path>: <what>'``, ``what`` folded onto one line."""
    return DataError(f"{path}: {' '.join(str(what).split())}")


# ----------------------------------------------------------------------------------------------
# Opening.


def not_a_file(path: pathlib.Path) -> str:
    """Why a path named like a data file cannot be one ('' if it is a readable regular file)."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (to {os.readlink(path)})"
    if path.is_dir():
        return "a directory, not a NIfTI file"
    if not path.is_file():
        return "not a regular file"
    return ""


def verify_gzip(path) -> None:
    """Reads a ``.gz`` file's whole gzip stream, so a bad CRC or a truncated file is an error.

    nibabel reads only the bytes an image needs and never reaches the CRC at the stream's end,
    so damaged compressed data would otherwise be read as wrong voxels without a complaint.

    Raises:
      DataError: naming the file.
    """
    path = pathlib.Path(path)
    if path.suffix != ".gz":
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        what = "truncated" if isinstance(e, EOFError) else f"{type(e).__name__}: {e}"
        raise data_error(path, f"corrupt gzip stream ({what}); the file is damaged") from e


def open_image(path) -> nib.spatialimages.SpatialImage:
    """Opens an image's header (voxels are read later, on demand).

    Raises:
      DataError: not a regular file, a damaged gzip stream, unreadable, or without an affine.
    """
    path = pathlib.Path(path)
    problem = not_a_file(path)
    if problem:
        raise data_error(path, problem)
    verify_gzip(path)
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for bad files; all mean "unreadable".
        raise data_error(path, f"unreadable NIfTI ({type(e).__name__}: {e})") from e
    if not hasattr(img, "dataobj") or not hasattr(img, "affine") or img.affine is None:
        raise data_error(path, "not an image with an affine")
    return img


def spatial_shape(image, path) -> tuple[int, int, int]:
    """The 3-D shape of ``image`` (a trailing singleton 4th dimension dropped).

    Raises:
      DataError: the image is not 3-D (or 4-D with one volume).
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise data_error(path, f"expected a 3-D volume, got shape {shape}")
    return shape


def orientation(image, path) -> np.ndarray:
    """(3, 2) orientation of the stored axes (stored axis -> canonical axis, flip), nibabel's.

    Raises:
      DataError: the affine is singular or not finite.
    """
    affine = np.asarray(image.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise data_error(path, "affine is singular or not finite")
    return orientations.io_orientation(affine)


def check_finite(arr: np.ndarray, path) -> None:
    """Refuses NaN or infinite voxel values (DataError naming the file and the count)."""
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise data_error(path, f"{bad} non-finite voxel values (NaN or infinity)")


def _may_hold_non_finite(img) -> bool:
    """Whether voxels can be NaN / inf: a float dtype, or a non-finite scaling."""
    if img.get_data_dtype().kind not in "iub":
        return True
    scaling = [getattr(img.dataobj, k, 1.0) for k in ("slope", "inter")]
    return not all(np.isfinite(float(v)) for v in scaling if v is not None)


def _read_hu(image, path, shape, ornt) -> np.ndarray:
    """Canonical (X, Y, Z) float32 Hounsfield units, possibly a non-contiguous view."""
    try:
        arr = image.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as e:
        raise data_error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
    check_finite(arr, path)
    return to_canonical(arr.reshape(shape), ornt)


# ----------------------------------------------------------------------------------------------
# Orientation.


def to_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Stored array -> RAS+ order (a view): ``nibabel.orientations.apply_orientation``.

    Args:
      arr: (X', Y', Z', ...) array in stored order; trailing axes are carried along.
      ornt: (3, 2) orientation of the stored axes (:func:`orientation`).
    """
    return orientations.apply_orientation(arr, ornt)


def from_canonical(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical`: RAS+ array -> stored order (a view).

    Args:
      arr: (X, Y, Z, ...) array in canonical order; trailing axes are carried along.
      ornt: (3, 2) orientation of the stored axes, as given to :func:`to_canonical`.
    """
    return orientations.apply_orientation(arr, orientations.ornt_transform(RAS, ornt))


def canonical_shape(shape, ornt: np.ndarray) -> tuple[int, int, int]:
    """(X, Y, Z) in RAS+ order of a stored 3-D ``shape``."""
    return tuple(int(s) for s in np.asarray(shape)[np.argsort(ornt[:, 0])])


def canonical_spacing(affine) -> np.ndarray:
    """(3,) voxel sizes in mm along the canonical RAS+ axes of an image with this ``affine``."""
    affine = np.asarray(affine, np.float64)
    ornt = orientations.io_orientation(affine)
    # The canonical image's affine, as nibabel.as_closest_canonical computes it (its voxel sizes
    # do not depend on the shape, which only moves the origin).
    return affines.voxel_sizes(affine @ orientations.inv_ornt_aff(ornt, (1, 1, 1)))


# ----------------------------------------------------------------------------------------------
# A volume and its label map.


@dataclasses.dataclass(frozen=True)
class Pair:
    """A CT volume and its label map, opened and checked against each other (voxels not read).

    Attributes:
      volume: the CT image.
      seg: the label image.
      volume_path: the CT file.
      seg_path: the label file.
      shape: stored 3-D shape of both.
      ornt: (3, 2) stored axis -> (canonical axis, flip), nibabel's convention.
    """

    volume: nib.spatialimages.SpatialImage
    seg: nib.spatialimages.SpatialImage
    volume_path: pathlib.Path
    seg_path: pathlib.Path
    shape: tuple[int, int, int]
    ornt: np.ndarray

    def labels(self) -> np.ndarray:
        """Canonical (X, Y, Z) uint8 labels, checked to lie in {0, 1, 2}."""
        path = self.seg_path
        try:
            arr = np.asanyarray(self.seg.dataobj)  # scaled if the header has a slope/intercept
        except Exception as e:
            raise data_error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
        if arr.dtype.kind not in "biuf":
            raise data_error(path, f"unsupported voxel type {arr.dtype}")
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.rint(arr)):
                raise data_error(
                    path, "labels must be integers in {0, 1, 2}, found non-integer values"
                )
        lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
        if lo < 0 or hi > 2:
            bad = np.unique(arr[(arr < 0) | (arr > 2)])[:5]
            shown = ", ".join(str(int(b)) for b in bad)
            raise data_error(path, f"labels must be in {{0, 1, 2}}, found {shown}")
        labels = to_canonical(arr.astype(np.uint8, copy=False).reshape(self.shape), self.ornt)
        return np.ascontiguousarray(labels)

    def hu(self) -> np.ndarray:
        """Canonical (X, Y, Z) float32 Hounsfield units."""
        return np.ascontiguousarray(_read_hu(self.volume, self.volume_path, self.shape, self.ornt))

    def axial_hu(self, z_index: np.ndarray) -> np.ndarray:
        """HU of canonical axial slices ``z_index``, (n, X, Y) float32, reading little else.

        Uncompressed files are read slice by slice through the array proxy (a seek each, so a
        1000-slice LiTS volume is never held in memory as float32); compressed files are
        decompressed once.
        """
        path = self.volume_path
        axis = int(np.nonzero(self.ornt[:, 0] == 2)[0][0])  # stored axis that becomes axial
        n = self.shape[axis]
        stored = n - 1 - z_index if self.ornt[axis, 1] < 0 else z_index
        out = []
        try:
            # A gzip stream cannot seek backwards cheaply: decompress it once.
            source = self.volume.dataobj
            may_be_non_finite = _may_hold_non_finite(self.volume)
            if path.suffix == ".gz" or may_be_non_finite:
                source = np.asanyarray(source)
            if may_be_non_finite:
                # Refused like the whole-volume readers do, whether or not the bad voxels are in
                # a picked slice.
                check_finite(source, path)
            for k in stored:
                idx = [slice(None)] * len(self.volume.shape)
                idx[axis] = slice(int(k), int(k) + 1)  # keep the axis so the orientation applies
                if len(idx) == 4:
                    idx[3] = 0
                slab = np.asarray(source[tuple(idx)], dtype=np.float32)
                out.append(to_canonical(slab, self.ornt)[:, :, 0])
        except DataError:
            raise
        except Exception as e:
            raise data_error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
        if not out:
            return np.zeros((0,) + canonical_shape(self.shape, self.ornt)[:2], np.float32)
        return np.stack(out)


def open_pair(volume_path, seg_path) -> Pair:
    """Opens both headers and checks everything that can be checked without the voxels.

    Raises:
      DataError: either file is unreadable or not 3-D, their shapes or affines differ, or the
        affine is singular.
    """
    volume_path, seg_path = pathlib.Path(volume_path), pathlib.Path(seg_path)
    vol, seg = open_image(volume_path), open_image(seg_path)
    shape = spatial_shape(vol, volume_path)
    seg_shape = spatial_shape(seg, seg_path)
    if seg_shape != shape:
        raise data_error(
            seg_path, f"shape {seg_shape} does not match {volume_path.name} shape {shape}"
        )
    ornt = orientation(vol, volume_path)
    if not np.allclose(
        np.asarray(seg.affine, np.float64), np.asarray(vol.affine, np.float64), rtol=1e-4, atol=1e-3
    ):
        raise data_error(seg_path, f"affine differs from that of {volume_path.name}")
    return Pair(vol, seg, volume_path, seg_path, shape, ornt)


def load_case(volume_path, seg_path) -> tuple[np.ndarray, np.ndarray]:
    """Loads one case in canonical RAS+ orientation.

    Intensities honour the header's slope/intercept. Checks that both files are readable 3-D
    images (a trailing singleton 4th dimension is allowed), that their shapes and affines agree and
    that labels lie in {0, 1, 2}.

    Args:
      volume_path: CT volume file.
      seg_path: its segmentation file.

    Returns:
      (hu, labels): hu (X, Y, Z) float32 Hounsfield units; labels (X, Y, Z) uint8 (0 background,
      1 liver, 2 tumour); axes point right, anterior and superior.

    Raises:
      DataError: naming the offending file.
    """
    pair = open_pair(volume_path, seg_path)
    labels = pair.labels()
    return pair.hu(), labels


# ----------------------------------------------------------------------------------------------
# A whole volume, read for writing results on its grid.


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
    image = open_image(path)
    shape3 = spatial_shape(image, path)
    ornt = orientation(image, path)
    hu = _read_hu(image, path, shape3, ornt)
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
    return open_pair(volume.path, seg_path).labels()


def write_like(canonical: np.ndarray, volume: Volume, path, dtype) -> pathlib.Path:
    """Writes a canonical (X, Y, Z) array as a NIfTI file on the grid of ``volume``'s file.

    The file has the input's exact shape (a trailing singleton 4th dimension kept), affine,
    qform / sform with their codes, units and dimension info; the voxels are stored as ``dtype``
    without scaling. Written atomically (:func:`cmseg_jax.io_utils.atomic_path`).

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
