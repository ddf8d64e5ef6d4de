"""LiTS NIfTI loading and the thesis' slice-sampling protocol.

One loader serves the real LiTS data (``volume-N.nii`` / ``segmentation-N.nii``, also ``.nii.gz``,
anywhere under the data directory, e.g. the Kaggle layout with ``volume_pt1/`` ... and
``segmentations/``) and the embedded phantom (:mod:`cmseg_jax.data.phantom`).

Protocol (the thesis'):

1. Split *by volume* into train / val / test (fractions 0.6 / 0.2 / 0.2, fixed split seed), so no
   patient contributes slices to two splits.
2. From every volume draw ``liver_slices`` axial slices that contain liver and ``background_slices``
   that contain none, uniformly without replacement. The generator is derived from
   ``(split_seed, volume id)`` only, so adding or removing volumes never changes another volume's
   picks. A volume with fewer slices of a kind contributes all it has (with a warning).
3. Map Hounsfield units to [-1, 1] through a window (default (-1024, 1024), clipped) and resize
   in-plane to ``image_size``.

Conventions:

* Volumes are reoriented to RAS+ exactly as ``nibabel.as_closest_canonical`` does (same
  ``io_orientation`` transform); the axial axis is canonical axis 2 and ``slice_index`` counts from
  the inferior end.
* Each axial slice ``s[x, y]`` (x to the patient's right, y anterior) is shown in the radiological
  convention: ``image = np.flip(s, (0, 1)).T``, so rows run anterior (top) to posterior and columns
  run from the patient's right (left of the image) to the patient's left; the liver appears on the
  left of the image.
* Non-square slices are padded to a square with air (-1024 HU, label 0), centred, before resizing.
  Resizing: when the side is a multiple of ``image_size``, images are block means and a mask pixel
  is liver when at least half its block is; otherwise images use linear interpolation and masks
  nearest neighbour (``scipy.ndimage.zoom`` with ``grid_mode=True``, pixels treated as areas).
* Labels: tumour (2) counts as liver. ``labels[i]`` says whether the *original* slice contains any
  liver voxel; at small ``image_size`` a tiny liver cross-section can vanish from ``masks[i]``.
* Images are quantised to float16 precision (< 0.001, about 0.5 HU with the default window) whether
  or not a cache is used, so a cache hit returns bitwise the arrays a fresh load returns.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import pathlib
import re
import zlib

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from cmseg_jax import io_utils

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
AIR_HU = -1024.0
# Bump whenever load_splits' output for the same inputs changes, to invalidate caches.
CACHE_FORMAT_VERSION = 1

_FILE_RE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


class DataError(ValueError):
    """A data file is missing or malformed. One-line message: '<file>: <what is wrong>'."""

    exit_code = 1  # a data failure, not a usage mistake (cmseg_jax.errors)


def _error(path, what: str) -> DataError:
    return DataError(f"{path}: {' '.join(str(what).split())}")


@dataclasses.dataclass(frozen=True, eq=False)
class SliceSet:
    """Axial slices of one split.

    Attributes:
      images: (N, S, S) float32 in [-1, 1].
      masks: (N, S, S) uint8, 1 = liver (tumour counted as liver), 0 = background.
      labels: (N,) int32, 1 if the slice contains any liver.
      volume_ids: (N,) int32, the N of volume-N.
      slice_index: (N,) int32, axial index in the canonical (RAS+) volume.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    volume_ids: np.ndarray
    slice_index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------------------------
# Files.


def find_cases(data_dir) -> list[tuple[int, pathlib.Path, pathlib.Path]]:
    """Finds ``volume-N`` / ``segmentation-N`` pairs (``.nii`` or ``.nii.gz``) under data_dir.

    Searches subdirectories too (hidden files and directories are skipped) and matches files by N.

    Args:
      data_dir: directory to search.

    Returns:
      [(N, volume_path, segmentation_path)] sorted by N.

    Raises:
      DataError: the directory is missing or holds no volumes, a volume has no segmentation, or a
        case has two files of the same kind.
    """
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise _error(data_dir, "not a directory")
    found: dict[str, dict[int, pathlib.Path]] = {"volume": {}, "segmentation": {}}
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        m = _FILE_RE.match(path.name)
        if m is None:
            continue
        problem = not_a_file(path)
        if problem:
            raise _error(path, problem)
        kind, n = m.group(1), int(m.group(2))
        if n in found[kind]:
            raise _error(path, f"duplicate {kind} for case {n} (also {found[kind][n]})")
        found[kind][n] = path
    volumes, segs = found["volume"], found["segmentation"]
    if not volumes:
        raise _error(data_dir, "no volume-N.nii or volume-N.nii.gz files found")
    for n in sorted(set(segs) - set(volumes)):
        logger.warning("%s has no matching volume-%d; ignored", segs[n], n)
    cases = []
    for n in sorted(volumes):
        if n not in segs:
            raise _error(volumes[n], f"no segmentation-{n}.nii[.gz] for this volume")
        cases.append((n, volumes[n], segs[n]))
    return cases


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
        raise _error(path, f"corrupt gzip stream ({what}); the file is damaged") from e


