"""Seed-steps per second: N seeds vmapped vs the same N seeds one after another vs lax.map.

    python benchmarks/seeds_throughput.py          # configs/cam_beta.py:cpu, N = 1 2 4 8
    python benchmarks/seeds_throughput.py --config configs/cam_beta.py --seeds 1 2 4 8 16

All three modes run the same per-seed function (``Trainer.train_steps``: a ``lax.scan`` over
``--steps`` optimizer steps) on the same device-resident random data, in the same process:

* ``vmap``: ``jit(vmap(train_steps))`` over N seed states — what the sweep does;
* ``loop``: ``jit(train_steps)`` called N times, one seed after another (compiled once);
* ``map``: ``jit(lax.map(train_steps))`` over the N seeds (the sweep with ``seed_chunk = 1``).

Each mode is compiled and run once untimed, then timed ``--repeats`` times (median reported).
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

from cmseg_jax.config_base import load_config_file  # noqa: E402
from cmseg_jax.sweep import over_seeds  # noqa: E402
from cmseg_jax.train import make_train, seed_key  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` (which blocks until its result is ready)."""
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


README_HEAD = """# Benchmarks

## `seeds_throughput.py`: many seeds at once vs one after another

Seed-steps per second (one seed-step = one Adam step of one seed on one batch) of the same per-seed
training function run three ways in the same process on the same device-resident data:
**vmap** (what the sweep does), **loop** (one jitted call per seed, one after another) and
**map** (`lax.map` over seeds). Median of the timed repeats, after one untimed compile-and-warm-up
call. Regenerate: `python benchmarks/seeds_throughput.py` (writes `results/<device>.json`, then
this table from every JSON in `results/`).

**Reading the CPU numbers.** On a 2-core CPU one seed with a batch of 16 already keeps both cores
busy, so running seeds side by side cannot add arithmetic throughput; what vmap can do there is
remove per-call overhead, and what it costs is a working set N× larger (the 9×9 depthwise
shift-and-add then misses cache). The N = 1 row runs identical work in all three modes, so its
spread (up to 17 % across recordings) is the run-to-run noise of the machine. Within that noise vmap
and the loop are level on this CPU, with vmap 0.88× the loop at N = 8 in the recorded run (0.89× in
the previous one): the target of ≥ 1.0× at N = 8 is **not** met here. Absolute rates drift between
recordings on this shared machine: the recorded run is about 18 % slower in every mode than the
previous recording (N = 8: vmap 3.09, loop 3.46). A one-off A/B of the vmapped step in one process,
`train.py` of commit 0bea7ba (diverged-seed masking) against its parent, measured 1.016× (2.50 vs
2.46 seed-steps/s, N = 8), so the drift is the machine, not the code. The case for vmapping seeds is
the accelerator, where one seed leaves most of the device idle; no accelerator figure is recorded
yet.
"""


def render_readme(results_dir: pathlib.Path, readme: pathlib.Path) -> None:
    """Rewrites ``readme`` with one table per recorded result file."""
    parts = [README_HEAD]
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        parts.append(
            f"\n### {r['device']} ({r['cpu_count']} host cores), {r['date']}\n\n"
            f"`{r['config']}`: image {r['image_size']}², batch {r['batch_size']}, "
            f"h {r['hidden']}, depth {r['depth']}, depthwise `{r['depthwise_impl']}`, "
            f"{r['steps_per_call']} steps per call, jax {r['jax']}. Unit: {r['unit']}.\n\n"
            "| seeds N | vmap | loop | map | vmap / loop |\n|---|---|---|---|---|\n"
        )
        for row in r["rows"]:
            cells = [f"{row[m]:.2f}" if m in row else "—" for m in ("vmap", "loop", "map")]
            ratio = f"{row['vmap_over_loop']:.2f}×" if "vmap_over_loop" in row else "—"
            parts.append(f"| {row['num_seeds']} | " + " | ".join(cells) + f" | {ratio} |\n")
    readme.write_text("".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cam_beta.py:cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["vmap", "loop", "map"])
    parser.add_argument("--depthwise", default=None, help="override model.depthwise_impl")
    parser.add_argument("--out", default=None, help="result JSON (default results/<device>.json)")
    parser.add_argument("--render_only", action="store_true", help="only rewrite the README")
    args = parser.parse_args()
    results_dir = ROOT / "benchmarks" / "results"
    if args.render_only:
        render_readme(results_dir, ROOT / "benchmarks" / "README.md")
        return

    config = load_config_file(args.config, ROOT)
    if args.depthwise:
        config.model.depthwise_impl = args.depthwise
    size, batch = config.data.image_size, config.train.batch_size
    num_train = batch * args.steps
    rng = np.random.default_rng(0)
    masks = (rng.random((num_train, size, size)) < 0.2).astype(np.uint8)
    split = jax.device_put(
        {
            "images": rng.uniform(-1, 1, (num_train, size, size)).astype(np.float32),
            "masks": masks,
            "labels": masks.reshape(num_train, -1).max(1).astype(np.int32),
            "valid": np.ones(num_train, bool),
        }
    )
    weights = jnp.asarray([1.0, 4.0], jnp.float32)
    trainer = make_train(config, num_train=num_train)
    steps = functools.partial(trainer.train_steps, length=args.steps)
    one = jax.jit(steps)
    vmapped = jax.jit(over_seeds(steps, 0))
    mapped = jax.jit(over_seeds(steps, 1))
    init = jax.jit(jax.vmap(trainer.init))
    epoch, start = jnp.int32(1), jnp.int32(0)

    device = jax.devices()[0]
    rows = []
    for n in args.seeds:
        keys = jnp.stack([seed_key(0, s) for s in range(n)])
        states = init(keys)
        singles = [jax.tree_util.tree_map(lambda x, i=i: x[i], states) for i in range(n)]
        runs = {
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
        row = {"num_seeds": n}
        for mode in args.modes:
            seconds = timed(runs[mode], args.repeats)
            row[mode] = n * args.steps / seconds
        if "vmap" in row and "loop" in row:
            row["vmap_over_loop"] = row["vmap"] / row["loop"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    record = {
        "device": f"{device.platform}:{device.device_kind}",
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "config": args.config,
        "depthwise_impl": config.model.depthwise_impl
        + (
            f" ({'shift' if device.platform == 'cpu' else 'conv'})"
            if config.model.depthwise_impl == "auto"
            else ""
        ),
        "image_size": size,
        "batch_size": batch,
        "hidden": config.model.hidden,
        "depth": config.model.depth,
        "steps_per_call": args.steps,
        "repeats": args.repeats,
        "unit": "seed-steps/s (median of repeats)",
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
