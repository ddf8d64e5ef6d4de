"""Whole volumes and directories: slices through the model and back onto the input grid,
masks and probability maps written like the input, and per-case and pooled metrics."""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from cmseg_jax import io_utils, metrics
from cmseg_jax.data import nifti, preprocess
from cmseg_jax.data.nifti import DataError
from cmseg_jax.predict.model import ScoreFn

NIFTI_RE = re.compile(r"\.nii(\.gz)?$")
_LITS_VOLUME_RE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_LITS_SEG_RE = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")


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
        and NIFTI_RE.search(p.name)
        and not _LITS_SEG_RE.match(p.name)
        and _visible(p, in_dir)
    ]


def _stem(path: pathlib.Path, case_name=None) -> str:
    stem = NIFTI_RE.sub("", path.name)
    return stem if case_name is None else case_name(stem)


def output_name(input_path: pathlib.Path, in_dir: pathlib.Path, case_name=None) -> pathlib.Path:
    """``in_dir/a/b.nii[.gz]`` -> ``a/b.nii.gz``: the relative path, always gzip-compressed.

    ``case_name`` (a data source's, :func:`naming`) maps a file's stem to its case's name: an
    nnU-Net input ``a/case_0000.nii.gz`` is written as ``a/case.nii.gz``.
    """
    rel = input_path.relative_to(in_dir)
    return rel.with_name(_stem(rel, case_name) + ".nii.gz")


def naming(in_dir) -> object:
    """The input directory's data source's ``case_name`` rule (None: names are kept)."""
    from cmseg_jax.data import sources

    in_dir = pathlib.Path(in_dir)
    for directory in (in_dir, in_dir.parent):  # imagesTs/ sits beside the dataset's description
        source = sources.for_directory(directory)
        if source.case_name is not None:
            return source.case_name
    return None


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
        if not (p.is_file() and NIFTI_RE.search(p.name) and _visible(p, label_dir)):
            continue
        m = _LITS_SEG_RE.match(p.name)
        key = f"lits:{int(m.group(1))}" if m else NIFTI_RE.sub("", p.name)
        if key in found:
            raise DataError(f"{p}: duplicate label (also {found[key]})")
        found[key] = p
    return found


def label_key(input_path: pathlib.Path, case_name=None) -> str:
    """The key of :func:`find_labels` an input is matched with (``case_name`` as for
    :func:`output_name`)."""
    m = _LITS_VOLUME_RE.match(input_path.name)
    return f"lits:{int(m.group(1))}" if m else _stem(input_path, case_name)


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
    case_name = naming(in_dir)
    names = [output_name(p, in_dir, case_name) for p in inputs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{in_dir / dup}: both .nii and .nii.gz inputs map to this output")
    labels = find_labels(label_dir) if label_dir is not None else {}
    if label_dir is not None and not any(label_key(p, case_name) in labels for p in inputs):
        raise DataError(f"{label_dir}: no label matches any input volume")
    results = []
    for path, name in tqdm(
        list(zip(inputs, names, strict=True)),
        unit="volume",
        disable=not progress,
        file=sys.stderr,
    ):
        label = labels.get(label_key(path, case_name))
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
