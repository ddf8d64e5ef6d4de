"""Seed-steps per second: the sweep's own seed layout vs vmap, one after another, and lax.map.

    python benchmarks/seeds_throughput.py          # configs/cam_beta.py:cpu, N = 1 2 4 8
    python benchmarks/seeds_throughput.py --config configs/cam_beta.py --seeds 1 8 16

All modes run the same per-seed function (``Trainer.train_steps``: a ``lax.scan`` over
``--steps`` optimizer steps) on the same device-resident random data, in the same process:

* ``sweep``: exactly the layout the sweep picks by itself (``sweep.plan_layout``: the chunk size
  and vmap / ``lax.map`` for this device and its memory);
* ``vmap``: ``jit(vmap(train_steps))`` over all N seed states;
* ``loop``: ``jit(train_steps)`` called N times, one seed after another (compiled once);
* ``map``: ``jit(lax.map(train_steps))`` over the N seeds (the sweep with ``seed_chunk = 1``).

``--torch`` adds ``benchmarks/torch_reference.py``'s PyTorch modes (same model, loss and data
shapes; the ``bench`` extra) to the same run.

Each mode is compiled and run once untimed, then timed ``--repeats`` times (median reported).
Each row also gives the achieved fraction of the device's peak FLOP/s and memory bandwidth, from
the analytic FLOPs and minimum bytes per seed-step (``cmseg_jax/cost.py``); the peaks are a
matmul and a copy measured in the same run on a CPU, the datasheet on an accelerator.
Results go to ``benchmarks/results/<device>.json`` and a table in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmseg_jax import cost  # noqa: E402
from cmseg_jax.config_base import apply_variant, load_config_file  # noqa: E402
from cmseg_jax.data import dataset  # noqa: E402
from cmseg_jax.sweep import over_seeds, plan_layout  # noqa: E402
from cmseg_jax.train import make_train, seed_key  # noqa: E402

# PyTorch rate columns (torch_reference.measure), in table order.
TORCH_RATES = ("torch_eager", "torch_eager_cl", "torch_compile", "torch_vmap")
# Datasheet peaks (dense matmul FLOP/s in the benchmark's dtype, HBM bytes/s) by device kind.
DATASHEET = {
    "H100": {"float32": 67e12, "tf32": 495e12, "bfloat16": 989e12, "bandwidth": 3.35e12},
    "H200": {"float32": 67e12, "tf32": 495e12, "bfloat16": 989e12, "bandwidth": 4.8e12},
    "A100": {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12, "bandwidth": 2.0e12},
    "TPU v2": {"float32": 45e12, "bfloat16": 45e12, "bandwidth": 0.7e12},
}


def measured_peaks(repeats: int = 3) -> dict:
    """A large float32 matmul and a large copy, timed here: the CPU's peaks."""
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    flops = 2 * n**3 / timed(lambda: matmul(a).block_until_ready(), repeats)
    big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB, far past any cache
    copy = jax.jit(lambda x: x * 1.0 + 0.0)
    seconds = timed(lambda: copy(big).block_until_ready(), repeats)
    return {
        "flops": flops,
        "bandwidth": 2 * big.nbytes / seconds,  # read + write
        "source": f"measured here: {n}² float32 matmul, 256 MiB read + write",
    }


def device_peaks(device, dtype: str, repeats: int) -> dict:
    if device.platform == "cpu":
        return measured_peaks(repeats)
    for kind, sheet in DATASHEET.items():
        if kind.lower() in device.device_kind.lower():
            # XLA runs float32 matmuls as TF32 on NVIDIA GPUs unless told otherwise.
            key = "tf32" if dtype == "float32" and "tf32" in sheet else dtype
            return {
                "flops": sheet[key],
                "bandwidth": sheet["bandwidth"],
                "source": f"datasheet ({kind}, {key} dense, HBM)",
            }
    return {"flops": float("nan"), "bandwidth": float("nan"), "source": "unknown device"}


def random_split(config, num_train: int, seed: int = 0) -> tuple[dict, jnp.ndarray]:
    """A device-resident training split of ``num_train`` random slices at the config's size
    (masks of about 20 % liver) and the class weights: the data every mode trains on."""
    size = config.data.image_size
    rng = np.random.default_rng(seed)
    masks = (rng.random((num_train, size, size)) < 0.2).astype(np.uint8)
    split = jax.device_put(
        {
            "images": dataset.encode_images(rng.uniform(-1, 1, (num_train, size, size))),
            "masks": masks,
            "labels": masks.reshape(num_train, -1).max(1).astype(np.int32),
            "valid": np.ones(num_train, bool),
        }
    )
    return split, jnp.asarray([1.0, 4.0], jnp.float32)


