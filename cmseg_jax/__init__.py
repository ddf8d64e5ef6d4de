"""cmseg_jax: many seeds of ConvMixerSeg trained at once (README.md)."""

import pathlib as _pathlib
import sys as _sys


def _launched_as_command() -> bool:
    """Whether this process is one of the package's commands (``python -m cmseg_jax.…`` or a
    ``cmseg-…`` console script), not a program importing the library."""
    argv = getattr(_sys, "orig_argv", [])
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("cmseg_jax"):
        return True
    return bool(_sys.argv) and _pathlib.Path(_sys.argv[0]).name.startswith("cmseg-")


if _launched_as_command():  # first thing: SIGTERM during the imports is one line, not a -15
    from cmseg_jax import errors as _errors

    _errors.handle_sigterm_from_startup()
