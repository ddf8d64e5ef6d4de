"""Wall time of the thesis' ConvMixerSeg experiments × N seeds from a recorded throughput.

    python benchmarks/thesis_walltime.py benchmarks/results/<device>.json [--num_seeds 48]

Reads the ``sweep`` seed-steps/s of the largest recorded N of a thesis-size result file
(``seeds_throughput.py --config configs/cam_beta.py``) and multiplies out the thesis' schedule:
full_ce 25 epochs, cam_beta 3, cam_alpha 10 and the four ablations 3 each (50 epochs), at
1,572 training slices (131 LiTS volumes × 0.6 × 20 slices) in batches of 16 = 98 steps an epoch.
Beside it, the floor: FLOPs ÷ peak FLOP/s and minimum bytes ÷ bandwidth (``cmseg_jax/cost.py``;
peaks as recorded). Evaluation passes (forward only, about a third of a step per slice) and
compilation are not in the estimate.
"""

from __future__ import annotations

import argparse
import json
import pathlib

EPOCHS = {
    "full_ce": 25,
    "cam_beta": 3,
    "cam_alpha": 10,
    "ablation_no_gs": 3,
    "ablation_no_gs_bilinear": 3,
    "ablation_no_res": 3,
    "ablation_no_aug": 3,
}
TRAIN_SLICES = 1572
BATCH = 16


def estimate(record: dict, num_seeds: int) -> dict:
    rows = [r for r in record["rows"] if "sweep" in r]
    row = max(rows, key=lambda r: r["num_seeds"])
    seed_steps = sum(EPOCHS.values()) * (TRAIN_SLICES // BATCH) * num_seeds
    peaks = record["peaks"]
    return {
        "device": record["device"],
        "rate_seed_steps_per_s": row["sweep"],
        "rate_measured_at_seeds": row["num_seeds"],
        "seed_steps": seed_steps,
        "estimated_minutes": seed_steps / row["sweep"] / 60,
        "floor_flops_minutes": seed_steps * record["flops_per_seed_step"] / peaks["flops"] / 60,
        "floor_bytes_minutes": seed_steps
        * record["min_bytes_per_seed_step"]
        / peaks["bandwidth"]
        / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result")
    parser.add_argument("--num_seeds", type=int, default=48)
    args = parser.parse_args()
    out = estimate(json.loads(pathlib.Path(args.result).read_text()), args.num_seeds)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
