"""``tfds build`` for the ``lits_slices`` dataset, without TensorFlow.

TFDS' ``tfds`` script imports TensorFlow for its other commands; this runs TFDS' own ``build``
command (same flags: ``--manual_dir``, ``--data_dir``, ``--config``, ``--overwrite`` ...) and
defaults the dataset to :mod:`cmseg_jax.data.lits_slices` (whose builder writes array_record)::

    python -m cmseg_jax.data.tfds_build --manual_dir /data/LiTS --data_dir ~/tensorflow_datasets \\
        --config s128-l8-b8-seed0

Mistakes end the command with one line on stderr: a data error (a missing segmentation, bad
labels ...) with exit status 1, a bad flag or config with 2 (``--debug`` adds the traceback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import sys

from absl import app

from cmseg_jax import errors
from cmseg_jax.data import lits

BUILDER_DIR = pathlib.Path(__file__).resolve().parent / "lits_slices"


def _one_line_parser(parse):
    """TFDS' flag parser with argparse's usage text reduced to its one error line."""

    def parsed(argv):
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                return parse(argv)
        except SystemExit as e:
            text = captured.getvalue()
            if e.code in (0, None):
                sys.stdout.write(text)
                raise
            lines = [ln for ln in text.splitlines() if "error:" in ln] or text.splitlines()[-1:]
            print(f"error: {lines[-1].split('error:', 1)[-1].strip()}", file=sys.stderr)
            sys.exit(errors.EXIT_USAGE)

    return parsed


def _check(args) -> None:
    """Refuses a bad manual directory or config name before TFDS creates anything."""
    manual_dir = args.paths.manual_dir
    if manual_dir is not None:
        lits.find_cases(pathlib.Path(os.fspath(manual_dir)).expanduser())
    config = args.generation.config
    if config is not None and not config.lstrip().startswith("{"):
        from cmseg_jax.data.lits_slices import lits_slices_dataset_builder as builder

        known = [c.name for c in builder.Builder.BUILDER_CONFIGS]
        if config not in known:
            raise errors.UsageError(
                f"--config {config}: not a predefined config ({', '.join(known)}); "
                """any other is given as JSON, e.g. --config '{"image_size": 256}'"""
            )


def _with_default_dataset(args):
    """TFDS' parsed arguments, with ``lits_slices`` as the dataset when none is named."""
    if args.positional_datasets or args.datasets:
        return args
    return dataclasses.replace(args, positional_datasets=[str(BUILDER_DIR)])


def parse_args(argv: list[str], debug: bool = False):
    """Parses a build command line with TFDS' own ``build`` parser (no copy of its flags here).

    Args:
      argv: the command line, program name first (a leading ``build`` is tolerated).
      debug: show tracebacks of the checks' errors.

    Returns:
      TFDS' ``build.Args``, building :data:`BUILDER_DIR` (``lits_slices``) when no dataset is
      named. A bad flag, manual directory or config name ends the command with one line.
    """
    argv = list(argv)
    if argv[1:2] == ["build"]:  # tolerate `... tfds_build build ...`
        del argv[1]
    from tensorflow_datasets.scripts.cli import build, cli_utils

    def parse(argv):
        # TFDS' make_flags_parser, except that TFDS' own flags win over absl flags of the same
        # name defined elsewhere in the process (the sweep's CLI defines a global --config).
        parser = cli_utils.ArgumentParser(
            description=__doc__.splitlines()[0], allow_abbrev=False, conflict_handler="resolve"
        )
        parser.add_arguments(build.Args, dest="args")
        return parser.parse_args(argv[1:]).args

    args = _one_line_parser(parse)(argv)
    with errors.cli(debug):
        _check(args)
    return _with_default_dataset(args)


def main(argv=None) -> None:
    argv = list(argv if argv is not None else sys.argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]

    def run(args) -> None:
        with errors.cli(debug):
            try:
                args.execute()
            except lits.DataError:
                raise
            except (ValueError, AssertionError) as e:  # TFDS: unknown config, no manual dir ...
                raise errors.UsageError(errors.first_line(e)) from e

    app.run(run, argv=argv, flags_parser=lambda argv: parse_args(argv, debug))


if __name__ == "__main__":
    main()
