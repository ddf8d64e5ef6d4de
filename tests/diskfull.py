"""A full disk, simulated in-process: file writes fail with ENOSPC once a byte budget is spent.

``install(budget, pattern)`` wraps Python's ``open`` / ``os.fdopen``: every file opened for
writing whose path matches the regular expression ``pattern`` shares one budget of ``budget``
bytes; the write that crosses it writes the bytes that still fit and raises ``OSError(ENOSPC)``,
as a full disk does. Used as a command runner::

    python -c "import tests.diskfull as d; d.main()" BUDGET PATTERN -m cmseg_jax.sweep ARGS...
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import runpy
import sys


class _Budget:
    def __init__(self, remaining: int):
        self.remaining = remaining


class _Limited:
    """A file object whose writes draw on a shared budget."""

    def __init__(self, f, name: str, budget: _Budget):
        self._f, self._name, self._budget = f, name, budget

    def write(self, data):
        left = self._budget.remaining
        if len(data) > left:
            if left:
                self._f.write(data[:left])
            self._budget.remaining = 0
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)
        self._budget.remaining -= len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


def install(budget: int, pattern: str) -> None:
    shared, regex = _Budget(budget), re.compile(pattern)
    real_open, real_fdopen = builtins.open, os.fdopen

    def writing(mode) -> bool:
        return any(c in str(mode) for c in "wax+")

    def limited_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if writing(mode) and isinstance(file, str | os.PathLike) and regex.search(str(file)):
            return _Limited(f, os.fspath(file), shared)
        return f

    def limited_fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}")
        return _Limited(f, path, shared) if writing(mode) and regex.search(path) else f

    builtins.open = io.open = limited_open
    os.fdopen = limited_fdopen


def main() -> None:
    budget, pattern, flag, module, *args = sys.argv[1:]
    assert flag == "-m", "usage: BUDGET PATTERN -m MODULE ARGS..."
    install(int(budget), pattern)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
