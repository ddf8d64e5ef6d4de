#!/usr/bin/env bash
# Reproduces the thesis' experiments and comparisons in one command (docs/reproduction.md).
#
#   bash launch/reproduce_thesis.sh [--data DIR] [--num_seeds N] [--size tiny|cpu|thesis]
#                                   [--out DIR] [--only LIST] [-- SWEEP_FLAGS...]
#   e.g. bash launch/reproduce_thesis.sh --size tiny --num_seeds 8 --only full_ce,cam_beta
#
# Trains the eight experiments (OUT/runs/<name>), each a sweep of N seeds; a finished one is
# skipped, an interrupted one resumes from its last checkpoint. Then it runs the thesis'
# comparisons (OUT/comparisons/<name>, `python -m cmseg_jax.report`) and gathers every table,
# with the thesis' numbers beside ours, into OUT/report.md.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python}

# The thesis' systems, in the order of its chapter 8.
EXPERIMENTS=(full_ce fcn_resnet50 cam_beta cam_alpha
  ablation_no_gs ablation_no_gs_bilinear ablation_no_res ablation_no_aug)
# Comparisons: name, then the runs; the first run is the baseline of the statistical tests.
COMPARISONS=(
  "convmixerseg_vs_fcn full_ce fcn_resnet50"
  "cam_beta_vs_cam_alpha cam_beta cam_alpha"
  "ablations cam_beta ablation_no_gs ablation_no_gs_bilinear ablation_no_res ablation_no_aug"
  "full_vs_weak full_ce cam_beta"
)

usage() {
  cat <<'EOF'
usage: bash launch/reproduce_thesis.sh [--data DIR] [--num_seeds N] [--size tiny|cpu|thesis]
                                       [--out DIR] [--only LIST] [-- SWEEP_FLAGS...]
  --data DIR       LiTS directory (volume-N / segmentation-N NIfTI); default: the embedded phantom
  --num_seeds N    seeds per experiment (default 48 at --size thesis, else 8)
  --size S         tiny (:tiny variant), cpu (:cpu variant) or thesis (the thesis' settings);
                   default cpu
  --out DIR        output directory (default runs/reproduce_<size>)
  --only LIST      comma-separated experiments to train (default: all eight); comparisons use
                   every finished experiment in OUT
  -- FLAGS         passed to every sweep, e.g. -- --config.train.memory_budget_gb=80
experiments: full_ce fcn_resnet50 cam_beta cam_alpha ablation_no_gs ablation_no_gs_bilinear
             ablation_no_res ablation_no_aug
EOF
}

die() {  # a usage error: one line, exit status 2
  echo "reproduce_thesis.sh: $*" >&2
  exit 2
}

data="" num_seeds="" size=cpu out="" only=""
sweep_flags=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --data | --num_seeds | --size | --out | --only)
      (($# >= 2)) || die "$1 needs a value (--help for usage)"
      declare "${1#--}=$2"
      shift 2 ;;
    --data=* | --num_seeds=* | --size=* | --out=* | --only=*)
      opt=${1%%=*}
      declare "${opt#--}=${1#*=}"
      shift ;;
    --) shift; sweep_flags=("$@"); break ;;
    *) die "$1: unknown argument (--help for usage)" ;;
  esac
done

case $size in
  tiny | cpu) variant=":$size" ;;
  thesis) variant="" ;;
  *) die "--size $size: expected tiny, cpu or thesis" ;;
esac
if [[ -z $num_seeds ]]; then
  num_seeds=$([[ $size == thesis ]] && echo 48 || echo 8)
fi
[[ $num_seeds =~ ^[1-9][0-9]*$ ]] || die "--num_seeds $num_seeds: expected a positive integer"
out=${out:-runs/reproduce_$size}
if [[ -n $data ]]; then
  [[ -d $data ]] || die "--data $data: no such directory"
  data=$(cd "$data" && pwd)
fi

selected=("${EXPERIMENTS[@]}")
if [[ -n $only ]]; then
  IFS=, read -r -a selected <<<"$only"
  for name in "${selected[@]}"; do
    [[ " ${EXPERIMENTS[*]} " == *" $name "* ]] ||
      die "--only: unknown experiment '$name' (one of: ${EXPERIMENTS[*]})"
  done
fi
for name in "${selected[@]}"; do
  [[ -f $root/configs/$name.py ]] ||
    die "configs/$name.py: no such config (experiment $name); --only selects a subset"
