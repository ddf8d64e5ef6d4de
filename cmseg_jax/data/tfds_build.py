"""``tfds build`` for the ``lits_slices`` dataset, without TensorFlow.

TFDS' ``tfds`` script imports TensorFlow for its other commands; this runs TFDS' own ``build``
command (same flags: ``--manual_dir``, ``--data_dir``, ``--config``, ``--overwrite`` ...) and
defaults the dataset to :mod:`cmseg_jax.data.lits_slices` (whose builder writes array_record)::

    python -m cmseg_jax.data.tfds_build --manual_dir /data/LiTS --data_dir ~/tensorflow_datasets \\
        --config s128-l8-b8-seed0

Data errors (a missing segmentation, bad labels ...) end the command with their one-line message.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app

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


def main(argv=None) -> None:
    from tensorflow_datasets.scripts.cli import build, cli_utils

    parse = cli_utils.make_flags_parser(build.Args, description=__doc__.splitlines()[0])

    def run(args) -> None:
        try:
            args.execute()
        except lits.DataError as e:
            sys.exit(f"error: {e}")

    app.run(run, argv=_argv(list(argv if argv is not None else sys.argv)), flags_parser=parse)


if __name__ == "__main__":
    main()
