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
import io
import pathlib
import sys

from absl import app

from cmseg_jax import errors
from cmseg_jax.data import lits

BUILDER_DIR = pathlib.Path(__file__).resolve().parent / "lits_slices"


def _argv(argv: list[str]) -> list[str]:
    args = list(argv[1:])
    if args and args[0] == "build":  # tolerate `... tfds_build build ...`
        args = args[1:]
    if not any(not a.startswith("-") for a in _positionals(args)):
        args = [str(BUILDER_DIR)] + args
    return [argv[0]] + args


def _positionals(args: list[str]) -> list[str]:
    """Arguments that are not flags or flag values (flags here all take one value, or none)."""
    flags_without_value = {
        "--overwrite",
        "--fail_if_exists",
        "--download_only",
        "--register_checksums",
        "--force_checksums_validation",
        "--update_metadata_only",
        "--add_name_to_manual_dir",
        "--nondeterministic_order",
        "--pdb",
        "--skip_if_published",
        "--experimental_latest_version",
    }
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = "=" not in a and a not in flags_without_value
        else:
            out.append(a)
    return out


def _flag_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


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


def main(argv=None) -> None:
    argv = list(argv if argv is not None else sys.argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    with errors.cli(debug):
        # Checked before TFDS creates anything under --data_dir.
        manual_dir = _flag_value(argv[1:], "--manual_dir")
        if manual_dir is not None:
            lits.find_cases(pathlib.Path(manual_dir).expanduser())
        config = _flag_value(argv[1:], "--config")
        if config is not None and not config.lstrip().startswith("{"):
            from cmseg_jax.data.lits_slices import lits_slices_dataset_builder as builder

            known = [c.name for c in builder.Builder.BUILDER_CONFIGS]
            if config not in known:
                raise errors.UsageError(
                    f"--config {config}: not a predefined config ({', '.join(known)}); "
                    """any other is given as JSON, e.g. --config '{"image_size": 256}'"""
                )

    from tensorflow_datasets.scripts.cli import build, cli_utils

    parse = cli_utils.make_flags_parser(build.Args, description=__doc__.splitlines()[0])

    def run(args) -> None:
        with errors.cli(debug):
            try:
                args.execute()
            except lits.DataError:
                raise
            except (ValueError, AssertionError) as e:  # TFDS: unknown config, no manual dir ...
                raise errors.UsageError(errors.first_line(e)) from e

    app.run(run, argv=_argv(argv), flags_parser=_one_line_parser(parse))


if __name__ == "__main__":
    main()
