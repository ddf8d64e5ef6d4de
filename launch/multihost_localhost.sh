#!/usr/bin/env bash
# One sweep as several JAX processes on this machine (CPU, simulated devices), all on one workdir:
# the multi-host path (jax.distributed, gloo collectives, Orbax over processes) without a cluster.
#   bash launch/multihost_localhost.sh [WORKDIR] [extra sweep flags ...]    # default runs/multihost
# Environment:
#   PROCS=2 processes, DEVICES=2 CPU devices each, CONFIG=configs/cam_beta.py:tiny, SEEDS=4
#   LAUNCH=flags   each process gets --coordinator_address, --num_processes, --process_id
#   LAUNCH=slurm   each process gets the environment srun sets (SLURM_JOB_ID, SLURM_STEP_NODELIST,
#                  SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID) and runs the command that
#                  launch/slurm_multinode.sbatch runs under srun; JAX finds the rest itself
#   KILL_AFTER_EPOCH=k  SIGKILL the last process once epoch k is checkpointed, let the others end
#                  (JAX's runtime stops them when the killed one misses its heartbeats), then launch
#                  all processes again: they resume from the workdir
set -uo pipefail
cd "$(dirname "$0")/.."
workdir=${1:-runs/multihost}; shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-.venv/bin/python}
procs=${PROCS:-2}; config=${CONFIG:-configs/cam_beta.py:tiny}; seeds=${SEEDS:-4}
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES:-2}"
logs=$workdir.logs; mkdir -p "$logs"

launch() {  # launch <attempt>: starts every process in the background, pids in $pids
  local port
  port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
  pids=()
  for ((i = 0; i < procs; i++)); do
    local cmd=("$py" -m cmseg_jax.sweep --config "$config" --num_seeds "$seeds"
               --workdir "$workdir" --progress=false "$@")
    if [ "${LAUNCH:-flags}" = slurm ]; then
      SLURM_JOB_ID=$port SLURM_STEP_NODELIST=localhost SLURM_NTASKS=$procs SLURM_PROCID=$i \
        SLURM_LOCALID=$i JAX_COORDINATOR_PORT=$port \
        "${cmd[@]}" > "$logs/$attempt.$i.out" 2> "$logs/$attempt.$i.err" &
    else
      "${cmd[@]}" --coordinator_address="localhost:$port" --num_processes="$procs" \
        --process_id="$i" > "$logs/$attempt.$i.out" 2> "$logs/$attempt.$i.err" &
    fi
    pids+=($!)
  done
  echo "attempt $attempt: $procs processes (${pids[*]}), LAUNCH=${LAUNCH:-flags}, logs in $logs/$attempt.*"
}

finish() {  # waits for every process; prints each exit status
  local rc=0
  for ((i = 0; i < procs; i++)); do
    wait "${pids[$i]}"; local s=$?
    echo "  process $i exited with $s"
    [ "$s" = 0 ] || rc=$s
  done
  return $rc
}

start=$(date +%s)
attempt=1; launch "$@"
if [ -n "${KILL_AFTER_EPOCH:-}" ]; then
  while [ ! -d "$workdir/checkpoints/$KILL_AFTER_EPOCH" ]; do
    kill -0 "${pids[0]}" 2> /dev/null || break
    sleep 0.2
  done
  last=$((procs - 1))
  kill -9 "${pids[$last]}" && echo "killed process $last after epoch $KILL_AFTER_EPOCH was checkpointed ($(( $(date +%s) - start )) s)"
  finish; echo "  results.csv present after the kill: $([ -e "$workdir/results.csv" ] && echo yes || echo no)"
  echo "  checkpoints: $(ls "$workdir/checkpoints" | tr '\n' ' ')($(( $(date +%s) - start )) s)"
  attempt=2; launch "$@"
fi
finish; rc=$?
grep -h "RESUME" "$logs/$attempt".*.err | sed 's/^/  /'
tail -n 1 "$logs/$attempt.0.out" | sed 's/^/  /'
echo "done in $(( $(date +%s) - start )) s"
exit $rc
