"""XLA:CPU flag settings against the sweep's training step: seed-steps/s and the same training.

    python benchmarks/xla_cpu_flags.py                    # configs/cam_beta.py:cpu, N = 1 8
    python benchmarks/xla_cpu_flags.py --settings default ynn_off fast_math --repeats 5
    python benchmarks/xla_cpu_flags.py --torch            # PyTorch's best mode in the same run
    python benchmarks/xla_cpu_flags.py --list             # the settings and their flags

Every setting (:data:`SETTINGS`: the default, each flag of the README's XLA:CPU flag table alone
at its useful values, and a few combinations) runs in its own process, with ``XLA_FLAGS`` set to
the setting's flags after any ``XLA_FLAGS`` of the calling environment (XLA reads the variable
once, when the backend starts). Each process runs the sweep's own training call
(``seeds_throughput.sweep_steps(in_place=True)``: the layout ``sweep.plan_layout`` picks for N
seeds on this device, the chunks writing their states back into the donated stack) of
``--steps`` Adam steps for N = ``--seeds``, from the same seed states (seeds 0 .. N-1 of root
seed 0) on the same random data (``seeds_throughput.random_split``): compiled once (timed), run
once untimed, then timed ``--repeats`` times (median). It records, per N, seed-steps/s, the
compile time, the library fusions in the compiled program (YNNPACK, oneDNN fusions and
custom calls: whether a flag changed the program at all) and each seed's mean loss over the
``--steps`` steps and its parameters after them. The parent compares every setting's losses and
parameters with the default's (max |Δ| over the seeds): 0 means the same training bit for bit.
``default`` runs first and, as ``default_again``, last: the difference of the two is the drift
of the machine over the run.

With ``--torch``, one more process times ``benchmarks/torch_reference.py``'s modes (the ``bench``
extra; ``--torch_modes``, channels_last eager by default, PyTorch's fastest on a CPU) for the
same config, N and steps; the table shows its best mode.

Writes ``benchmarks/results/xla_cpu_flags/<device>.json`` and ``.md`` (the table), and puts the
table into ``benchmarks/README.md`` between the ``xla_cpu_flags`` markers when ``--out`` is not
given. Time it on an otherwise idle machine: one setting at a time, nothing else running.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "xla_cpu_flags"
README = ROOT / "benchmarks" / "README.md"
TABLE_BEGIN = "<!-- xla_cpu_flags table: begin (written by benchmarks/xla_cpu_flags.py) -->"
TABLE_END = "<!-- xla_cpu_flags table: end -->"

_ONEDNN = ("--xla_cpu_use_onednn=true",)
_FAST_MATH_UNSAFE = (
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_fast_math_honor_nans=false",
    "--xla_cpu_fast_math_honor_infs=false",
    "--xla_cpu_fast_math_honor_division=false",
    "--xla_cpu_fast_math_honor_functions=false",
)

# name -> XLA_FLAGS items. What each flag accepts and does: benchmarks/README.md.
SETTINGS: dict[str, tuple[str, ...]] = {
    "default": (),
    # oneDNN fusions (only dots start one; --xla_cpu_use_onednn alone changes nothing).
    "onednn_dot": (*_ONEDNN, "--xla_cpu_experimental_onednn_fusion_type=dot"),
    "onednn_dot_eltwise": (*_ONEDNN, "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise"),
    "onednn_dot_eltwise_reduce": (
        *_ONEDNN,
        "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    ),
    "onednn_custom_call": ("--xla_cpu_experimental_onednn_custom_call=true",),
    # XNNPACK: accepted, but this jaxlib has no XNNPACK runtime for XLA (expected: the default).
    "xnnpack_off": ("--xla_cpu_use_xnnpack=false",),
    "xnn_fusion_dot_eltwise_reduce": ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",),
    "xnn_graph_greedy": (
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    ),
    # YNNPACK: on by default for single dots, convolutions and reductions.
    "ynn_off": ("--xla_cpu_experimental_ynn_fusion_type=",),
    "ynn_no_reduce": ("--xla_cpu_experimental_ynn_fusion_type=-reduce",),
    "ynn_plus_eltwise": ("--xla_cpu_experimental_ynn_fusion_type=+eltwise",),
    "ynn_dot_eltwise_reduce": ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",),
    # Fast math: the guarded form, and with every guard off (approximate functions: erf, exp).
    "fast_math": ("--xla_cpu_enable_fast_math=true",),
    "fast_math_unsafe": _FAST_MATH_UNSAFE,
    "fast_math_no_nans_infs": (
        "--xla_cpu_enable_fast_math=true",
        "--xla_cpu_fast_math_honor_nans=false",
        "--xla_cpu_fast_math_honor_infs=false",
    ),
    # Vector width of XLA's own loops, and the instruction set.
    "vector_512": ("--xla_cpu_prefer_vector_width=512",),
    "vector_128": ("--xla_cpu_prefer_vector_width=128",),
    "isa_avx2": ("--xla_cpu_max_isa=AVX2",),
    "isa_avx512": ("--xla_cpu_max_isa=AVX512",),
    # Combinations.
    "vector_512+fast_math": (
        "--xla_cpu_prefer_vector_width=512",
        "--xla_cpu_enable_fast_math=true",
    ),
    "onednn_dot+ynn_off": (
        *_ONEDNN,
        "--xla_cpu_experimental_onednn_fusion_type=dot",
        "--xla_cpu_experimental_ynn_fusion_type=",
    ),
    "onednn_dot_eltwise+vector_512": (
        *_ONEDNN,
        "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
        "--xla_cpu_prefer_vector_width=512",
    ),
    "ynn_plus_eltwise+vector_512": (
        "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
        "--xla_cpu_prefer_vector_width=512",
    ),
    "vector_512+fast_math_unsafe": ("--xla_cpu_prefer_vector_width=512", *_FAST_MATH_UNSAFE),
}


def xla_flags(name: str, base: str) -> str:
    """The ``XLA_FLAGS`` of setting ``name``: the calling environment's, then the setting's."""
    return " ".join([base.strip(), *SETTINGS.get(name, ())]).strip()


# ----------------------------------------------------------------------------------------------
# One setting, in its own process (XLA_FLAGS already set).


def library_fusions(hlo: str) -> dict[str, int]:
    """Counts of the library calls in a compiled program's text (fusion kinds, custom calls)."""
    counts: dict[str, int] = {}
    for kind in re.findall(r'"kind":"(__\w+)"', hlo):
        counts[kind] = counts.get(kind, 0) + 1
    for target in re.findall(r'custom_call_target="(__onednn\$\w+)"', hlo):
        counts[target] = counts.get(target, 0) + 1
    return counts


