#!/usr/bin/env bash
# One sweep on one GPU node under SLURM. Usage:
#   sbatch launch/slurm_sweep.sh configs/cam_beta.py 48 runs/cam_beta [--config.data.dir=/data/LiTS ...]
# The seeds are sharded over every GPU the job gets: `sbatch --gres=gpu:4 ...` trains a quarter of
# them on each (the results do not depend on the GPU count, and a requeued job may get another).
# Re-submitting the same command resumes from the workdir's last checkpoint, so a pre-empted or
# time-limited job can simply be requeued.
#SBATCH --job-name=cmseg_sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=08:00:00
#SBATCH --requeue
set -euo pipefail
config=${1:?config file}; seeds=${2:?number of seeds}; workdir=${3:?workdir}; shift 3
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -e ".[cuda12]"
fi
exec .venv/bin/python -m cmseg_jax.sweep --config "$config" --num_seeds "$seeds" \
  --workdir "$workdir" --progress=false "$@"
