#!/usr/bin/env bash
# Smoke test of the whole analysis path in one command (CPU, about 2 minutes):
# a 4-seed CAM_beta and a 4-seed CAM_alpha sweep at the tiny size, then the comparison report.
#   bash launch/tiny_report.sh [OUT_DIR]      # default runs/tiny_report
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/tiny_report}
py=${PYTHON:-.venv/bin/python}
for name in cam_beta cam_alpha; do
  "$py" -m cmseg_jax.sweep --config "configs/${name}.py:tiny" --num_seeds 4 \
    --workdir "$out/$name" --progress=false > /dev/null
done
"$py" -m cmseg_jax.report "$out/cam_beta" "$out/cam_alpha" --out "$out/report"
echo "wrote $out/report/report.md"
