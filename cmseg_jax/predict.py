"""Segments whole CT volumes with a trained sweep: NIfTI in, liver mask NIfTI out.

    python -m cmseg_jax.predict --workdir runs/cam_beta --ensemble \
        volume-7.nii.gz liver-7.nii.gz --prob prob-7.nii.gz --label segmentation-7.nii.gz
    python -m cmseg_jax.predict --workdir runs/cam_beta --seed 3 CT_DIR OUT_DIR --label_dir CT_DIR

A volume is segmented slice by slice: every axial slice goes through the training loader's
preprocessing (:mod:`cmseg_jax.data.preprocess` states each step and choice), the model scores
batches of ``--batch_size`` slices on the device (one compiled function, fixed batch shape, the last
batch padded with air), and the scores are mapped back through the inverse of every step and
thresholded on the input's own grid. The mask (uint8, 1 = liver) and the optional probability map
(float32 liver score in [0, 1]) have the input's exact shape, affine and header orientation.

Models: ``--seed S`` uses seed S of the sweep (a seed id from ``config.json``, not a row number);
``--ensemble`` (the default) averages the liver score of every seed that did not diverge. The mask
threshold is the run's: 0.5 for ``full`` / ``cam_beta``, ``cam.threshold`` for ``cam_alpha``
(applied to the averaged score for an ensemble).

Directories: with ``IN`` a directory, every ``*.nii`` / ``*.nii.gz`` under it (hidden paths and
LiTS ``segmentation-N`` files skipped) is segmented into ``OUT/<same relative path>``, always
``.nii.gz`` (the nnU-Net convention: the mask carries the input's name); ``--prob`` is then a
directory too. ``--label_dir`` gives ground truth: ``segmentation-N.nii[.gz]`` anywhere under it for
an input ``volume-N``, else a file of the input's name. Liver is label 1 or 2 (tumour is liver).

Metrics (``--label`` / ``--label_dir``): per case Dice, IoU, MCC, precision and recall over the
voxels of the input grid; over a directory also the *global* values (one confusion matrix pooled
over every voxel of every case, the LiTS "Dice global") and the mean per-case Dice ("Dice per
case"). ``--metrics_csv`` writes them as a table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from tqdm import tqdm

from cmseg_jax import checkpoint, errors, io_utils, methods, metrics, train
from cmseg_jax import workdir as workdir_io
from cmseg_jax.data import nifti, preprocess
from cmseg_jax.data.nifti import DataError
from cmseg_jax.train import TrainState

ScoreFn = Callable[[np.ndarray], np.ndarray]

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$")
_LITS_VOLUME_RE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_LITS_SEG_RE = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")


# ----------------------------------------------------------------------------------------------
# Loading a sweep.


@dataclasses.dataclass(frozen=True, eq=False)
class Sweep:
    """A finished (or checkpointed) sweep, restored for inference.

    Attributes:
      workdir: the sweep's workdir.
      config: its resolved config.
      seeds: (S,) seed ids, the row order of ``states``.
      epoch: the checkpoint epoch restored (1-based).
      model: the network (:func:`cmseg_jax.train.make_model`).
      method: the training method (its pixel scores and threshold).
      states: the seed-stacked TrainState, leading axis S.
      diverged: (S,) bool, the seeds whose training saw a non-finite loss.
    """

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    seeds: tuple[int, ...]
    epoch: int
    model: Any
    method: methods.Method
    states: TrainState
    diverged: np.ndarray

    def predict(self, state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
        """One seed's (B, S, S) liver scores of float images (B, S, S)."""
        gate = self.config.cam.gate_with_classifier
        return train.predict_scores(state, images, model=self.model, method=self.method, gate=gate)

    @property
    def threshold(self) -> float:
        return self.method.threshold(self.config)

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def hu_window(self) -> tuple[float, float]:
        lo, hi = self.config.data.hu_window
        return float(lo), float(hi)


