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
an input ``volume-N``, else a file of the input's name. A data source may name cases otherwise
(``case_name`` of :mod:`cmseg_jax.data.sources`, looked up for ``IN`` and its parent directory).
Liver is label 1 or 2 (tumour is liver).

Metrics (``--label`` / ``--label_dir``): per case Dice, IoU, MCC, precision and recall over the
voxels of the input grid; over a directory also the *global* values (one confusion matrix pooled
over every voxel of every case, the LiTS "Dice global") and the mean per-case Dice ("Dice per
case"). ``--metrics_csv`` writes them as a table.
"""

from cmseg_jax import metrics
from cmseg_jax.predict.cli import main
from cmseg_jax.predict.model import ModelScorer, ScoreFn, Sweep, load_sweep
from cmseg_jax.predict.volumes import (
    CaseResult,
    find_inputs,
    find_labels,
    format_metrics,
    label_key,
    output_name,
    segment_directory,
    segment_volume,
    summarize,
    volume_confusion,
    write_metrics_csv,
)

__all__ = [
    "CaseResult",
    "ModelScorer",
    "ScoreFn",
    "Sweep",
    "find_inputs",
    "find_labels",
    "format_metrics",
    "label_key",
    "load_sweep",
    "main",
    "metrics",
    "output_name",
    "segment_directory",
    "segment_volume",
    "summarize",
    "volume_confusion",
    "write_metrics_csv",
]
