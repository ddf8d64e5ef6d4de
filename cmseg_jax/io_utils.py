"""Atomic file writes: a file is absent, its old version, or complete; never half-written."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np


def _atomic(path: str | pathlib.Path, write, mode: str) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    _atomic(path, lambda f: f.write(text), "w")


def write_json(path: str | pathlib.Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz(path: str | pathlib.Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary file and a rename."""
    _atomic(path, lambda f: np.savez_compressed(f, **arrays), "wb")
