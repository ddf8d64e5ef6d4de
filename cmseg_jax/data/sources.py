"""Where a sweep's slices come from: one record per ``config.data.source``.

A :class:`Source` is everything the rest of the project needs to know of a data source: how to
check its config fields, how to name it in an error, how many volumes to plan memory for before a
file is read, how to load the three splits and, for sources that read a directory of NIfTI files,
how to find the cases in it (the dataset check and ``predict`` use the same rule as training).
:func:`cmseg_jax.data.dataset.load_dataset`, :mod:`cmseg_jax.validate`, the memory planner,
``python -m cmseg_jax.data.check`` and ``predict`` read these records and never test a source's
name, so a new source is one module that defines a record plus its entry in :data:`SOURCES`.

Every source gives the slices of the thesis' protocol (:mod:`cmseg_jax.data.lits`): the split by
volume and the per-volume slice draws depend on the case numbers only.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import ml_collections

from cmseg_jax import errors
from cmseg_jax.data import lits, phantom
from cmseg_jax.data.lits import Layout
from cmseg_jax.errors import UsageError

# LiTS' training volumes: what a run on a real directory plans its memory for before reading it.
LITS_VOLUMES = 131


@dataclasses.dataclass(frozen=True)
class Source:
    """One data source (see the module docstring).

    Attributes:
      name: the value of ``config.data.source``.
      summary: what it reads, in a few words (help texts and error messages).
      load: (config, cache_root, sampling) -> ({'train', 'val', 'test'} -> SliceSet, a one-line
        description of the data). ``sampling`` holds the protocol's keyword arguments of
        :func:`cmseg_jax.data.lits.load_splits`.
      volumes: (config) -> the number of volumes to plan memory for before any file is read.
      where: (config) -> what an error about the data names (a directory, a config field).
      check: (config) -> None; raises UsageError naming a bad field of this source.
      scan: (directory) -> :class:`~cmseg_jax.data.lits.Layout`, the cases of a directory in this
        source's layout, every problem listed (None: the source reads no directory of cases).
      detect: (directory) -> whether a directory is in this source's layout (for the dataset
        check and ``predict``, which are given a directory, not a config).
      case_name: (a file's name without .nii[.gz]) -> its case's name, for ``predict``'s
        directory mode (output names and the labels an input is matched with); None keeps names
        (:func:`cmseg_jax.predict.volumes.output_name`).
    """

    name: str
    summary: str
    load: Callable
    volumes: Callable
    where: Callable
    check: Callable = lambda config: None
    scan: Callable | None = None
    detect: Callable | None = None
    case_name: Callable | None = None


def _data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    return pathlib.Path(config.data.dir).expanduser()


def needs_dir(name: str, what: str) -> Callable:
    """A ``check`` that refuses an empty ``data.dir`` in one line."""

    def check(config: ml_collections.ConfigDict) -> None:
        if not config.data.dir:
            raise UsageError(
                f"config.data.dir: data.source='{name}' needs --config.data.dir=/path/to/{what}"
            )

    return check


def directory_load(scan: Callable, what: str) -> Callable:
    """A ``load`` for a directory of cases that ``scan`` finds, through the LiTS loader."""

    def load(config, cache_root: pathlib.Path, sampling: dict):
        data_dir = _data_dir(config)
        splits = lits.load_splits(data_dir, cache_dir=cache_root / "slices", scan=scan, **sampling)
        return splits, f"{what} from {data_dir}"

    return load


# ----------------------------------------------------------------------------------------------
# The embedded phantom, LiTS and the lits_slices TFDS dataset.


def _load_phantom(config, cache_root: pathlib.Path, sampling: dict):
    d = config.data
    data_dir = phantom.ensure_phantom(
        phantom.cache_dir(cache_root),
        num_volumes=d.phantom_volumes,
        shape=tuple(d.phantom_shape),
        seed=d.phantom_seed,
    )
    splits = lits.load_splits(data_dir, cache_dir=cache_root / "slices", **sampling)
    what = (
        f"SYNTHETIC embedded CT phantom ({d.phantom_volumes} volumes "
        f"{tuple(d.phantom_shape)}, seed {d.phantom_seed}) at {data_dir} -- NOT LiTS"
    )
    return splits, what


def _bad(field: str, value, what: str) -> UsageError:
    return UsageError(f"config.{field}={value!r}: {what}")


def _check_phantom(config: ml_collections.ConfigDict) -> None:
    d = config.data
    volumes = d.phantom_volumes
    if isinstance(volumes, bool) or not isinstance(volumes, int) or volumes < 3:
        raise _bad("data.phantom_volumes", volumes, "must be an integer >= 3")
    shape = d.phantom_shape
    if (
        len(tuple(shape)) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        or min(shape) < 8
    ):
        raise _bad("data.phantom_shape", shape, "must be 3 integers >= 8 (X, Y, Z)")
    seed = d.phantom_seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _bad("data.phantom_seed", seed, "must be an integer >= 0")


def _load_tfds(config, cache_root: pathlib.Path, sampling: dict):
    del cache_root
    from cmseg_jax.data import tfds_source

    d = config.data
    tfds_dir = (
        pathlib.Path(d.tfds_dir).expanduser() if d.tfds_dir else tfds_source.default_tfds_dir()
    )
    manual_dir = _data_dir(config) if d.dir else None
    splits = tfds_source.load_splits_tfds(tfds_dir, manual_dir=manual_dir, **sampling)
    return splits, tfds_source.describe(tfds_dir, **sampling)


def _lits_volumes(config) -> int:
    del config
    return LITS_VOLUMES


PHANTOM = Source(
    name="phantom",
    summary="the embedded synthetic CT phantom, written as LiTS-format NIfTI files",
    load=_load_phantom,
    volumes=lambda config: config.data.phantom_volumes,
    where=lambda config: f"config.data.phantom_volumes={config.data.phantom_volumes}",
    check=_check_phantom,
)
LITS = Source(
    name="lits",
    summary="LiTS-format NIfTI pairs volume-N / segmentation-N under data.dir",
    load=directory_load(lits.scan_cases, "LiTS-format NIfTI volumes"),
    volumes=_lits_volumes,
    where=lambda config: str(_data_dir(config)),
    check=needs_dir("lits", "LiTS"),
    scan=lits.scan_cases,  # no ``detect``: the layout of any directory no other source claims
)
TFDS = Source(
    name="tfds",
    summary="the lits_slices TFDS dataset under data.tfds_dir (built from data.dir if missing)",
    load=_load_tfds,
    volumes=_lits_volumes,
    where=lambda config: str(pathlib.Path(config.data.tfds_dir or "$TFDS_DATA_DIR").expanduser()),
)

SOURCES: dict[str, Source] = {s.name: s for s in (PHANTOM, LITS, TFDS)}


def get(name: str) -> Source:
    """The source called ``name``; a one-line error naming the field for an unknown one."""
    return errors.lookup(SOURCES, name, "data.source")


def of(config: ml_collections.ConfigDict) -> Source:
    """The source of ``config``."""
    return get(config.data.source)


def for_directory(directory) -> Source:
    """The directory source whose layout ``directory`` is in (LiTS' when no other claims it)."""
    directory = pathlib.Path(directory)
    for source in SOURCES.values():
        if source.scan is not None and source.detect is not None and source.detect(directory):
            return source
    return LITS  # the fallback


def scan_directory(directory) -> Layout:
    """The cases of ``directory`` in whichever layout it is in (:func:`for_directory`)."""
    return for_directory(directory).scan(pathlib.Path(directory))


def _register(*records: Source) -> None:
    for record in records:
        SOURCES[record.name] = record


# Sources in modules of their own (imported last: they build their records from this module's).
from cmseg_jax.data import msd  # noqa: E402

_register(msd.SOURCE)
