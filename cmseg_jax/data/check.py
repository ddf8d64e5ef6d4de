"""Integrity check of a dataset directory, before a long run finds a bad file.

    python -m cmseg_jax.data.check /data/LiTS [--hu_min -3100,-500] [--hu_max 100,4000]

The directory's layout is that of the data source that claims it
(:func:`cmseg_jax.data.sources.for_directory`: LiTS' when none other does). Every case goes
through the training loader's readers (the source's ``scan``, for LiTS
:func:`cmseg_jax.data.lits.scan_cases`, then :func:`cmseg_jax.data.nifti.load_case`), so a file
that passes here loads in training. Checked (in LiTS' terms; other layouts name their own files):

* every ``volume-N`` has a ``segmentation-N`` (all missing ones are listed, not just the first);
  a segmentation without its volume, or a second file of the same kind for one case, is reported;
* both files are readable 3-D images (a trailing singleton 4th dimension is allowed) with the same
  shape and affine (the loader's tolerance);
* labels lie in {0, 1, 2}; a segmentation without any liver is a warning;
* Hounsfield units are finite and plausible: the minimum in ``--hu_min`` (default [-3100, -500])
  and the maximum in ``--hu_max`` (default [100, 4000]). Why these bounds: CT stores air at about
  -1000 HU (scanners clip at -1024) and pads outside the reconstruction circle with -2048 or -3024
  (hence -3100); a scan of the abdomen always contains air, so a minimum above -500 almost always
  means a missing rescale intercept (raw 0..4095 values) or data already normalised. Bone and
  contrast exceed 100 HU, so a lower maximum means the same; 12-bit data end at 3071 and an
  extended-range scan with metal can reach ~30000, so a maximum above 4000 usually means a wrong
  slope (or metal: widen ``--hu_max`` if the scan really holds it);
* an oblique affine (slices not exactly axial after reorientation) is a warning;
* there are volumes enough for every split (3 or more with the thesis' fractions): the loader's
  own rule (:func:`cmseg_jax.data.lits.check_split`), refused in the sweep's words.

Reported per case (one line, the file name first, no colon): shape, stored dtype, orientation
(``nibabel.aff2axcodes`` of the stored axes), in-plane voxel spacing and slice spacing in mm (along
the canonical RAS+ axes), the HU range and the number of slices with liver. Every problem is one
line ``<file>: <what is wrong>`` (warnings read ``<file>: warning: ...``) on stderr; the cases
and the summary that closes the report go to stdout. Exit status 1 when any error was found, else
0 (warnings do not fail the check).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from cmseg_jax import errors
from cmseg_jax.data import lits, nifti, sources
from cmseg_jax.data.lits import Layout
from cmseg_jax.data.nifti import DataError

HU_MIN_RANGE = (-3100.0, -500.0)
HU_MAX_RANGE = (100.0, 4000.0)
# Largest deviation of a voxel axis from the nearest world axis before the affine counts as oblique.
OBLIQUE_DEGREES = 1.0


@dataclasses.dataclass
class CaseReport:
    """What was found for one case.

    Attributes:
      case_id: N of volume-N.
      volume_path: the CT file.
      seg_path: its segmentation, or None if missing.
      info: one-line description ('' if the case could not be read).
      errors: '<file>: <what>' lines.
      warnings: '<file>: warning: <what>' lines.
      axcodes: orientation of the stored axes, e.g. 'LPS'.
      spacing: (3,) mm along the canonical x, y, z axes.
      shape: stored 3-D shape.
    """

    case_id: int
    volume_path: pathlib.Path
    seg_path: pathlib.Path | None
    info: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    axcodes: str = ""
    spacing: np.ndarray | None = None
    shape: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def _obliquity_degrees(affine: np.ndarray) -> float:
    """Largest angle between a voxel axis and the world axis it is reoriented to."""
    rzs = np.asarray(affine, np.float64)[:3, :3]
    cols = rzs / np.linalg.norm(rzs, axis=0, keepdims=True)
    cosines = np.max(np.abs(cols), axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def check_case(
    case_id: int,
    volume_path,
    seg_path,
    hu_min_range=HU_MIN_RANGE,
    hu_max_range=HU_MAX_RANGE,
) -> CaseReport:
    """Checks one case through the training loader and the plausibility rules above.

    Args:
      case_id: N.
      volume_path: volume-N file.
      seg_path: segmentation-N file, or None when it is missing (reported by the layout scan).
      hu_min_range: (lo, hi) allowed for the volume's minimum HU.
      hu_max_range: (lo, hi) allowed for the volume's maximum HU.

    Returns:
      The :class:`CaseReport`.
    """
    volume_path = pathlib.Path(volume_path)
    report = CaseReport(case_id, volume_path, None if seg_path is None else pathlib.Path(seg_path))
    if seg_path is None:
        return report
    try:
        hu, labels = nifti.load_case(volume_path, seg_path)
    except DataError as e:
        report.errors.append(str(e))
        return report
    img = nib.load(volume_path)  # header only: load_case has validated it
    affine = np.asarray(img.affine, np.float64)
    report.axcodes = "".join(nib.aff2axcodes(affine))
    spacing = report.spacing = nifti.canonical_spacing(affine)
    report.shape = tuple(int(s) for s in img.shape[:3])

    name = volume_path
    finite = np.isfinite(hu)
    if not finite.all():
        report.errors.append(f"{name}: {int(np.count_nonzero(~finite))} non-finite voxel values")
    lo = float(hu[finite].min()) if finite.any() else float("nan")
    hi = float(hu[finite].max()) if finite.any() else float("nan")
    if not hu_min_range[0] <= lo <= hu_min_range[1]:
        report.errors.append(
            f"{name}: minimum {lo:g} HU outside [{hu_min_range[0]:g}, {hu_min_range[1]:g}] "
            "(missing rescale slope/intercept, or not in Hounsfield units?)"
        )
    if not hu_max_range[0] <= hi <= hu_max_range[1]:
        report.errors.append(
            f"{name}: maximum {hi:g} HU outside [{hu_max_range[0]:g}, {hu_max_range[1]:g}] "
            "(missing rescale slope/intercept, or not in Hounsfield units?)"
        )
    liver_slices = int(np.count_nonzero(np.any(labels > 0, axis=(0, 1))))
    if liver_slices == 0:
        report.warnings.append(f"{seg_path}: warning: no liver (labels 1 or 2) in any slice")
    angle = _obliquity_degrees(affine)
    if angle > OBLIQUE_DEGREES:
        report.warnings.append(
            f"{name}: warning: oblique affine ({angle:.1f} degrees off the nearest axes); slices "
            "are taken along the closest canonical axis, without resampling"
        )
    x, y, z = hu.shape
    kinds = ",".join(str(v) for v in np.unique(labels))
    report.info = (
        f"{volume_path.name}  {'x'.join(map(str, report.shape))} {img.get_data_dtype()}  "
        f"orientation {report.axcodes}  spacing {spacing[0]:.3g} x {spacing[1]:.3g} mm, "
        f"slices {spacing[2]:.3g} mm  (canonical {x}x{y}x{z})  HU [{lo:g}, {hi:g}]  "
        f"labels {{{kinds}}}  liver in {liver_slices}/{z} slices"
    )
    return report


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}" if values else "n/a"


def check_directory(
    data_dir,
    hu_min_range=HU_MIN_RANGE,
    hu_max_range=HU_MAX_RANGE,
    progress: bool = False,
    out=None,
    problems=None,
) -> tuple[Layout, list[CaseReport], str]:
    """Checks every case under data_dir, printing each line as it is found: the cases and the
    summary to ``out``, errors and warnings to ``problems``.

    Args:
      data_dir: the dataset directory.
      hu_min_range: (lo, hi) allowed for a volume's minimum HU.
      hu_max_range: (lo, hi) allowed for a volume's maximum HU.
      progress: show a tqdm bar over cases (on stderr).
      out: text stream for the report (default: stdout).
      problems: text stream for the error and warning lines (default: stderr).

    Returns:
      (the directory's layout and its problems, one report per volume, the summary text).
    """
    out = sys.stdout if out is None else out
    problems = sys.stderr if problems is None else problems
    layout = sources.scan_directory(data_dir)  # the loader's own rules, every problem listed
    if layout.cases:
        try:  # the loader's split rule, with the thesis' fractions
            lits.check_split(data_dir, [n for n, _, _ in layout.cases])
        except DataError as e:
            layout.errors.append(str(e))
    for line in layout.errors + layout.warnings:
        print(line, file=problems, flush=True)
    reports = []
    for n, vol, seg in tqdm(layout.cases, unit="case", disable=not progress, file=sys.stderr):
        report = check_case(n, vol, seg, hu_min_range, hu_max_range)
        if report.info:
            print(report.info, file=out, flush=True)
        for line in report.errors + report.warnings:
            print(line, file=problems, flush=True)
        reports.append(report)
    summary = summarize(layout, reports)
    print(summary, file=out, flush=True)
    return layout, reports, summary


def num_errors(layout: Layout, reports: Sequence[CaseReport]) -> int:
    """Errors found in the layout and in every case."""
    return len(layout.errors) + sum(len(r.errors) for r in reports)


def summarize(layout: Layout, reports: Sequence[CaseReport]) -> str:
    """The closing lines: counts, orientations, spacings."""
    warnings = len(layout.warnings) + sum(len(r.warnings) for r in reports)
    read = [r for r in reports if r.spacing is not None]
    orient = collections.Counter(r.axcodes for r in read)
    complete = [r for r in reports if r.seg_path is not None]
    lines = [
        f"SUMMARY: {len(reports)} volumes: {sum(r.ok for r in complete)} cases ok, "
        f"{sum(not r.ok for r in complete)} with errors, {len(reports) - len(complete)} without "
        f"segmentation; {num_errors(layout, reports)} errors, {warnings} warnings",
        "orientations: "
        + (", ".join(f"{k} x{v}" for k, v in orient.most_common()) if orient else "n/a"),
        f"in-plane spacing {_span([float(s) for r in read for s in r.spacing[:2]])} mm, "
        f"slice spacing {_span([float(r.spacing[2]) for r in read])} mm, "
        f"slices per volume {_span([float(r.shape[2]) for r in read])}",
    ]
    return "\n".join(lines)


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"expected LO <= HI, got {text!r}")
    return lo, hi


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (module docstring). Returns 1 if any error was found, else 0."""
    parser = errors.ArgumentParser(
        prog="python -m cmseg_jax.data.check",
        description="Check a dataset directory: LiTS-format volume-N / segmentation-N NIfTI "
        "files, or any other layout a data source registers (cmseg_jax.data.sources).",
    )
    parser.add_argument("data_dir")
    parser.add_argument("--hu_min", type=_range, default=HU_MIN_RANGE, help="LO,HI for min HU")
    parser.add_argument("--hu_max", type=_range, default=HU_MAX_RANGE, help="LO,HI for max HU")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    def body(args) -> int:
        if not pathlib.Path(args.data_dir).is_dir():
            raise DataError(f"{args.data_dir}: not a directory")
        layout, reports, _ = check_directory(
            args.data_dir, args.hu_min, args.hu_max, progress=args.progress
        )
        return 1 if num_errors(layout, reports) else 0

    return errors.run_main(body, args)


if __name__ == "__main__":
    sys.exit(main())
