#!/usr/bin/env bash
# One sweep over every host of a Cloud TPU pod slice, with gcloud. Usage:
#   bash launch/tpu_vm_pod.sh NAME ZONE TYPE CONFIG NUM_SEEDS WORKDIR [--config.x=y ...]
#   bash launch/tpu_vm_pod.sh cmseg-pod us-central2-b v4-32 configs/cam_beta.py 48 /mnt/shared/runs/cam_beta
# 1. creates the TPU VM slice NAME (or reuses it if it exists),
# 2. copies this checkout to every worker and installs it there with the [tpu] extra,
# 3. runs the sweep on all workers at once (--distributed=on: jax.distributed.initialize() finds
#    the slice's other hosts; the seed mesh spans every chip of the slice),
# 4. copies WORKDIR back from worker 0 to runs/NAME/ here.
# WORKDIR must be a directory every worker sees (an NFS / Filestore mount; on a one-host slice
# such as v4-8 any directory): every process reads the checkpoints back, process 0 writes. Run
# the same command again to resume. Environment: TPU_VERSION (software version, default
# tpu-ubuntu2204-base), PROJECT (gcloud project, default the configured one), SPOT=1 (a spot
# slice), DELETE=1 (delete the slice at the end).
set -euo pipefail
name=${1:?slice name}; zone=${2:?zone}; type=${3:?accelerator type, e.g. v4-32}
config=${4:?config file}; seeds=${5:?number of seeds}; workdir=${6:?workdir every worker sees}
shift 6
cd "$(dirname "$0")/.."
if [ -n "${PROJECT:-}" ]; then export CLOUDSDK_CORE_PROJECT=$PROJECT; fi
tpu=(gcloud compute tpus tpu-vm)

if ! "${tpu[@]}" describe "$name" --zone "$zone" > /dev/null 2>&1; then
  spot=()
  [ "${SPOT:-0}" = 1 ] && spot=(--spot)
  "${tpu[@]}" create "$name" --zone "$zone" --accelerator-type "$type" \
    --version "${TPU_VERSION:-tpu-ubuntu2204-base}" "${spot[@]}"
fi

# This checkout (tracked files only) to every worker, installed in a venv there.
archive=$(mktemp --suffix .tar.gz)
git archive --format=tar.gz -o "$archive" HEAD
"${tpu[@]}" scp "$archive" "$name:cmseg_jax.tar.gz" --zone "$zone" --worker=all
"${tpu[@]}" ssh "$name" --zone "$zone" --worker=all --command "set -e
  mkdir -p cmseg_jax && tar -xzf cmseg_jax.tar.gz -C cmseg_jax && cd cmseg_jax
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -e '.[tpu]'"
rm -f "$archive"

# The same command on every worker at once; each is one JAX process of the run.
args=$(printf ' %q' "$@")
"${tpu[@]}" ssh "$name" --zone "$zone" --worker=all --command "cd cmseg_jax &&
  .venv/bin/python -m cmseg_jax.sweep --config $config --num_seeds $seeds --workdir $workdir \
    --distributed=on --progress=false$args"

mkdir -p "runs/$name"
"${tpu[@]}" scp --recurse "$name:$workdir" "runs/$name/" --zone "$zone" --worker=0
echo "copied $workdir from worker 0 to runs/$name/"
if [ "${DELETE:-0}" = 1 ]; then
  "${tpu[@]}" delete "$name" --zone "$zone" --quiet
fi
