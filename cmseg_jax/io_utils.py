"""Atomic file writes: a file is absent, its old version, or complete; never half-written.

Every write goes to a temporary sibling ``.tmp-<random>-<name>`` (created with mode 0666 minus the
umask, like any ``open``) and is renamed over the target when complete. A write that fails (a full
disk) removes its temporary file; one cut short by a kill leaves it behind, and
:func:`remove_orphans` deletes such leftovers.
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
from typing import Any

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

    For writers that take a file name (``nibabel.save``); the parent directory is created.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or e.filename == str(tmp):  # name the file, not its stand-in
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _atomic(path: str | pathlib.Path, write, mode: str) -> None:
    with atomic_path(path) as tmp:
        # O_EXCL on a fresh name; the mode is 0666 minus the umask, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()


def write_text(path: str | pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    _atomic(path, lambda f: f.write(text), "w")


def write_json(path: str | pathlib.Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz(path: str | pathlib.Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary file and a rename."""
    _atomic(path, lambda f: np.savez_compressed(f, **arrays), "wb")


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