def load_sweep(workdir, epoch: int | None = None) -> Sweep:
    """Restores a sweep's seed-stacked state from its Orbax checkpoints.

    Args:
      workdir: the sweep's workdir (``config.json`` and ``checkpoints/``).
      epoch: checkpoint to restore; the latest by default.

    Returns:
      The :class:`Sweep`.

    Without ``epoch``, the newest intact checkpoint (each corrupt newer one is reported on stderr
    and skipped; nothing is moved).

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      UsageError: no checkpoint of ``epoch`` (never written, or pruned).
      IOFailure: the checkpoint is corrupt (checksums) or no checkpoint is intact.
    """
    workdir = pathlib.Path(workdir)
    config, seeds = workdir_io.read_config(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{workdir / 'checkpoints'}: no checkpoints")
    model = train.make_model(config)
    init = functools.partial(
        train.init_state,
        model=model,
        tx=train.make_optimizer(config),
        image_size=config.data.image_size,
    )
    keys = jnp.stack([train.seed_key(config.root_seed, s) for s in seeds])
    like = jax.eval_shape(jax.vmap(init), keys)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    try:
        kept = ckpt.epochs()
        if not kept:
            raise FileNotFoundError(f"{ckpt.directory}: no checkpoint")
        if epoch is None:

            def warn(line: str) -> None:
                print(f"warning: {line}; using an older one", file=sys.stderr, flush=True)

            epoch, states = ckpt.restore_latest(like, warn, quarantine=False)
            if epoch is None:
                raise errors.IOFailure(f"{ckpt.directory}: no intact checkpoint")
        else:
            if int(epoch) not in kept:
                raise errors.UsageError(
                    f"--epoch {epoch}: no checkpoint of that epoch in {ckpt.directory} "
                    f"(kept: {', '.join(map(str, kept))})"
                )
            states = ckpt.restore(int(epoch), like)
    finally:
        ckpt.close()
    return Sweep(
        workdir=workdir,
        config=config,
        seeds=tuple(seeds),
        epoch=int(epoch),
        model=model,
        method=methods.of(config),
        states=states,
        diverged=np.asarray(states.diverged, bool),
    )


class ModelScorer:
    """The liver score of one seed or of a seed ensemble, as a ``score_fn`` for segment_volume.

    Calls take (n, S, S) model-grid slices for any n and run the model in batches of exactly
    ``batch_size`` (the last one padded with air, -1), so the function is compiled once.
    An ensemble's score is the mean of its seeds' scores, accumulated one seed at a time
    (``lax.scan``) so that memory does not grow with the number of seeds.

    Args:
      sweep: the restored sweep.
      seeds: seed ids to average; None = every seed that did not diverge.
      batch_size: slices per device call; the run's ``eval.batch_size`` by default.

    Attributes:
      seeds: the seed ids used.
      batch_size: slices per device call.
      image_size: S.
      num_traces: how often the device function was traced (1 after any number of calls).
    """

    def __init__(self, sweep: Sweep, seeds: Sequence[int] | None = None, batch_size=None):
        all_seeds = list(sweep.seeds)
        if seeds is None:
            seeds = [s for s, d in zip(all_seeds, sweep.diverged, strict=True) if not d]
            if not seeds:
                raise ValueError(f"{sweep.workdir}: every seed diverged; nothing to ensemble")
        seeds = [int(s) for s in seeds]
        rows = []
        for s in seeds:
            if s not in all_seeds:
                raise ValueError(f"seed {s} is not in the sweep (seeds: {all_seeds})")
            if sweep.diverged[all_seeds.index(s)]:
                raise ValueError(
                    f"seed {s} diverged during training (frozen at its last finite state); "
                    "pick another seed or --ensemble"
                )
            rows.append(all_seeds.index(s))
        self.seeds = seeds
        self.batch_size = int(batch_size or sweep.config.eval.batch_size)
        self.image_size = sweep.image_size
        self.num_traces = 0
        index = np.asarray(rows)
        states = jax.tree_util.tree_map(lambda x: x[index], sweep.states)
        # Inference reads params and batch_stats only: leave the Adam moments on the host.
        self._states = jax.device_put(states.replace(opt_state=None))
        predict = sweep.predict

        def mean_score(states, images):
            self.num_traces += 1  # runs at trace time only

            def body(total, state):
                return total + predict(state, images), None

            zero = jnp.zeros(images.shape, jnp.float32)
            total, _ = lax.scan(body, zero, states)
            return total / len(rows)

        self._fn = jax.jit(mean_score)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(n, S, S) float32 slices in [-1, 1] -> (n, S, S) float32 liver scores in [0, 1]."""
        images = np.asarray(images, np.float32)
        n, b, size = images.shape[0], self.batch_size, self.image_size
        if images.shape[1:] != (size, size):
            raise ValueError(f"images must be (n, {size}, {size}), got {images.shape}")
        out = []
        for start in range(0, n, b):
            chunk = images[start : start + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.full((pad, size, size), -1.0, np.float32)])
            out.append(np.asarray(self._fn(self._states, chunk))[: b - pad])
        return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


# ----------------------------------------------------------------------------------------------
# One volume.


def volume_confusion(pred, target) -> np.ndarray:
    """(4,) int64 counts (tp, fp, fn, tn) of a predicted mask against a label volume.

    Args:
      pred: (...) nonzero = predicted liver.
      target: (...) same shape; nonzero (liver 1 or tumour 2) = liver.
    """
    pred = np.asarray(pred) != 0
    target = np.asarray(target) != 0
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, label {target.shape}")
    tp = np.count_nonzero(pred & target)
    fp = np.count_nonzero(pred) - tp
    fn = np.count_nonzero(target) - tp
    return np.asarray([tp, fp, fn, pred.size - tp - fp - fn], np.int64)


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """What segment_volume did for one volume.

    Attributes:
      volume_path: the input.
      out_path: the mask written.
      prob_path: the probability map written, or None.
      label_path: the ground truth compared against, or None.
      shape: the input's (and outputs') shape.
      confusion: (4,) int64 voxel counts (tp, fp, fn, tn) against the label, or None.
    """

    volume_path: pathlib.Path
    out_path: pathlib.Path
    prob_path: pathlib.Path | None
    label_path: pathlib.Path | None
    shape: tuple[int, ...]
    confusion: np.ndarray | None = None

    @property
    def metrics(self) -> dict[str, float] | None:
        """Dice, IoU, MCC, precision, recall (and accuracy) against the label, or None."""
        if self.confusion is None:
            return None
        return {k: float(v) for k, v in metrics.metrics_from_confusion(self.confusion).items()}


def segment_volume(
    volume_path,
    out_path,
    score_fn: ScoreFn,
    *,
    image_size: int,
    hu_window=(-1024.0, 1024.0),
    threshold: float = 0.5,
    batch_size: int = 16,
    prob_path=None,
    label_path=None,
    progress: bool = False,
) -> CaseResult:
    """Segments one CT volume slice by slice and writes the mask on the input's grid.

    Args:
      volume_path: input NIfTI (any orientation, dtype, scaling; 3-D or 4-D with one volume).
      out_path: mask to write (uint8, 1 = liver), shape / affine / header orientation of the input.
      score_fn: (n, S, S) float32 model-grid slices in [-1, 1] (n <= batch_size) -> (n, S, S) liver
        scores in [0, 1]; a :class:`ModelScorer`, or any function (e.g. an oracle in tests).
      image_size: S, the model's input side (the run's ``data.image_size``).
      hu_window: the run's ``data.hu_window``.
      threshold: liver where the score mapped back to the input grid is >= threshold.
      batch_size: slices per score_fn call.
      prob_path: if given, the float32 liver score on the input's grid is written there too.
      label_path: if given, the ground truth to count the confusion matrix against.
      progress: show a tqdm bar over slices.

    Returns:
      The :class:`CaseResult`.

    Raises:
      DataError: the input or label file is unreadable or malformed (one line, naming the file).
    """
    volume = nifti.load_volume(volume_path)
    labels = None if label_path is None else nifti.load_labels(volume, label_path)
    x, y, z = volume.canonical_shape
    mask = np.zeros((x, y, z), np.uint8)
    prob = np.zeros((x, y, z), np.float32) if prob_path is not None else None
    bar = tqdm(
        total=z,
        unit="slice",
        desc=volume.path.name,
        disable=not progress,
        leave=False,
        file=sys.stderr,
    )
    non_finite = 0
    for start in range(0, z, batch_size):
        zs = slice(start, min(start + batch_size, z))
        hu = preprocess.axial_slices(volume.hu, zs)
        images = preprocess.images_to_model(hu, image_size, hu_window)
        scores = np.asarray(score_fn(images), np.float32)
        if scores.shape != images.shape:
            raise ValueError(f"score_fn returned {scores.shape} for input {images.shape}")
        native = preprocess.postprocess_scores(scores, (x, y))  # (n, X, Y)
        non_finite += int(np.count_nonzero(~np.isfinite(native)))
        mask[:, :, zs] = np.moveaxis(native >= threshold, 0, 2)
        if prob is not None:
            prob[:, :, zs] = np.moveaxis(native, 0, 2)
        bar.update(zs.stop - zs.start)
    bar.close()
    if non_finite:
        print(
            f"{volume.path}: warning: {non_finite} non-finite scores (counted as background)",
            file=sys.stderr,
        )
    out_path = nifti.write_like(mask, volume, out_path, np.uint8)
    if prob is not None:
        prob_path = nifti.write_like(prob, volume, prob_path, np.float32)
    confusion = None if labels is None else volume_confusion(mask, labels)
    return CaseResult(
        volume_path=volume.path,
        out_path=pathlib.Path(out_path),
        prob_path=None if prob_path is None else pathlib.Path(prob_path),
        label_path=None if label_path is None else pathlib.Path(label_path),
        shape=volume.shape,
        confusion=confusion,
    )


# ----------------------------------------------------------------------------------------------
# Directories.


def _visible(path: pathlib.Path, root: pathlib.Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def find_inputs(in_dir) -> list[pathlib.Path]:
    """Every ``*.nii`` / ``*.nii.gz`` under in_dir, except hidden paths and ``segmentation-N``."""
    in_dir = pathlib.Path(in_dir)
    return [
        p
        for p in sorted(in_dir.rglob("*"))
        if p.is_file()
        and _NIFTI_RE.search(p.name)
        and not _LITS_SEG_RE.match(p.name)
        and _visible(p, in_dir)
    ]


def output_name(input_path: pathlib.Path, in_dir: pathlib.Path) -> pathlib.Path:
    """``in_dir/a/b.nii[.gz]`` -> ``a/b.nii.gz``: the relative path, always gzip-compressed."""
    rel = input_path.relative_to(in_dir)
    return rel.with_name(_NIFTI_RE.sub("", rel.name) + ".nii.gz")


def find_labels(label_dir) -> dict[str, pathlib.Path]:
    """Label files under label_dir, keyed by what an input's name is matched on.

    ``segmentation-N.nii[.gz]`` is keyed ``'lits:N'`` (matching ``volume-N``); every other NIfTI
    file by its name without extension.
    """
    label_dir = pathlib.Path(label_dir)
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: not a directory")
    found: dict[str, pathlib.Path] = {}
    for p in sorted(label_dir.rglob("*")):
        if not (p.is_file() and _NIFTI_RE.search(p.name) and _visible(p, label_dir)):
            continue
        m = _LITS_SEG_RE.match(p.name)
        key = f"lits:{int(m.group(1))}" if m else _NIFTI_RE.sub("", p.name)
        if key in found:
            raise DataError(f"{p}: duplicate label (also {found[key]})")
        found[key] = p
    return found


def label_key(input_path: pathlib.Path) -> str:
    """The key of :func:`find_labels` an input is matched with."""
    m = _LITS_VOLUME_RE.match(input_path.name)
    return f"lits:{int(m.group(1))}" if m else _NIFTI_RE.sub("", input_path.name)


def segment_directory(
    in_dir,
    out_dir,
    score_fn: ScoreFn,
    *,
    label_dir=None,
    prob_dir=None,
    progress: bool = False,
    **kwargs,
) -> list[CaseResult]:
    """Segments every volume under in_dir (see the module docstring for names and labels).

    Args:
      in_dir: directory of input volumes.
      out_dir: directory for the masks (created).
      score_fn: as for :func:`segment_volume`.
      label_dir: optional directory of ground truth.
      prob_dir: optional directory for probability maps.
      progress: show tqdm bars over volumes and slices.
      **kwargs: image_size, hu_window, threshold, batch_size for :func:`segment_volume`.

    Returns:
      One :class:`CaseResult` per input, in path order.

    Raises:
      DataError: no inputs, or an input / label file is malformed.
    """
    in_dir, out_dir = pathlib.Path(in_dir), pathlib.Path(out_dir)
    inputs = find_inputs(in_dir)
    if not inputs:
        raise DataError(f"{in_dir}: no .nii or .nii.gz files found")
    names = [output_name(p, in_dir) for p in inputs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{in_dir / dup}: both .nii and .nii.gz inputs map to this output")
    labels = find_labels(label_dir) if label_dir is not None else {}
    if label_dir is not None and not any(label_key(p) in labels for p in inputs):
        raise DataError(f"{label_dir}: no label matches any input volume")
    results = []
    for path, name in tqdm(
        list(zip(inputs, names, strict=True)),
        unit="volume",
        disable=not progress,
        file=sys.stderr,
    ):
        label = labels.get(label_key(path))
        if label_dir is not None and label is None:
            print(f"{path}: warning: no label under {label_dir}; not scored", file=sys.stderr)
        results.append(
            segment_volume(
                path,
                out_dir / name,
                score_fn,
                prob_path=None if prob_dir is None else pathlib.Path(prob_dir) / name,
                label_path=label,
                progress=progress,
                **kwargs,
            )
        )
    return results


def summarize(results: Sequence[CaseResult]) -> dict:
    """Per-case and pooled metrics of the scored results.

    Returns:
      {"cases": [(volume_path, metrics dict)], "global": metrics of the summed confusion matrix,
      "mean": per-case metrics averaged over cases, "confusion": (4,) int64 summed counts};
      "global" and "mean" are None when no case was scored.
    """
    scored = [r for r in results if r.confusion is not None]
    out = {"cases": [(r.volume_path, r.metrics) for r in scored], "global": None, "mean": None}
    if scored:
        total = np.sum([r.confusion for r in scored], axis=0)
        out["confusion"] = total
        out["global"] = {k: float(v) for k, v in metrics.metrics_from_confusion(total).items()}
        out["mean"] = {
            k: float(np.mean([m[k] for _, m in out["cases"]])) for k in metrics.METRIC_NAMES
        }
    return out


_SHOWN = ("dice", "iou", "mcc", "precision", "recall")


def format_metrics(m: dict[str, float]) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in _SHOWN)


def write_metrics_csv(path, results: Sequence[CaseResult]) -> None:
    """One row per scored case and a final ``GLOBAL`` row (pooled confusion matrix)."""
    summary = summarize(results)
    with io_utils.atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", *_SHOWN, "tp", "fp", "fn", "tn"])
        for r in results:
            if r.confusion is not None:
                m = r.metrics
                w.writerow([str(r.volume_path), *(m[k] for k in _SHOWN), *r.confusion.tolist()])
        if summary["global"] is not None:
            g = summary["global"]
            w.writerow(["GLOBAL", *(g[k] for k in _SHOWN), *summary["confusion"].tolist()])


# ----------------------------------------------------------------------------------------------
# CLI.


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
    if not directory and not _NIFTI_RE.search(dst.name):
        parser.error(f"output {dst} must end in .nii or .nii.gz")
    if not directory and not src.exists():
        raise DataError(f"{src}: no such file or directory")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size {args.batch_size}: must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold {args.threshold}: must be in [0, 1]")
    if args.epoch is not None and args.epoch < 1:
        parser.error(f"--epoch {args.epoch}: must be >= 1")
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
    print(
        f"MODEL: {sweep.workdir} ({sweep.config.name}, method {sweep.config.method}, epoch "
        f"{sweep.epoch}), {kind}; image size {sweep.image_size}, HU window {sweep.hu_window}, "
        f"threshold {threshold}",
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


if __name__ == "__main__":
    sys.exit(main())