def sweep_steps(config, trainer, steps, num_seeds: int, data_bytes: int, device, in_place=False):
    """The sweep's own seed-stacked call of ``steps`` for ``num_seeds`` seeds: ``jit`` of the
    layout ``sweep.plan_layout`` picks for this device (chunk size, vmap or ``lax.map``), and
    that plan. Takes (seed-stacked states, split, class weights, epoch, start step).

    With ``in_place`` it is the sweep's training call itself (``SweepFns.train``): the chunks
    write their new states back into the donated input stack (which the call consumes)."""
    # The layout only (as the sweep plans it): a fixed chunk is not compiled for its memory.
    plan = plan_layout(
        config, trainer, num_seeds, data_bytes, devices=[device], measure_fixed=False
    )
    if in_place:
        fn = jax.jit(over_seeds(steps, plan.chunk, in_place=True), donate_argnums=0)
    else:
        fn = jax.jit(over_seeds(steps, plan.chunk))
    return fn, plan


def timed_in_turn(fns: dict, repeats: int) -> dict:
    """Median wall seconds of each ``fns[name]()`` (each blocks until its result is ready), all
    warmed up first and then timed in turn, one call of each per round: a machine whose speed
    drifts over the run slows every mode alike instead of the ones that happen to run late."""
    for fn in fns.values():
        fn()  # compile + warm up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` (which blocks until its result is ready)."""
    return timed_in_turn({"fn": fn}, repeats)["fn"]


README_HEAD = """# Benchmarks

## `seeds_throughput.py`: many seeds at once vs one after another, and PyTorch

Seed-steps per second (one seed-step = one Adam step of one seed on one batch) of the same per-seed
training function run several ways in the same process on the same device-resident data:
**sweep** (the seed layout the sweep picks by itself, `sweep.plan_layout`), **vmap** (all N seeds
in one vmap), **loop** (one jitted call per seed, one after another) and **map** (`lax.map` over
seeds); with `--torch`, the same model, loss and data shapes in PyTorch
(`benchmarks/torch_reference.py`, the `bench` extra): **torch_eager** (the thesis' way: eager,
float32, NCHW, one seed after another), **torch_eager_cl** (channels_last), **torch_compile**
(`torch.compile`, compile time excluded) and **torch_vmap** (`torch.func.stack_module_state` +
`vmap`; BatchNorm running statistics update per model under it). Median of the timed repeats,
after one untimed compile-and-warm-up call; the JAX modes are timed in turn (one call of each
per round), so that the machine's drift over the run does not favour one of them. MFU and BW
are the sweep's achieved fraction of the peak FLOP/s and memory bandwidth, from the analytic
FLOPs and minimum bytes per seed-step
(`cmseg_jax/cost.py`); on a CPU the peaks are a 2048² float32 matmul and a 256 MiB copy timed
in the same run, on an accelerator the datasheet. Regenerate: `python
benchmarks/seeds_throughput.py [--torch]` (writes `results/<device>.json`, then this page from
every JSON in `results/`); `bash benchmarks/accelerator.sh` records every accelerator figure in
one run.

**Reading the CPU numbers.** On a 2-core CPU one seed with a batch of 16 already keeps both cores
busy, so running seeds side by side cannot add arithmetic throughput; vmapping seeds there only
makes the working set N× larger. The sweep therefore runs one seed per chunk on a CPU (`lax.map`
over seeds: one compiled call, no per-seed dispatch), and vmaps as many seeds as fit on an
accelerator, where one seed leaves most of the device idle. This machine is shared: absolute rates
drift by up to ±20 % between recordings; compare modes within one recording.

**FCN-ResNet-50** (`results/cpu-cpu-fcn_resnet50.json`, `--modes vmap map`): vmapped over seeds
every convolution becomes a grouped convolution (one group per seed). On this CPU `lax.map` over
seeds ran 1.27× faster than vmap, so the sweep's CPU rule (one seed per chunk) is the faster
layout for it as well and stays. Both ran at about 1 % of the matmul peak (tens of seconds per
seed-step at `:cpu` size; the machine was heavily shared during the recording), and `lax.map`
over seeds compiles several times longer than one seed's step: train it on an accelerator.
"""