def _open(path) -> nib.spatialimages.SpatialImage:
    path = pathlib.Path(path)
    problem = not_a_file(path)
    if problem:
        raise _error(path, problem)
    verify_gzip(path)
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for bad files; all mean "unreadable".
        raise _error(path, f"unreadable NIfTI ({type(e).__name__}: {e})") from e
    if not hasattr(img, "dataobj") or not hasattr(img, "affine") or img.affine is None:
        raise _error(path, "not an image with an affine")
    return img


def _spatial_shape(img, path) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise _error(path, f"expected a 3-D volume, got shape {shape}")
    return shape


@dataclasses.dataclass(frozen=True)
class _Pair:
    volume: nib.spatialimages.SpatialImage
    seg: nib.spatialimages.SpatialImage
    volume_path: pathlib.Path
    seg_path: pathlib.Path
    shape: tuple[int, int, int]
    ornt: np.ndarray  # (3, 2) stored axis -> (canonical axis, flip), nibabel convention


def _open_pair(volume_path, seg_path) -> _Pair:
    """Opens both headers and checks everything that can be checked without the voxels."""
    volume_path, seg_path = pathlib.Path(volume_path), pathlib.Path(seg_path)
    vol, seg = _open(volume_path), _open(seg_path)
    shape = _spatial_shape(vol, volume_path)
    seg_shape = _spatial_shape(seg, seg_path)
    if seg_shape != shape:
        raise _error(seg_path, f"shape {seg_shape} does not match {volume_path.name} shape {shape}")
    aff = np.asarray(vol.affine, np.float64)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise _error(volume_path, "affine is singular or not finite")
    if not np.allclose(np.asarray(seg.affine, np.float64), aff, rtol=1e-4, atol=1e-3):
        raise _error(seg_path, f"affine differs from that of {volume_path.name}")
    ornt = orientations.io_orientation(aff)
    return _Pair(vol, seg, volume_path, seg_path, shape, ornt)


def _to_canonical(arr: np.ndarray, pair: _Pair) -> np.ndarray:
    return orientations.apply_orientation(arr.reshape(pair.shape), pair.ornt)