def run_setting(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import functools

    import seeds_throughput as st

    from cmseg_jax.config_base import load_config_file
    from cmseg_jax.train import make_train, seed_key

    config = load_config_file(args.config, ROOT)
    num_train = config.train.batch_size * args.steps
    split, weights = st.random_split(config, num_train)
    trainer = make_train(config, num_train=num_train)
    steps = functools.partial(trainer.train_steps, length=args.steps)
    device = jax.devices()[0]
    data_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(split))
    init = jax.jit(jax.vmap(trainer.init))
    epoch, start = jnp.int32(1), jnp.int32(0)
    rows = []
    for n in args.seeds:
        states = init(jnp.stack([seed_key(0, s) for s in range(n)]))
        fn, plan = st.sweep_steps(config, trainer, steps, n, data_bytes, device, in_place=True)

        def fresh(states=states):
            # The call consumes (donates) its input stack; every call starts from the same states.
            return jax.block_until_ready(jax.tree_util.tree_map(jnp.copy, states))

        lowered = fn.lower(fresh(), split, weights, epoch, start)
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        new_states, stats = jax.block_until_ready(compiled(fresh(), split, weights, epoch, start))
        times = []
        for _ in range(args.repeats):
            inputs = fresh()
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(inputs, split, weights, epoch, start))
            times.append(time.perf_counter() - t0)
        loss = np.asarray(stats["loss_sum"], np.float64) / np.asarray(stats["steps"], np.float64)
        params = {
            jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(new_states.params)[0]
        }
        params_file = pathlib.Path(args.work) / f"{args.worker}-{n}.npz"
        np.savez(params_file, **params)
        rows.append(
            {
                "num_seeds": n,
                "sweep_layout": f"{plan.mode}, {plan.chunk} per chunk",
                "seed_steps_per_s": n * args.steps / statistics.median(times),
                "seconds": times,
                "compile_s": compile_s,
                "library_fusions": library_fusions(compiled.as_text()),
                "loss": loss.tolist(),
                "params_file": str(params_file),
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "loss"}), flush=True)
    return {
        "setting": args.worker,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "rows": rows,
    }