def _rate(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


# Everything of the README from this line on is written by hand (or by other benchmarks) and kept
# as it is when the tables above it are regenerated.
KEPT_MARKER = "<!-- Sections below are not generated by seeds_throughput.py: kept as they are. -->"


def render_readme(results_dir: pathlib.Path, readme: pathlib.Path) -> None:
    """Rewrites ``readme`` with one table per recorded result file, keeping the sections after
    :data:`KEPT_MARKER`."""
    old = readme.read_text() if readme.exists() else ""
    kept = old[old.index(KEPT_MARKER) :] if KEPT_MARKER in old else ""
    parts = [README_HEAD]
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        if "rows" not in r:  # another benchmark's record (aot_plan.py's aot-<target>.json)
            continue
        modes = [
            m
            for m in ("sweep", "vmap", "loop", "map") + TORCH_RATES
            if any(m in row for row in r["rows"])
        ]
        ratios = [
            (k, title)
            for k, title in (
                ("sweep_over_loop", "sweep / loop"),
                ("vmap_over_loop", "vmap / loop"),
                ("map_over_vmap", "map / vmap"),
                ("sweep_over_best_torch", "sweep / best torch"),
                ("sweep_mfu", "sweep MFU"),
                ("sweep_bandwidth_fraction", "sweep BW"),
            )
            if any(k in row for row in r["rows"])
        ]
        peaks = r.get("peaks")
        torch_line = next(
            (
                f" PyTorch: {row['torch_threads']} threads, flush-to-zero "
                f"{'on' if row.get('torch_ftz') else 'off'}."
                for row in r["rows"]
                if "torch_threads" in row
            ),
            "",
        )
        source = r.get("cost_source", "analytic (cmseg_jax/cost.py); bytes a floor")
        peak_line = (
            f" Peaks: {peaks['flops'] / 1e9:.0f} GFLOP/s, {peaks['bandwidth'] / 1e9:.1f} GB/s "
            f"({peaks['source']}); {r['flops_per_seed_step'] / 1e9:.2f} GFLOP and "
            f"{r['min_bytes_per_seed_step'] / 1e9:.2f} GB per seed-step ({source})."
            if peaks
            else ""
        )
        if r.get("arch", "convmixerseg") == "convmixerseg":
            model = f"h {r['hidden']}, depth {r['depth']}, depthwise `{r['depthwise_impl']}`"
        else:
            model = f"{r['arch']} width {r['fcn_width']}"
        parts.append(
            f"\n### {r['device']} ({r['cpu_count']} host cores), {r['date']}\n\n"
            f"`{r['config']}`: image {r['image_size']}², batch {r['batch_size']}, "
            f"{model}, dtype {r.get('model_dtype', 'float32')}, "
            f"{r['steps_per_call']} steps per call, jax {r['jax']}. Unit: {r['unit']}."
            f"{peak_line}{torch_line}\n\n"
            "| seeds N | sweep layout | "
            + " | ".join(modes + [t for _, t in ratios])
            + " |\n|"
            + "---|" * (2 + len(modes) + len(ratios))
            + "\n"
        )
        for row in r["rows"]:
            cells = [_rate(row[m]) if m in row else "—" for m in modes]
            for key, _ in ratios:
                if key not in row:
                    cells.append("—")
                elif key.endswith(("mfu", "fraction")):
                    cells.append(f"{100 * row[key]:.1f} %")
                else:
                    cells.append(f"{row[key]:.2f}×")
            layout = row.get("sweep_layout", "—")
            parts.append(f"| {row['num_seeds']} | {layout} | " + " | ".join(cells) + " |\n")
    if kept:
        parts.append("\n" + kept)
    readme.write_text("".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cam_beta.py:cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["sweep", "vmap", "loop", "map"])
    parser.add_argument("--torch", action="store_true", help="add the PyTorch reference modes")
    parser.add_argument(
        "--torch_modes", nargs="+", default=["eager", "eager_cl", "compile", "vmap"]
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--set", nargs="*", default=[], help="config overrides, e.g. model.dtype=bfloat16"
    )
    parser.add_argument(
        "--depthwise", default=None, help="override model.convmixerseg.depthwise_impl"
    )
    parser.add_argument("--out", default=None, help="result JSON (default results/<device>.json)")
    parser.add_argument("--render_only", action="store_true", help="only rewrite the README")
    args = parser.parse_args()
    results_dir = ROOT / "benchmarks" / "results"
    if args.render_only:
        render_readme(results_dir, ROOT / "benchmarks" / "README.md")
        return

    config = load_config_file(args.config, ROOT)
    for item in args.set:  # dotted field=value, typed as the field (the config variant syntax)
        apply_variant(config, item)
    if args.depthwise:
        config.model.convmixerseg.depthwise_impl = args.depthwise
    size, batch = config.data.image_size, config.train.batch_size
    num_train = batch * args.steps
    split, weights = random_split(config, num_train)
    trainer = make_train(config, num_train=num_train)
    steps = functools.partial(trainer.train_steps, length=args.steps)
    vmapped = jax.jit(over_seeds(steps, 0))
    mapped = jax.jit(over_seeds(steps, 1))
    init = jax.jit(jax.vmap(trainer.init))
    epoch, start = jnp.int32(1), jnp.int32(0)
    one = jax.jit(steps)

    def one_step():
        # One step of one seed, for models without an analytic cost (cmseg_jax/cost.py): XLA's
        # cost analysis counts a loop body once, so it is compiled without the loop of steps.
        step = jax.jit(functools.partial(trainer.train_steps, length=1))
        state = jax.eval_shape(trainer.init, seed_key(0, 0))
        return step.lower(state, split, weights, epoch, start).compile()

    device = jax.devices()[0]
    peaks = device_peaks(device, config.model.dtype, args.repeats)
    step_cost = cost.step_cost(config, one_step)
    flops_step, bytes_step = step_cost["flops"], step_cost["bytes"]
    print(json.dumps({"peaks": peaks, "step_cost": step_cost}), flush=True)
    data_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(split))
    rows = []
    for n in args.seeds:
        keys = jnp.stack([seed_key(0, s) for s in range(n)])
        states = init(keys)
        singles = [jax.tree_util.tree_map(lambda x, i=i: x[i], states) for i in range(n)]
        swept, plan = sweep_steps(config, trainer, steps, n, data_bytes, device)
        runs = {
            "sweep": lambda st=states, f=swept: jax.block_until_ready(
                f(st, split, weights, epoch, start)
            ),
            "vmap": lambda st=states: jax.block_until_ready(
                vmapped(st, split, weights, epoch, start)
            ),
            "loop": lambda ss=singles: jax.block_until_ready(
                [one(s, split, weights, epoch, start) for s in ss]
            ),
            "map": lambda st=states: jax.block_until_ready(
                mapped(st, split, weights, epoch, start)
            ),
        }
        row = {"num_seeds": n, "sweep_layout": f"{plan.mode}, {plan.chunk} per chunk"}
        seconds = timed_in_turn({mode: runs[mode] for mode in args.modes}, args.repeats)
        for mode in args.modes:
            row[mode] = n * args.steps / seconds[mode]
        if args.torch:
            import torch_reference

            for torch_row in torch_reference.measure(
                config, [n], args.steps, args.repeats, args.threads, args.torch_modes
            ):
                row.update({k: v for k, v in torch_row.items() if k != "num_seeds"})
        if "vmap" in row and "loop" in row:
            row["vmap_over_loop"] = row["vmap"] / row["loop"]
        if "sweep" in row and "loop" in row:
            row["sweep_over_loop"] = row["sweep"] / row["loop"]
        if "map" in row and "vmap" in row:
            row["map_over_vmap"] = row["map"] / row["vmap"]
        torch_best = max((row[k] for k in TORCH_RATES if k in row), default=None)
        if torch_best and "sweep" in row:
            row["sweep_over_best_torch"] = row["sweep"] / torch_best
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            row["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])  # so far in this process
        if "sweep" in row:
            row["sweep_mfu"] = row["sweep"] * flops_step / peaks["flops"]
            row["sweep_bandwidth_fraction"] = row["sweep"] * bytes_step / peaks["bandwidth"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    record = {
        "device": f"{device.platform}:{device.device_kind}",
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "config": args.config,
        "depthwise_impl": config.model.convmixerseg.depthwise_impl
        + (
            f" ({'shift' if device.platform == 'cpu' else 'conv'})"
            if config.model.convmixerseg.depthwise_impl == "auto"
            else ""
        ),
        "image_size": size,
        "batch_size": batch,
        "arch": config.model.arch,
        "fcn_width": config.model.fcn_resnet50.width,
        "hidden": config.model.convmixerseg.hidden,
        "depth": config.model.convmixerseg.depth,
        "steps_per_call": args.steps,
        "repeats": args.repeats,
        "unit": "seed-steps/s (median of repeats)",
        "model_dtype": config.model.dtype,
        "flops_per_seed_step": flops_step,
        "min_bytes_per_seed_step": bytes_step,
        "cost_source": step_cost["source"],
        "peaks": peaks,
        "rows": rows,
    }
    name = f"{device.platform}-{device.device_kind}".replace(" ", "_").replace("/", "_")
    out = pathlib.Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    if out.parent == results_dir:
        render_readme(results_dir, ROOT / "benchmarks" / "README.md")


if __name__ == "__main__":
    main()