def _read_labels(pair: _Pair) -> np.ndarray:
    """Canonical (X, Y, Z) uint8 labels, checked to lie in {0, 1, 2}."""
    path = pair.seg_path
    try:
        arr = np.asanyarray(pair.seg.dataobj)  # scaled if the header has a slope/intercept
    except Exception as e:
        raise _error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
    if arr.dtype.kind not in "biuf":
        raise _error(path, f"unsupported voxel type {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.rint(arr)):
            raise _error(path, "labels must be integers in {0, 1, 2}, found non-integer values")
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    if lo < 0 or hi > 2:
        bad = np.unique(arr[(arr < 0) | (arr > 2)])[:5]
        shown = ", ".join(str(int(b)) for b in bad)
        raise _error(path, f"labels must be in {{0, 1, 2}}, found {shown}")
    return np.ascontiguousarray(_to_canonical(arr.astype(np.uint8, copy=False), pair))


def _read_hu(pair: _Pair) -> np.ndarray:
    path = pair.volume_path
    try:
        arr = pair.volume.get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as e:
        raise _error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
    check_finite(arr, path)
    return np.ascontiguousarray(_to_canonical(arr, pair))


def check_finite(arr: np.ndarray, path) -> None:
    """Refuses NaN or infinite voxel values (DataError naming the file and the count)."""
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _error(path, f"{bad} non-finite voxel values (NaN or infinity)")


def _may_hold_non_finite(img) -> bool:
    """Whether voxels can be NaN / inf: a float dtype, or a non-finite scaling."""
    if img.get_data_dtype().kind not in "iub":
        return True
    scaling = [getattr(img.dataobj, k, 1.0) for k in ("slope", "inter")]
    return not all(np.isfinite(float(v)) for v in scaling if v is not None)


def _read_axial_hu(pair: _Pair, z_index: np.ndarray) -> np.ndarray:
    """HU of canonical axial slices z_index, (n, X, Y) float32, without reading the rest if cheap.

    Uncompressed files are read slice by slice through the array proxy (a seek each, so a 1000-slice
    LiTS volume is never held in memory as float32); compressed files are decompressed once.
    """
    path = pair.volume_path
    axis = int(np.nonzero(pair.ornt[:, 0] == 2)[0][0])  # stored axis that becomes axial
    n = pair.shape[axis]
    stored = n - 1 - z_index if pair.ornt[axis, 1] < 0 else z_index
    out = []
    try:
        # A gzip stream cannot seek backwards cheaply: decompress it once.
        source = pair.volume.dataobj
        may_be_non_finite = _may_hold_non_finite(pair.volume)
        if path.suffix == ".gz" or may_be_non_finite:
            source = np.asanyarray(source)
        if may_be_non_finite:
            # Refused like data.check does, whether or not the bad voxels are in a picked slice.
            check_finite(source, path)
        for k in stored:
            idx = [slice(None)] * len(pair.volume.shape)
            idx[axis] = slice(int(k), int(k) + 1)  # keep the axis so the orientation still applies
            if len(idx) == 4:
                idx[3] = 0
            slab = np.asarray(source[tuple(idx)], dtype=np.float32)
            out.append(orientations.apply_orientation(slab, pair.ornt)[:, :, 0])
    except DataError:
        raise
    except Exception as e:
        raise _error(path, f"unreadable voxel data ({type(e).__name__}: {e})") from e
    if not out:
        return np.zeros((0,) + tuple(_canonical_shape(pair)[:2]), np.float32)
    return np.stack(out)


def _canonical_shape(pair: _Pair) -> tuple[int, int, int]:
    shape = [0, 0, 0]
    for stored_axis, (axis, _) in enumerate(pair.ornt):
        shape[int(axis)] = pair.shape[stored_axis]
    return tuple(shape)


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
    pair = _open_pair(volume_path, seg_path)
    labels = _read_labels(pair)
    return _read_hu(pair), labels


# ----------------------------------------------------------------------------------------------
# Protocol.


def split_cases(case_ids, fractions=(0.6, 0.2, 0.2), split_seed: int = 0) -> dict[str, list[int]]:
    """Splits case ids into train / val / test by a seeded permutation.

    Sizes are ``fractions * n`` rounded by largest remainder; with at least three cases every split
    with a positive fraction gets at least one case.

    Args:
      case_ids: distinct integer case ids (any order; the result depends only on the set).
      fractions: (train, val, test), non-negative, summing to 1.
      split_seed: seed of the permutation.

    Returns:
      {'train': [...], 'val': [...], 'test': [...]}, each sorted.
    """
    ids = sorted(int(i) for i in case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"case ids are not distinct: {ids}")
    frac = np.asarray(fractions, np.float64)
    if frac.shape != (3,) or np.any(frac < 0) or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(ids)
    raw = frac * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")  # ties favour train, then val
    counts[order[: n - counts.sum()]] += 1
    if n >= 3:
        for k in np.nonzero((counts == 0) & (frac > 0))[0]:
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    perm = np.random.default_rng(split_seed).permutation(n)
    bounds = np.cumsum(counts)[:-1]
    return {
        name: sorted(ids[i] for i in part)
        for name, part in zip(SPLITS, np.split(perm, bounds), strict=True)
    }


def hu_to_unit(hu, window=(-1024.0, 1024.0)) -> np.ndarray:
    """Clips Hounsfield units to window = (lo, hi) and maps them linearly to [-1, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must have hi > lo, got {window}")
    hu = np.clip(np.asarray(hu, np.float32), lo, hi)
    return ((hu - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)).astype(
        np.float32
    )


def _pick_slices(
    labels: np.ndarray,
    case_id: int,
    split_seed: int,
    liver_slices: int,
    background_slices: int,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted canonical axial indices of the sampled slices and whether each contains liver."""
    has_liver = np.any(labels > 0, axis=(0, 1))
    rng = np.random.default_rng([split_seed, case_id])
    picked, flags = [], []
    for want, pool, kind, flag in (
        (liver_slices, np.nonzero(has_liver)[0], "liver", 1),
        (background_slices, np.nonzero(~has_liver)[0], "background", 0),
    ):
        if len(pool) < want:
            logger.warning(
                "%s: only %d %s slices, %d requested; taking all", name, len(pool), kind, want
            )
        take = rng.choice(pool, size=min(want, len(pool)), replace=False)
        picked.append(take)
        flags.append(np.full(len(take), flag, np.int32))
    z = np.concatenate(picked).astype(np.int64)
    flag = np.concatenate(flags)
    order = np.argsort(z, kind="stable")
    return z[order], flag[order]


def _display(slices: np.ndarray) -> np.ndarray:
    """(n, X, Y) canonical slices -> (n, Y, X) radiological view: anterior up, right left."""
    return np.flip(slices, (1, 2)).transpose(0, 2, 1)


def _pad_square(slices: np.ndarray, value) -> np.ndarray:
    n, h, w = slices.shape
    side = max(h, w)
    if h == w:
        return slices
    top, left = (side - h) // 2, (side - w) // 2
    pad = ((0, 0), (top, side - h - top), (left, side - w - left))
    return np.pad(slices, pad, constant_values=value)


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resizes (n, S0, S0) float32 images to (n, size, size): block mean or linear."""
    n, s0, _ = images.shape
    if s0 == size:
        return images
    if s0 % size == 0:
        f = s0 // size
        return images.reshape(n, size, f, size, f).mean(axis=(2, 4), dtype=np.float32)
    z = (1.0, size / s0, size / s0)
    return ndimage.zoom(images, z, order=1, mode="nearest", grid_mode=True).astype(np.float32)


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
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
    """Canonical axial HU slices -> model input (the one preprocessing of training and predict).

    Args:
      hu: (n, X, Y) Hounsfield units, canonical RAS+ in-plane axes.
      image_size: side S of the model's square input.
      hu_window: (lo, hi) window mapped to [-1, 1].

    Returns:
      (n, S, S) float32 in [-1, 1], radiological view, rounded to float16 precision.
    """
    hu = np.asarray(hu, np.float32)
    images = hu_to_unit(_pad_square(_display(hu), AIR_HU), hu_window)
    images = _resize_images(images, int(image_size))
    return images.astype(np.float16).astype(np.float32)


def masks_to_model(labels: np.ndarray, image_size: int) -> np.ndarray:
    """Canonical axial label slices -> the model grid (nonzero, i.e. liver or tumour, is liver).

    Args:
      labels: (n, X, Y) labels.
      image_size: side S.

    Returns:
      (n, S, S) uint8 {0, 1}.
    """
    return _resize_masks(_pad_square(_display(np.asarray(labels) > 0), False), int(image_size))


def sample_case(
    case_id: int,
    volume_path,
    seg_path,
    *,
    image_size: int,
    split_seed: int,
    liver_slices: int,
    background_slices: int,
    hu_window,
) -> dict[str, np.ndarray]:
    """The thesis' slice sample of one volume (steps 2 and 3 of the module docstring).

    Shared by :func:`load_splits` and the TFDS builder, so both give identical arrays.

    Returns:
      {"images": (n, S, S) float32, "masks": (n, S, S) uint8, "labels": (n,) int32,
       "volume_ids": (n,) int32, "slice_index": (n,) int32}, sorted by slice index.

    Raises:
      DataError: naming the offending file.
    """
    volume_path = pathlib.Path(volume_path)
    pair = _open_pair(volume_path, seg_path)
    labels = _read_labels(pair)
    z, flag = _pick_slices(
        labels, case_id, split_seed, liver_slices, background_slices, volume_path.name
    )
    return {
        "images": images_to_model(_read_axial_hu(pair, z), image_size, hu_window),
        "masks": masks_to_model(np.moveaxis(labels[:, :, z], 2, 0), image_size),
        "labels": flag,
        "volume_ids": np.full(len(z), case_id, np.int32),
        "slice_index": z.astype(np.int32),
    }


def empty_arrays(image_size: int) -> dict[str, np.ndarray]:
    """Zero-length arrays with :func:`sample_case`'s dtypes and shapes."""
    size = int(image_size)
    return {
        "images": np.zeros((0, size, size), np.float32),
        "masks": np.zeros((0, size, size), np.uint8),
        "labels": np.zeros(0, np.int32),
        "volume_ids": np.zeros(0, np.int32),
        "slice_index": np.zeros(0, np.int32),
    }


def _cache_key(cases, params: dict, data_dir: pathlib.Path) -> str:
    files = []
    for _, vol, seg in cases:
        for path in (vol, seg):
            st = path.stat()
            files.append([str(path.relative_to(data_dir)), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"params": params, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _load_cache(path: pathlib.Path) -> dict[str, SliceSet] | None:
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # a corrupt cache is rebuilt, never fatal
        logger.warning("Ignoring unreadable cache %s (%s)", path, e)
        return None
    out = {}
    for code, name in enumerate(SPLITS):
        sel = arrays["split"] == code
        out[name] = SliceSet(
            images=arrays["images"][sel].astype(np.float32),
            masks=arrays["masks"][sel],
            labels=arrays["labels"][sel],
            volume_ids=arrays["volume_ids"][sel],
            slice_index=arrays["slice_index"][sel],
        )
    return out


def _save_cache(path: pathlib.Path, sets: dict[str, SliceSet], params: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "images": np.concatenate([sets[s].images for s in SPLITS]).astype(np.float16),
        "masks": np.concatenate([sets[s].masks for s in SPLITS]),
        "labels": np.concatenate([sets[s].labels for s in SPLITS]),
        "volume_ids": np.concatenate([sets[s].volume_ids for s in SPLITS]),
        "slice_index": np.concatenate([sets[s].slice_index for s in SPLITS]),
        "split": np.concatenate(
            [np.full(len(sets[s]), code, np.uint8) for code, s in enumerate(SPLITS)]
        ),
        "params": np.array(json.dumps(params, sort_keys=True)),
    }
    try:
        io_utils.write_npz(path, **arrays)
    except OSError as e:  # a cache that cannot be written (a full disk) is only slower
        logger.warning("Slices not cached (%s: %s)", e.filename, e.strerror)
        return
    # Leftovers of writers killed long ago (a shared cache: never those of a live writer).
    io_utils.remove_orphans(path.parent, min_age_s=24 * 3600)


def load_splits(
    data_dir,
    *,
    image_size: int = 512,
    split_seed: int = 0,
    fractions=(0.6, 0.2, 0.2),
    liver_slices: int = 10,
    background_slices: int = 10,
    hu_window=(-1024.0, 1024.0),
    cache_dir=None,
) -> dict[str, SliceSet]:
    """Loads the train / val / test slice sets following the thesis' protocol (module docstring).

    Args:
      data_dir: directory with volume-N / segmentation-N files (LiTS or the phantom).
      image_size: side S of the returned square slices.
      split_seed: seed of the volume split and of the per-volume slice draws.
      fractions: (train, val, test) fractions of volumes.
      liver_slices: slices containing liver drawn per volume.
      background_slices: slices without liver drawn per volume.
      hu_window: (lo, hi) Hounsfield window mapped to [-1, 1].
      cache_dir: if given, the result is cached there as a compressed .npz keyed by the
        parameters and the data files' names, sizes and modification times.

    Returns:
      {'train', 'val', 'test'} -> SliceSet, slices ordered by volume id then slice index.

    Raises:
      DataError: a data file is missing or malformed.
    """
    data_dir = pathlib.Path(data_dir)
    cases = find_cases(data_dir)
    params = dict(
        version=CACHE_FORMAT_VERSION,
        image_size=int(image_size),
        split_seed=int(split_seed),
        fractions=[float(f) for f in fractions],
        liver_slices=int(liver_slices),
        background_slices=int(background_slices),
        hu_window=[float(w) for w in hu_window],
    )
    if image_size < 1 or liver_slices < 0 or background_slices < 0:
        raise ValueError(f"bad sampling parameters: {params}")
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(cases, params, data_dir)
        cache_path = pathlib.Path(cache_dir).expanduser() / f"lits-slices-{key}.npz"
        if cache_path.is_file():
            sets = _load_cache(cache_path)
            if sets is not None:
                logger.info("Loaded slices from cache %s", cache_path)
                return sets

    split = split_cases([c[0] for c in cases], fractions, split_seed)
    empty = [name for name in SPLITS if not split[name] and fractions[SPLITS.index(name)] > 0]
    if empty:
        raise _error(
            data_dir,
            f"{len(cases)} volume(s) leave the {' and '.join(empty)} split empty; "
            "at least 3 volumes are needed, one per split",
        )
    by_id = {c[0]: c for c in cases}
    sets = {}
    sample = dict(
        image_size=int(image_size),
        split_seed=int(split_seed),
        liver_slices=int(liver_slices),
        background_slices=int(background_slices),
        hu_window=tuple(hu_window),
    )
    for name in SPLITS:
        parts = [sample_case(i, by_id[i][1], by_id[i][2], **sample) for i in split[name]]
        empty = empty_arrays(image_size)
        sets[name] = SliceSet(
            **{k: np.concatenate([p[k] for p in parts]) if parts else empty[k] for k in empty}
        )
    logger.info(
        "LiTS slices from %s: %s",
        data_dir,
        ", ".join(f"{s} {len(sets[s])} slices / {len(split[s])} volumes" for s in SPLITS),
    )
    if cache_path is not None:
        _save_cache(cache_path, sets, params)
    return sets
