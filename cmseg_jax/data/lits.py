"""The thesis' slice-sampling protocol over LiTS-format NIfTI pairs, and its cache.

One loader serves the real LiTS data (``volume-N.nii`` / ``segmentation-N.nii``, also ``.nii.gz``,
anywhere under the data directory, e.g. the Kaggle layout with ``volume_pt1/`` ... and
``segmentations/``) and the embedded phantom (:mod:`cmseg_jax.data.phantom`). Files are read by
:mod:`cmseg_jax.data.nifti` (validated, reoriented to RAS+; the axial axis is canonical axis 2 and
``slice_index`` counts from the inferior end) and slices reach the model's grid through
:mod:`cmseg_jax.data.preprocess`, the same steps predict takes.

Protocol (the thesis'):

1. Split *by volume* into train / val / test (fractions 0.6 / 0.2 / 0.2, fixed split seed), so no
   patient contributes slices to two splits.
2. From every volume draw ``liver_slices`` axial slices that contain liver and ``background_slices``
   that contain none, uniformly without replacement. The generator is derived from
   ``(split_seed, volume id)`` only, so adding or removing volumes never changes another volume's
   picks. A volume with fewer slices of a kind contributes all it has (with a warning).
3. Map Hounsfield units to [-1, 1] through a window (default (-1024, 1024), clipped) and resize
   in-plane to ``image_size`` (:func:`cmseg_jax.data.preprocess.images_to_model`).

Labels: tumour (2) counts as liver. ``labels[i]`` says whether the *original* slice contains any
liver voxel; at small ``image_size`` a tiny liver cross-section can vanish from ``masks[i]``.
Images are quantised to float16 precision whether or not a cache is used, so a cache hit returns
bitwise the arrays a fresh load returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import re

import numpy as np

from cmseg_jax import io_utils
from cmseg_jax.data import nifti, preprocess
from cmseg_jax.data.nifti import DataError, data_error

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Bump whenever load_splits' output for the same inputs changes, to invalidate caches.
CACHE_FORMAT_VERSION = 1

FILE_RE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


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


@dataclasses.dataclass
class Layout:
    """The case files of a dataset directory and what is wrong with their names.

    Attributes:
      cases: [(N, volume_path, segmentation_path or None)] sorted by N.
      errors: '<file>: <what>' lines (missing segmentations, duplicates, no volumes, ...).
      warnings: '<file>: warning: <what>' lines (segmentations without a volume).
    """

    cases: list[tuple[int, pathlib.Path, pathlib.Path | None]]
    errors: list[str]
    warnings: list[str]


def scan_cases(data_dir) -> Layout:
    """Lists every ``volume-N`` under data_dir with its ``segmentation-N`` and the naming problems.

    Files are ``.nii`` or ``.nii.gz`` in any subdirectory (hidden files and directories are
    skipped), matched by N. Every problem is listed, not just the first (the dataset check reports
    them all; :func:`find_cases` raises the first).

    Returns:
      The :class:`Layout`.
    """
    data_dir = pathlib.Path(data_dir)
    errors, warnings = [], []

    def error(path, what):
        errors.append(str(data_error(path, what)))

    if not data_dir.is_dir():
        error(data_dir, "not a directory")
        return Layout([], errors, warnings)
    found: dict[str, dict[int, pathlib.Path]] = {"volume": {}, "segmentation": {}}
    for path in sorted(data_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(data_dir).parts):
            continue
        m = FILE_RE.match(path.name)
        if m is None:
            continue
        problem = nifti.not_a_file(path)
        if problem:
            error(path, problem)
            continue
        kind, n = m.group(1), int(m.group(2))
        if n in found[kind]:
            error(path, f"duplicate {kind} for case {n} (also {found[kind][n]})")
            continue
        found[kind][n] = path
    volumes, segs = found["volume"], found["segmentation"]
    for n in sorted(set(segs) - set(volumes)):
        warnings.append(f"{segs[n]}: warning: no matching volume-{n}; ignored by the loader")
    if not volumes:
        error(data_dir, "no volume-N.nii or volume-N.nii.gz files found")
    cases = []
    for n in sorted(volumes):
        if n not in segs:
            error(volumes[n], f"no segmentation-{n}.nii[.gz] for this volume")
        cases.append((n, volumes[n], segs.get(n)))
    return Layout(cases, errors, warnings)


def find_cases(data_dir, scan=None) -> list[tuple[int, pathlib.Path, pathlib.Path]]:
    """Finds ``volume-N`` / ``segmentation-N`` pairs (``.nii`` or ``.nii.gz``) under data_dir.

    Same rules as :func:`scan_cases`; segmentations without a volume are logged and ignored.

    Args:
      data_dir: directory to search.
      scan: the layout's scanner (default :func:`scan_cases`).

    Returns:
      [(N, volume_path, segmentation_path)] sorted by N.

    Raises:
      DataError: the directory is missing or holds no volumes, a volume has no segmentation, or a
        case has two files of the same kind (the first problem :func:`scan_cases` lists).
    """
    layout = (scan or scan_cases)(pathlib.Path(data_dir))
    if layout.errors:
        raise DataError(layout.errors[0])
    for line in layout.warnings:
        logger.warning("%s", line)
    return layout.cases


# ----------------------------------------------------------------------------------------------
# Protocol.


def check_split(
    data_dir, case_ids, fractions=(0.6, 0.2, 0.2), split_seed: int = 0
) -> dict[str, list[int]]:
    """:func:`split_cases`, refusing a split that would be empty (the loader's and the dataset
    check's one rule).

    Raises:
      DataError: naming ``data_dir``: too few volumes for every split with a share.
    """
    split = split_cases(case_ids, fractions, split_seed)
    empty = [name for name in SPLITS if not split[name] and fractions[SPLITS.index(name)] > 0]
    if empty:
        raise data_error(
            data_dir,
            f"{len(case_ids)} volume(s) leave the {' and '.join(empty)} split empty; "
            "at least 3 volumes are needed, one per split",
        )
    return split


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
    pair = nifti.open_pair(volume_path, seg_path)
    labels = pair.labels()
    z, flag = _pick_slices(
        labels, case_id, split_seed, liver_slices, background_slices, volume_path.name
    )
    return {
        "images": preprocess.images_to_model(pair.axial_hu(z), image_size, hu_window),
        "masks": preprocess.masks_to_model(preprocess.axial_slices(labels, z), image_size),
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


def sampling_params(
    *,
    image_size: int = 512,
    split_seed: int = 0,
    fractions=(0.6, 0.2, 0.2),
    liver_slices: int = 10,
    background_slices: int = 10,
    hu_window=(-1024.0, 1024.0),
) -> dict:
    """The protocol's parameters, defaults filled in, as ints and tuples of floats.

    The one home of the defaults (the thesis' values): :func:`load_splits` and the TFDS reader
    take these keyword arguments.

    Args:
      image_size: side S of the returned square slices.
      split_seed: seed of the volume split and of the per-volume slice draws.
      fractions: (train, val, test) fractions of volumes.
      liver_slices: slices containing liver drawn per volume.
      background_slices: slices without liver drawn per volume.
      hu_window: (lo, hi) Hounsfield window mapped to [-1, 1].

    Returns:
      {name: value} for the six parameters.
    """
    return dict(
        image_size=int(image_size),
        split_seed=int(split_seed),
        fractions=tuple(float(f) for f in fractions),
        liver_slices=int(liver_slices),
        background_slices=int(background_slices),
        hu_window=tuple(float(w) for w in hu_window),
    )


def load_splits(data_dir, *, cache_dir=None, scan=None, **sampling) -> dict[str, SliceSet]:
    """Loads the train / val / test slice sets following the thesis' protocol (module docstring).

    Args:
      data_dir: directory with volume-N / segmentation-N files (LiTS or the phantom).
      cache_dir: if given, the result is cached there as a compressed .npz keyed by the
        parameters and the data files' names, sizes and modification times.
      scan: (data_dir) -> :class:`Layout`, how the cases are found (default :func:`scan_cases`,
        LiTS' ``volume-N`` / ``segmentation-N``; other layouts in :mod:`cmseg_jax.data.sources`).
      **sampling: the protocol's parameters, those of :func:`sampling_params` (``image_size``,
        ``split_seed``, ``fractions``, ``liver_slices``, ``background_slices``, ``hu_window``);
        omitted ones take the thesis' values.

    Returns:
      {'train', 'val', 'test'} -> SliceSet, slices ordered by volume id then slice index.

    Raises:
      DataError: a data file is missing or malformed.
    """
    data_dir = pathlib.Path(data_dir)
    cases = find_cases(data_dir, scan)
    protocol = sampling_params(**sampling)
    params = dict(version=CACHE_FORMAT_VERSION, **protocol)
    counts = (protocol["liver_slices"], protocol["background_slices"])
    if protocol["image_size"] < 1 or min(counts) < 0:
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

    fractions = protocol.pop("fractions")
    split = check_split(data_dir, [c[0] for c in cases], fractions, protocol["split_seed"])
    by_id = {c[0]: c for c in cases}
    sets = {}
    for name in SPLITS:
        parts = [sample_case(i, by_id[i][1], by_id[i][2], **protocol) for i in split[name]]
        empty = empty_arrays(protocol["image_size"])
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
