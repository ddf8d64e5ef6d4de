#!/usr/bin/env bash
# Every accelerator figure in one run (about 6-8 minutes on one H100; tested on a CPU with
# SIZE=tiny). Writes benchmarks/results/<name>.json per part and prints the thesis wall time.
#   bash benchmarks/accelerator.sh                 # on the accelerator
#   SIZE=tiny bash benchmarks/accelerator.sh       # the same script, seconds on a CPU
# Add TORCH=0 where PyTorch is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
suffix=${SIZE:+:$SIZE}
big=${BIG_SEEDS:-1 8 16}
small=${SMALL_SEEDS:-1 8 48}
torch=()
[ "${TORCH:-1}" = 1 ] && torch=(--torch --torch_modes eager_cl compile vmap)
run() { python benchmarks/seeds_throughput.py "$@"; }
kind=$(python -c "import jax; d = jax.devices()[0]; print(f'{d.platform}-{d.device_kind}'.replace(' ', '_'))")
# Thesis size, float32: the sweep's own layout against one seed after another and lax.map.
run --config "configs/cam_beta.py$suffix" --seeds $big --steps 2 --repeats 2 \
    --modes sweep loop map "${torch[@]}" --out "$out/$kind-thesis-f32.json"
# Thesis size, bfloat16 compute.
run --config "configs/cam_beta.py$suffix" --seeds $big --steps 2 --repeats 2 --modes sweep \
    --set model.dtype=bfloat16 --out "$out/$kind-thesis-bf16.json"
# CPU size, where many seeds side by side should pay most.
run --config "configs/cam_beta.py:${SIZE:-cpu}" --seeds $small --steps 4 --repeats 2 \
    --modes sweep vmap loop map "${torch[@]}" --out "$out/$kind-cpu-size.json"
python benchmarks/seeds_throughput.py --render_only
for f in "$out/$kind-thesis-f32.json" "$out/$kind-thesis-bf16.json"; do
  python benchmarks/thesis_walltime.py "$f"
done
