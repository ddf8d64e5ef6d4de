"""File-system helpers: atomic writes, the removal of their debris, and the cache location.

Atomic: a file is absent, its old version, or complete; never half-written. :func:`atomic_path` is
the one implementation; :func:`atomic_open`, :func:`write_text`, :func:`write_json` and
:func:`write_npz` are shorthands over it. Every write goes to a temporary sibling
``.tmp-<random>-<name>`` (created with mode 0666 minus the umask, like any ``open``) and is renamed
over the target when complete. A write that fails (a full disk) removes its temporary file; one cut
short by a kill leaves it behind, and :func:`remove_orphans` deletes such leftovers.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

TMP_PREFIX = ".tmp-"
# Temporary names of this module, and those of earlier versions (".<name>.<random>.tmp").
_ORPHAN_RE = re.compile(r"^(\.tmp-[0-9a-f]{12}-.+|\..+\.tmp)$")


def temporary_sibling(path: str | pathlib.Path) -> pathlib.Path:
    """A fresh temporary path next to ``path`` that keeps its suffixes (``.nii.gz`` ...)."""
    path = pathlib.Path(path)
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a temporary path to write ``path`` through; renamed onto ``path`` on success.

    The one atomic write of the package: the caller writes a file (``nibabel.save(img, tmp)``)
    or fills a directory at the yielded path, which sits in the same directory and keeps the
    suffixes of ``path`` (so the same format is written). When the block ends without an error,
    the file (or the directory) is fsynced and moved onto ``path`` with ``os.replace``; on any
    error the temporary is removed and ``path`` is left as it was. The parent directory is
    created.

    A directory cannot replace a non-empty one: that raises ``OSError`` (the caller decides
    whether someone else's finished copy is as good as its own).

    Example::

        with io_utils.atomic_path(out) as tmp:
            nib.save(image, tmp)

    Raises:
      OSError: naming ``path`` (not its temporary stand-in).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or e.filename == str(tmp):  # name the file, not its stand-in
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _fsync(path: pathlib.Path) -> None:
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_open(path: str | pathlib.Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` written through :func:`atomic_path`: all of it appears, or nothing.

    Args:
      path: the file to (re)write.
      mode: a write mode, ``"w"`` or ``"wb"``.
      **kwargs: passed on to ``open`` (``newline=""`` for the csv module, ``encoding`` ...).

    Yields:
      The open file object.
    """
    with atomic_path(path) as tmp:
        # O_EXCL on a fresh name; the mode is 0666 minus the umask, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()


def write_text(path: str | pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | pathlib.Path, obj: Any) -> None:
    """Writes ``obj`` as indented, key-sorted JSON atomically (:func:`atomic_open`)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz(path: str | pathlib.Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def check_creatable(path: str | pathlib.Path, flag: str, directory: bool = False) -> None:
    """Fails early, before any heavy work, if ``path`` cannot be written: the nearest existing
    ancestor must be a writable directory, and ``path`` itself, if it exists, a directory when
    ``directory`` (else not one).

    Args:
      path: the output file or directory.
      flag: how the user named it, for the message (``--workdir=runs/x``, ``output m.nii.gz``).
      directory: whether ``path`` is to be a directory.

    Raises:
      IOFailure: naming the path that is in the way and ``flag``.
    """
    from cmseg_jax.errors import IOFailure  # errors imports nothing from here

    path = pathlib.Path(path)
    if path.exists() and path.is_dir() != directory:
        what = "not a directory" if directory else "a directory"
        raise IOFailure(f"{path}: {what} ({flag})")
    existing = path.absolute().parent if not path.exists() else path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise IOFailure(f"{existing}: not a directory ({flag})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IOFailure(f"{existing}: not writable ({flag})")


def default_cache_root() -> pathlib.Path:
    """Where cmseg_jax caches data: ``$CMSEG_CACHE`` if set (``~`` expanded), else
    ``~/.cache/cmseg_jax``."""
    base = os.environ.get("CMSEG_CACHE")
    if base:
        return pathlib.Path(base).expanduser()
    return pathlib.Path.home() / ".cache" / "cmseg_jax"


def remove_orphans(directory: str | pathlib.Path, min_age_s: float = 0.0) -> list[pathlib.Path]:
    """Deletes temporary files and directories left in ``directory`` by killed writes.

    Args:
      directory: where to look (not recursive).
      min_age_s: only those not modified for this long (for directories other processes may be
        writing to at the same time, such as a shared cache).

    Returns:
      The paths removed.
    """
    directory = pathlib.Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    now = time.time()
    for path in directory.iterdir():
        if not _ORPHAN_RE.match(path.name):
            continue
        try:
            if now - path.lstat().st_mtime < min_age_s:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