done

# One output directory holds one reproduction: refuse to mix sizes, data or seed counts once a
# sweep has started there (a sweep writes config.json only after its checks passed).
mkdir -p "$out/runs" "$out/comparisons" "$out/logs"
out=$(cd "$out" && pwd)
settings="size=$size
data=${data:-phantom}
num_seeds=$num_seeds
sweep_flags=${sweep_flags[*]:-}"
if [[ -f $out/settings.txt && $(cat "$out/settings.txt") != "$settings" ]] &&
  compgen -G "$out/runs/*/config.json" >/dev/null; then
  die "$out/settings.txt: this directory holds a reproduction with other settings" \
    "($(paste -sd' ' "$out/settings.txt")); use another --out"
fi
printf '%s\n' "$settings" >"$out/settings.txt"

echo "reproduce_thesis: size $size, $num_seeds seeds, data ${data:-phantom (synthetic, not LiTS)}, out $out"

# Whether a workdir holds a finished sweep of seeds 0..N-1 (run.json is written last).
finished() {
  "$py" - "$1" "$num_seeds" <<'EOF'
import json, pathlib, sys
workdir, num = pathlib.Path(sys.argv[1]), int(sys.argv[2])
try:
    info = json.loads((workdir / "run.json").read_text())
    done = (
        (workdir / "results.csv").is_file()
        and info["seeds"] == list(range(num))
        and info["epochs_completed"] == info["num_epochs"]
    )
except (OSError, ValueError, KeyError, TypeError):
    done = False
sys.exit(0 if done else 1)
EOF
}

progress=$([[ -t 2 ]] && echo true || echo false)
for name in "${selected[@]}"; do
  workdir=$out/runs/$name
  if finished "$workdir"; then
    echo "skip $name: finished ($workdir/run.json)"
    printf '%s\tskipped\t0\t%s\n' "$name" "$(date -Is)" >>"$out/timings.tsv"
    continue
  fi
  cmd=("$py" -m cmseg_jax.sweep --config "$root/configs/$name.py$variant"
    --num_seeds "$num_seeds" --workdir "$workdir" --progress="$progress")
  [[ -n $data ]] && cmd+=(--config.data.source=lits "--config.data.dir=$data")
  cmd+=(${sweep_flags[@]+"${sweep_flags[@]}"})
  echo "+ ${cmd[*]}"
  printf '# %s\n+ %s\n' "$(date -Is)" "${cmd[*]}" >>"$out/logs/$name.log"
  start=$(date +%s)
  "${cmd[@]}" 2>&1 | tee -a "$out/logs/$name.log"
  printf '%s\ttrained\t%s\t%s\n' "$name" "$(($(date +%s) - start))" "$(date -Is)" \
    >>"$out/timings.tsv"
done

# Comparisons over every finished experiment in OUT (earlier invocations' included).
declare -A covered=()
for spec in "${COMPARISONS[@]}"; do
  read -r -a words <<<"$spec"
  comparison=${words[0]}
  runs=()
  for name in "${words[@]:1}"; do
    finished "$out/runs/$name" && runs+=("$out/runs/$name")
  done
  # The baseline and at least one other run.
  if [[ ${#runs[@]} -lt 2 || ${runs[0]} != "$out/runs/${words[1]}" ]]; then
    echo "skip comparison $comparison: needs finished ${words[*]:1}"
    rm -rf "${out:?}/comparisons/$comparison"
    continue
  fi
  cmd=("$py" -m cmseg_jax.report "${runs[@]}" --out "$out/comparisons/$comparison" --format csv)
  echo "+ ${cmd[*]}"
  "${cmd[@]}" >/dev/null
  for run in "${runs[@]}"; do covered[${run##*/}]=1; done
done
# A finished experiment in no comparison still gets its own tables.
for name in "${EXPERIMENTS[@]}"; do
  if [[ -z ${covered[$name]:-} ]] && finished "$out/runs/$name"; then
    cmd=("$py" -m cmseg_jax.report "$out/runs/$name" --out "$out/experiments/$name" --format csv)
    echo "+ ${cmd[*]}"
    "${cmd[@]}" >/dev/null
  else
    rm -rf "${out:?}/experiments/$name"
  fi
done

cmd=("$py" "$root/launch/thesis_report.py" "$out")
echo "+ ${cmd[*]}"
"${cmd[@]}"
