"""``python -m cmseg_jax.predict`` / ``cmseg-predict`` (usage: :mod:`cmseg_jax.predict`)."""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
from collections.abc import Sequence

from cmseg_jax import errors, io_utils, workdir_lock
from cmseg_jax.data.nifti import DataError
from cmseg_jax.predict.model import ModelScorer, load_sweep
from cmseg_jax.predict.volumes import (
    NIFTI_RE,
    format_metrics,
    segment_directory,
    segment_volume,
    summarize,
    write_metrics_csv,
)


def _parser() -> argparse.ArgumentParser:
    p = errors.ArgumentParser(
        prog="python -m cmseg_jax.predict",
        description="Segment the liver in CT volumes (NIfTI) with a trained sweep.",
    )
    p.add_argument("input", help="CT volume (.nii / .nii.gz) or a directory of them")
    p.add_argument("output", help="mask file (.nii / .nii.gz), or a directory for a directory")
    p.add_argument("--workdir", required=True, help="the sweep's workdir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="use this seed (an id from config.json)")
    which.add_argument(
        "--ensemble", action="store_true", help="average every non-diverged seed (default)"
    )
    p.add_argument("--epoch", type=int, help="checkpoint epoch (default: the latest)")
    p.add_argument("--prob", help="also write the float32 liver score (file, or directory)")
    p.add_argument("--label", help="ground truth for a single volume: print its metrics")
    p.add_argument("--label_dir", help="ground truth for a directory: per-case and global metrics")
    p.add_argument("--metrics_csv", help="write the metrics table to this CSV file")
    p.add_argument("--batch_size", type=int, help="slices per device call (eval.batch_size)")
    p.add_argument("--threshold", type=float, help="score threshold (default: the run's)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (module docstring). Returns the exit status: 0 ok, 1 bad data, 2 bad usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    return errors.run_main(functools.partial(_main, parser), args)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    src, dst = pathlib.Path(args.input), pathlib.Path(args.output)
    directory = src.is_dir()
    if directory and args.label:
        parser.error("--label is for a single volume; use --label_dir with a directory")
    if not directory and args.label_dir:
        parser.error("--label_dir is for a directory input; use --label with a single volume")
    if not directory and not NIFTI_RE.search(dst.name):
        parser.error(f"output {dst} must end in .nii or .nii.gz")
    if not directory and not src.exists():
        raise DataError(f"{src}: no such file or directory")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size {args.batch_size}: must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold {args.threshold}: must be in [0, 1]")
    if args.epoch is not None and args.epoch < 1:
        parser.error(f"--epoch {args.epoch}: must be >= 1")
    # Every output path before the model is restored: a mistake there costs no inference.
    io_utils.check_creatable(dst, f"output {dst}", directory=directory)
    if args.prob:
        io_utils.check_creatable(args.prob, f"--prob {args.prob}", directory=directory)
    if args.metrics_csv:
        io_utils.check_creatable(args.metrics_csv, f"--metrics_csv {args.metrics_csv}")
    try:
        sweep = load_sweep(args.workdir, args.epoch)
    except FileNotFoundError as e:
        raise errors.UsageError(f"--workdir {args.workdir}: {e}") from e
    try:
        scorer = ModelScorer(
            sweep, None if args.seed is None else [args.seed], batch_size=args.batch_size
        )
    except ValueError as e:
        raise errors.UsageError(str(e)) from e
    kind = f"seed {args.seed}" if args.seed is not None else f"ensemble of seeds {scorer.seeds}"
    threshold = sweep.threshold if args.threshold is None else args.threshold
    writer = workdir_lock.holder(sweep.workdir)
    state = f"; in progress, a sweep is writing it ({writer})" if writer else ""
    print(
        f"MODEL: {sweep.workdir} ({sweep.config.name}, method {sweep.config.method}, epoch "
        f"{sweep.epoch}{state}), {kind}; image size {sweep.image_size}, HU window "
        f"{sweep.hu_window}, threshold {threshold}",
        file=sys.stderr,
    )
    common = dict(
        image_size=sweep.image_size,
        hu_window=sweep.hu_window,
        threshold=threshold,
        batch_size=scorer.batch_size,
        progress=args.progress,
    )
    if directory:
        results = segment_directory(
            src, dst, scorer, label_dir=args.label_dir, prob_dir=args.prob, **common
        )
    else:
        results = [
            segment_volume(src, dst, scorer, prob_path=args.prob, label_path=args.label, **common)
        ]
    for r in results:
        line = f"{r.volume_path} -> {r.out_path}"
        if r.metrics is not None:
            line += f": {format_metrics(r.metrics)}"
        print(line)
    summary = summarize(results)
    if directory and summary["global"] is not None:
        n = len(summary["cases"])
        print(f"GLOBAL ({n} cases, pooled voxels): {format_metrics(summary['global'])}")
        print(f"MEAN PER CASE ({n} cases): {format_metrics(summary['mean'])}")
    if args.metrics_csv:
        write_metrics_csv(args.metrics_csv, results)
    return 0