def run_torch(args) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    try:
        import torch_reference
    except ImportError as e:  # the `bench` extra is not installed
        return {"skipped": f"PyTorch reference unavailable ({e})"}
    rows = torch_reference.measure(
        args.config, args.seeds, args.steps, args.repeats, args.threads, args.torch_modes
    )
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------
# The parent: one process per setting, the comparison and the table.


def _child(args, role: str, name: str, env: dict, work: str) -> dict:
    out = pathlib.Path(work) / f"{name}.json"
    cmd = [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        f"--{role}",
        name,
        "--work",
        work,
        "--result",
        str(out),
        "--config",
        args.config,
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--seeds",
        *map(str, args.seeds),
    ]
    if role == "torch_worker":
        cmd += ["--threads", str(args.threads), "--torch_modes", *args.torch_modes]
    print(f"== {name}: XLA_FLAGS={env.get('XLA_FLAGS', '')!r}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        print(f"   failed (exit {proc.returncode}):\n     " + "\n     ".join(tail), flush=True)
        return {"setting": name, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def compare(result: dict, default: dict) -> None:
    """Adds, per N, max |Δ loss| and max |Δ parameter| against ``default`` (same seeds, data)."""
    import numpy as np

    ref = {row["num_seeds"]: row for row in default.get("rows", [])}
    for row in result.get("rows", []):
        base = ref.get(row["num_seeds"])
        if base is None:
            continue
        row["max_abs_loss_diff"] = float(
            np.max(np.abs(np.asarray(row["loss"]) - np.asarray(base["loss"])))
        )
        with np.load(row["params_file"]) as a, np.load(base["params_file"]) as b:
            row["max_abs_param_diff"] = max(float(np.max(np.abs(a[k] - b[k]))) for k in b.files)
        row["speedup"] = row["seed_steps_per_s"] / base["seed_steps_per_s"]


def _fusions(counts: dict) -> str:
    short = {"__ynn_fusion": "ynn", "__onednn_fusion": "onednn"}
    return ", ".join(f"{short.get(k, k)} {v}" for k, v in sorted(counts.items())) or "none"


def render_table(record: dict) -> str:
    seeds = record["seeds"]
    head = (
        f"`{record['config']}`, {record['steps']} Adam steps per call, median of "
        f"{record['repeats']} timed calls, {record['device']} ({record['cpu']}, "
        f"{record['cpu_count']} cores), jax {record['jax']}, {record['date']}. Unit: seed-steps/s "
        "(× the default's); Δ loss / Δ param: max |difference| from the default over the seeds "
        "(each seed's mean loss over the steps; every parameter after them); fusions: library "
        f"fusions in the compiled N = {seeds[-1]} program."
    )
    if record.get("base_xla_flags"):
        head += f" Every setting also had the environment's XLA_FLAGS `{record['base_xla_flags']}`."
    cols = ["setting", "XLA_FLAGS"]
    for n in seeds:
        cols += [f"N={n}", f"N={n} compile s"]
    cols += ["Δ loss", "Δ param", "fusions"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for result in record["settings"]:
        flags = " ".join(f"`{f}`" for f in SETTINGS.get(result["setting"], ())) or "—"
        if "error" in result:
            lines.append(
                f"| {result['setting']} | {flags} | failed: {result['error'][:120]} |"
                + " |" * (len(cols) - 3)
            )
            continue
        by_n = {row["num_seeds"]: row for row in result["rows"]}
        cells = [result["setting"], flags]
        for n in seeds:
            row = by_n.get(n)
            if row is None:
                cells += ["—", "—"]
                continue
            rate = f"{row['seed_steps_per_s']:.2f}"
            if "speedup" in row and result["setting"] != "default":
                rate += f" ({row['speedup']:.2f}×)"
            cells += [rate, f"{row['compile_s']:.0f}"]
        diffs = [r for r in result["rows"] if "max_abs_loss_diff" in r]
        if diffs and result["setting"] != "default":
            cells += [
                f"{max(r['max_abs_loss_diff'] for r in diffs):.2g}",
                f"{max(r['max_abs_param_diff'] for r in diffs):.2g}",
            ]
        else:
            cells += ["—", "—"]
        cells.append(_fusions(result["rows"][-1]["library_fusions"]))
        lines.append("| " + " | ".join(cells) + " |")
    torch = record.get("torch")
    if torch and "rows" in torch:
        cells = ["PyTorch (best of " + ", ".join(record["torch_modes"]) + ")", "—"]
        by_n = {row["num_seeds"]: row for row in torch["rows"]}
        for n in seeds:
            row = by_n.get(n, {})
            rates = {k: v for k, v in row.items() if k.startswith("torch_") and k[6:] in MODES}
            if rates:
                best = max(rates, key=rates.get)
                cells += [f"{rates[best]:.2f} ({best[6:]})", "—"]
            else:
                cells += ["—", "—"]
        cells += ["—", "—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    elif torch:
        lines.append("")
        lines.append(f"PyTorch: {torch.get('skipped') or torch.get('error')}.")
    return "\n".join(lines) + "\n"


MODES = ("eager", "eager_cl", "compile", "vmap")


def put_in_readme(table: str, readme: pathlib.Path = README) -> None:
    """Replaces the text between the table markers of ``readme`` (appends them if absent)."""
    text = readme.read_text()
    block = f"{TABLE_BEGIN}\n\n{table}\n{TABLE_END}"
    if TABLE_BEGIN in text and TABLE_END in text:
        before, rest = text.split(TABLE_BEGIN, 1)
        after = rest.split(TABLE_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cam_beta.py:cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=4, help="Adam steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    parser.add_argument("--settings", nargs="+", default=None, help="default: all of SETTINGS")
    parser.add_argument("--torch", action="store_true", help="add PyTorch's best mode")
    parser.add_argument("--torch_modes", nargs="+", default=["eager_cl"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per setting")
    parser.add_argument("--out", default=None, help="result JSON (default results/...)")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    # Internal: one setting (or PyTorch) in this process.
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--torch_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.list:
        for name, flags in SETTINGS.items():
            print(f"{name:34s} {' '.join(flags) or '(none)'}")
        return
    if args.worker or args.torch_worker:
        result = run_setting(args) if args.worker else run_torch(args)
        pathlib.Path(args.result).write_text(json.dumps(result) + "\n")
        return

    names = args.settings or list(SETTINGS)
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; --list shows them")
    names = ["default"] + [n for n in names if n != "default"]
    base = os.environ.get("XLA_FLAGS", "")
    if base:
        print(f"note: every setting also gets the environment's XLA_FLAGS={base!r}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="xla_cpu_flags-") as work:
        for name in names:
            env = dict(os.environ, XLA_FLAGS=xla_flags(name, base), JAX_PLATFORMS="cpu")
            results.append(_child(args, "worker", name, env, work))
        if len(names) > 1:
            env = dict(os.environ, XLA_FLAGS=xla_flags("default", base), JAX_PLATFORMS="cpu")
            results.append(_child(args, "worker", "default_again", env, work))
        torch = None
        if args.torch:
            torch = _child(args, "torch_worker", "torch", dict(os.environ), work)
        default = results[0]
        for result in results[1:]:
            if "error" not in default and "error" not in result:
                compare(result, default)
        for result in results:
            for row in result.get("rows", []):
                row.pop("params_file", None)

    first = next((r for r in results if "error" not in r), {})
    record = {
        "config": args.config,
        "seeds": args.seeds,
        "steps": args.steps,
        "repeats": args.repeats,
        "device": first.get("device", "cpu"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "jax": first.get("jax", "?"),
        "date": datetime.date.today().isoformat(),
        "base_xla_flags": base,
        "torch_modes": args.torch_modes,
        "settings": results,
        "torch": torch,
    }
    table = render_table(record)
    print(table)
    name = record["device"].replace(":", "-").replace(" ", "_").replace("/", "_")
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if args.out is None:
        put_in_readme(table)
        print(f"updated {README}")


if __name__ == "__main__":
    main()
