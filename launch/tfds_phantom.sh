#!/usr/bin/env bash
# Real CT in, real masks out, on the phantom, in one command (CPU, about 2 minutes):
#   1. write a LiTS-format phantom directory (the TFDS manual dir),
#   2. build the lits_slices TFDS dataset from it (array_record, no TensorFlow),
#   3. train a 2-seed CAM_beta sweep at the tiny size on that dataset (data.source=tfds),
#   4. store one phantom volume with a non-canonical layout (axial axis first, flipped axes) and
#      segment it with the sweep's seed ensemble; the mask must come back on the input's grid,
#   5. run the oracle round trips (a "model" that answers with the label itself must give Dice 1.0
#      through predict on every non-canonical variant).
#   bash launch/tfds_phantom.sh [OUT_DIR]      # default runs/tfds_phantom
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/tfds_phantom}
py=${PYTHON:-.venv/bin/python}
rm -rf "$out" && mkdir -p "$out"

"$py" -m cmseg_jax.data.phantom "$out/manual" --num_volumes 6 --shape 64 64 24
"$py" -m cmseg_jax.data.tfds_build --manual_dir "$out/manual" --data_dir "$out/tfds" \
  --config s32-l2-b2-seed0 > "$out/tfds_build.log" 2>&1
echo "built $(ls -d "$out"/tfds/lits_slices/*/*)"
"$py" -m cmseg_jax.sweep --config configs/cam_beta.py:tiny --num_seeds 2 --workdir "$out/run" \
  --config.data.source=tfds --config.data.tfds_dir="$out/tfds" --progress=false \
  | grep -E "^Data:|^wrote"

"$py" - "$out" <<'PY'
import sys

import nibabel as nib
import numpy as np
from nibabel import orientations

out = sys.argv[1]
# Stored axes point inferior, right, posterior (nibabel codes I, R, P; the phantom is L, P, S).
ornt = np.array([[2, -1], [0, 1], [1, -1]])
for kind in ("volume", "segmentation"):
    img = nib.load(f"{out}/manual/{kind}-0.nii.gz")
    moved = img.as_reoriented(orientations.ornt_transform(orientations.io_orientation(img.affine), ornt))
    nib.save(moved, f"{out}/{kind}-0-noncanonical.nii.gz")
print("non-canonical volume:", nib.aff2axcodes(moved.affine), moved.shape)
PY
"$py" -m cmseg_jax.predict --workdir "$out/run" --ensemble --no-progress \
  "$out/volume-0-noncanonical.nii.gz" "$out/mask-0.nii.gz" --label "$out/segmentation-0-noncanonical.nii.gz"
"$py" - "$out" <<'PY'
import sys

import nibabel as nib
import numpy as np

out = sys.argv[1]
vol, mask = nib.load(f"{out}/volume-0-noncanonical.nii.gz"), nib.load(f"{out}/mask-0.nii.gz")
assert mask.shape == vol.shape and np.allclose(mask.affine, vol.affine), "mask off the input grid"
assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(vol.affine)
print("mask on the input grid:", mask.shape, nib.aff2axcodes(mask.affine), mask.get_data_dtype())
PY
"$py" -m pytest -q -p no:cacheprovider tests/test_predict.py -k "oracle_round_trip_is_exact" 2>&1 | tail -1
