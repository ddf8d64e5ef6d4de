"""The thesis' configs planned for accelerators by their own compilers, deviceless.

    python benchmarks/aot_plan.py --targets tpu-v5e h100 --configs cam_beta full_ce \
        --dtypes float32 bfloat16 --num_seeds 48

For each config × target × dtype: the sweep's dry run with ``--config.train.target`` (XLA:TPU or
XLA:GPU compiling the seed-stacked, chunked step for that device on this CPU), resident data
sized as LiTS' (131 volumes × 20 slices), and the plan's figures: compiled bytes per device of
every chunk it tried (1 seed per chunk = all 48 states plus one seed's activations), the chosen
seeds per chunk, the execution, the analytic FLOPs and bytes per seed-step and the roofline floor
of an epoch from the target's datasheet peaks. Every byte figure is XLA's memory analysis — a
fact about memory; no figure here is a measured time. Results go to
``benchmarks/results/aot-<target>.json`` (merged with what is there, keyed by config and dtype).
Needs the ``tpu`` / ``aot-gpu`` extras; a thesis-size TPU compile takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Deviceless: the host's own backend is the CPU (libtpu would look for an absent TPU).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from cmseg_jax import config_base, cost, errors  # noqa: E402
from cmseg_jax.sweep import plan as planning  # noqa: E402
from cmseg_jax.sweep import targets  # noqa: E402

CONFIGS = (
    "full_ce",
    "cam_beta",
    "cam_alpha",
    "fcn_resnet50",
    "ablation_no_gs",
    "ablation_no_gs_bilinear",
    "ablation_no_res",
    "ablation_no_aug",
)


def plan_one(name: str, target: str, dtype: str, num_seeds: int, overrides: list[str]) -> dict:
    spec = ",".join([f"train.target={target}", f"model.dtype={dtype}", *overrides])
    config = config_base.load_config_file(f"configs/{name}.py:{spec}", ROOT)
    config.data.source = "lits"  # data sized as LiTS' (nothing is read by a dry run)
    t0 = time.time()
    record = {"config": name, "dtype": dtype, "num_seeds": num_seeds, "overrides": overrides}
    try:
        info = planning.dry_run(config, num_seeds)
    except errors.UsageError as e:
        return record | {"error": str(e), "plan_s": round(time.time() - t0, 1)}
    plan = info.pop("plan")
    t = targets.get(target)
    used = config_base.with_fields(config, plan.execution) if plan.execution else config
    epoch_steps = math.ceil(131 * 0.6) * 20 // config.train.batch_size
    floor = None
    if config.model.arch == "convmixerseg":
        per_step = max(
            cost.train_step_flops(used) / t.peak(dtype), cost.train_step_bytes(used) / t.bandwidth
        )
        floor = per_step * epoch_steps * num_seeds
    return record | {
        "device": info["device"],
        "compiler": info["compiler"],
        "params": info["params"],
        "flops_per_seed_step": info["flops_per_seed_step"],
        "bytes_per_seed_step": info["bytes_per_seed_step"],
        "cost_source": info["cost_source"],
        "temp_bytes_one_seed_step": info["temp_bytes_per_seed_step"],
        "compiled_bytes_by_chunk": {
            str(c): (None if b == math.inf else int(b)) for c, b in plan.measured.items()
        },
        "seeds_per_chunk": plan.chunk,
        "padded_seeds": plan.padded,
        "program_bytes": plan.program_bytes,
        "data_bytes": plan.data_bytes,
        "budget_bytes": plan.budget,
        "execution": plan.execution,
        "peak_flops": t.peak(dtype),
        "bandwidth": t.bandwidth,
        "epoch_floor_s_from_peaks": floor,
        "layout": plan.describe(num_seeds),
        "plan_s": round(time.time() - t0, 1),
    }


def _gib(value) -> str:
    return "—" if value in (None, math.inf) else f"{value / 2**30:.2f}"


def render(out: str, targets_: list[str]) -> str:
    """The recorded plans as one markdown table (README): every config × dtype of each target."""
    rows = [
        "| target | config | dtype | 1 seed per chunk (48 states), GiB | seeds per chunk × "
        "chunks | planned step + data, GiB | TFLOP / GB per seed-step | epoch floor from peaks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in targets_:
        path = pathlib.Path(out) / f"aot-{target}.json"
        if not path.exists():
            continue
        plans = json.loads(path.read_text())["plans"]
        order = {name: i for i, name in enumerate(CONFIGS)}
        for key in sorted(plans, key=lambda k: (order.get(k.split(",")[0], 99), k)):
            r = plans[key]
            if "error" in r:
                found = re.search(r"with (\d+) seed\(s\) per chunk does not fit", r["error"])
                sizes = re.search(r"temporaries \(([\d.]+G)\) exceeds available HBM \(([\d.]+G)\)",
                                  r["error"])
                text = (
                    f"does not fit at {found[1]} per chunk"
                    + (f" (temporaries {sizes[1]} > HBM {sizes[2]})" if sizes else "")
                    if found
                    else r["error"]
                )
                rows.append(f"| {target} | {r['config']} | {r['dtype']} | {text} | — | — | — | — |")
                continue
            one = r["compiled_bytes_by_chunk"].get("1")
            chunks = r["padded_seeds"] // r["seeds_per_chunk"]
            flops, moved = r.get("flops_per_seed_step"), r.get("bytes_per_seed_step")
            cost_text = (
                "not reported" if flops is None else f"{flops / 1e12:.2f} / {moved / 1e9:.0f}"
            )
            floor = r.get("epoch_floor_s_from_peaks")
            execution = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r["execution"].items())
            padded = r["padded_seeds"] != r["num_seeds"]
            rows.append(
                f"| {target} | {r['config']} | {r['dtype']} | "
                f"{_gib(one) if one else 'not compiled (all fit)'} | "
                f"{r['seeds_per_chunk']} × {chunks}"
                + (f" (padded to {r['padded_seeds']})" if padded else "")
                + (f"; {execution}" if execution else "")
                + f" | {_gib(r['program_bytes'])} + {_gib(r['data_bytes'])} | {cost_text} | "
                + ("—" if floor is None else f"{floor:.0f} s")
                + " |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=["tpu-v5e", "h100"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--num_seeds", type=int, default=48)
    parser.add_argument("--set", nargs="*", default=[], help="extra config field=value items")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--render_only", action="store_true", help="print the recorded plans as a markdown table"
    )
    args = parser.parse_args()
    if args.render_only:
        print(render(args.out, args.targets))
        return
    for target in args.targets:
        path = pathlib.Path(args.out) / f"aot-{target}.json"
        doc = json.loads(path.read_text()) if path.exists() else {"plans": {}}
        doc.update(
            target=target,
            note="XLA memory analysis of deviceless compiles; FLOPs/bytes analytic; the epoch "
            "floor comes from datasheet peaks. No figure is a measured time.",
            host=f"{platform.machine()} {platform.node()}",
        )
        for name in args.configs:
            for dtype in args.dtypes:
                row = plan_one(name, target, dtype, args.num_seeds, args.set)
                key = ",".join([name, dtype, *args.set])
                doc["plans"][key] = row
                print(json.dumps({k: row.get(k) for k in (
                    "config", "dtype", "seeds_per_chunk", "compiled_bytes_by_chunk",
                    "execution", "error", "plan_s")}), flush=True)
                path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
