"""Planning for an accelerator this machine does not have: XLA:TPU and XLA:GPU compile the sweep's
step deviceless (``train.target``), and the planner trusts what they say.

The compilers come from the ``tpu`` and ``aot-gpu`` extras. They are kept out of the main test
environment (their plugins log to stderr at every backend start, which the CLI tests read), so the
CLI runs under ``$CMSEG_AOT_PYTHON`` (``.ci/run`` makes that environment), or under this
interpreter when it has both; without either the tests skip, except under CI, where they fail.
"""

import fcntl
import importlib.util
import math
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import pytest

from cmseg_jax import errors
from cmseg_jax.sweep import plan as planning
from cmseg_jax.sweep import targets
from tests.conftest import ROOT, load_config


def _has_compilers(python: str) -> bool:
    probe = (
        "import importlib.util as u, sys; "
        "sys.exit(0 if u.find_spec('libtpu') and u.find_spec('jax_plugins.xla_cuda12') else 1)"
    )
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def _aot_python() -> str:
    python = os.environ.get("CMSEG_AOT_PYTHON") or sys.executable
    if pathlib.Path(python).exists() and _has_compilers(python):
        return python
    if os.environ.get("CI"):
        pytest.fail("CI must provide the deviceless compilers ($CMSEG_AOT_PYTHON, .ci/run)")
    pytest.skip('no deviceless compilers: pip install -e ".[tpu,aot-gpu]" in $CMSEG_AOT_PYTHON')


def dry_run(*args):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the tests' XLA:CPU setting is not the target's
    env.pop("JAX_PLATFORMS", None)  # the CLI itself keeps the host on its CPU
    cmd = [_aot_python(), "-m", "cmseg_jax.sweep", "--dry_run", *args]
    # libtpu takes a machine-wide lock file: one TPU compile at a time across the test workers.
    with open(pathlib.Path(tempfile.gettempdir()) / "cmseg_tests_libtpu.lock", "w") as lock:
        if any("target=tpu" in a for a in args):
            fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


# What the CUDA plugin prints from C++ when ``import jax`` loads it on a machine without a driver,
# before any code of ours runs (README: keep the extras out of an environment you train with).
_IMPORT_NOISE = ("All log messages before absl::InitializeLog", "cudart_stub.cc")


def _stderr_lines(proc) -> list[str]:
    return [
        x for x in proc.stderr.splitlines() if x.strip() and not any(n in x for n in _IMPORT_NOISE)
    ]


def _line(proc, prefix):
    return next(x for x in proc.stdout.splitlines() if x.startswith(prefix))


@pytest.mark.parametrize(
    "target,kind,compiler",
    [("tpu-v5e", "tpu:TPU v5 lite", "XLA:TPU"), ("h100", "gpu:NVIDIA H100 80GB HBM3", "XLA:GPU")],
)
def test_deviceless_plan_for_a_target(target, kind, compiler):
    proc = dry_run(
        "--config=configs/cam_beta.py:tiny", "--num_seeds=6", f"--config.train.target={target}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _line(proc, "device:") == f"device: {kind} (compiled by {targets.get(target).compiler})"
    assert compiler in _line(proc, "layout:")
    layout = _line(proc, "layout:")
    # Six tiny seeds fit one vmap on either device, by the target's own memory analysis.
    assert "6 seeds (padded to 6) over 1 device(s), 6 per chunk (one vmap; vmap)" in layout
    assert f"({targets.get(target).device_kind} memory)" in layout
    assert "not a measured time" in layout
    gib = float(_line(proc, "estimated_device_bytes:").split()[1])
    assert 0 <= gib < targets.get(target).memory_bytes / 2**30
    # The final ensemble's working set beyond the resident states, by the target's compiler.
    value, unit = _line(proc, "ensemble_bytes_per_device:").split()[1:3]
    ensemble = float(value) * {"MiB": 2**20, "GiB": 2**30}[unit]
    assert 0 < ensemble < targets.get(target).memory_bytes
    # The compilers' own logging of absent hardware stays off the terminal.
    assert _stderr_lines(proc) == [], proc.stderr[-3000:]


def test_a_network_without_a_cost_model_plans_where_the_compiler_reports_no_cost():
    """FCN-ResNet-50's FLOPs come from XLA's cost analysis, which XLA:GPU compiling deviceless
    does not give: the plan says so instead of failing."""
    proc = dry_run(
        "--config=configs/fcn_resnet50.py:tiny", "--num_seeds=2", "--config.train.target=h100"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _line(proc, "flops_per_seed_step:") == "flops_per_seed_step: not reported"
    assert _line(proc, "cost_source:").startswith("cost_source: not reported")
    assert "2 per chunk" in _line(proc, "layout:")


def test_a_target_too_small_is_one_line():
    proc = dry_run(
        "--config=configs/cam_beta.py:tiny",
        "--num_seeds=4",
        "--config.train.target=tpu-v2",
        "--config.train.memory_budget_gb=0.0001",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: train.target='tpu-v2' (TPU v2"), lines
    assert "does not fit" in lines[0] or "more than" in lines[0]
    assert "--config.model.dtype=bfloat16" in lines[0]


def test_the_visible_device_refuses_another_target():
    config = load_config("configs/cam_beta.py:tiny")
    config.train.target = "h100"
    with pytest.raises(errors.UsageError, match="train.target='h100': this run would train on cpu"):
        planning.running_on_target(config)
    config.train.target = "v100"
    with pytest.raises(errors.UsageError, match="train.target='v100': unknown; one of tpu-v5e"):
        planning.target_of(config)


def test_a_missing_compiler_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(errors.UsageError, match=r'pip install -e "\.\[aot-gpu\]"'):
        targets.devices(targets.get("h100"))
    with pytest.raises(errors.UsageError, match=r'pip install -e "\.\[tpu\]"'):
        targets.devices(targets.get("tpu-v5e"))


def test_gpu_target_configs_describe_their_device():
    for target in targets.TARGETS.values():
        assert target.memory_bytes > 0 and target.bandwidth > 0
        assert target.peak("float32") > 0 and target.peak("bfloat16") > 0
        if target.platform == "gpu":
            text = targets.gpu_target_config(target)
            assert f'device_description_str: "{target.device_kind}"' in text
            assert f"device_memory_size: {target.memory_bytes}" in text


def test_balanced_chunkings():
    assert planning.balanced_chunks(48) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 48]
    assert planning.balanced_chunks(5) == [1, 2, 3, 5]
    assert planning.balanced_chunks(1) == [1]


def test_the_planner_bisects_and_backs_off_a_refusal(monkeypatch):
    config = load_config("configs/cam_beta.py:tiny")
    config.train.seed_layout = "vmap"
    gib = 2**30
    compiled = []

    def fake_step_bytes(config, trainer, layout, n, quiet=False):
        chunk = layout.chunk if 0 < layout.chunk < n else n
        compiled.append(chunk)
        if chunk > 30:  # the compiler refuses it: out of memory
            raise planning.DoesNotFit("uses 90G of 80G hbm")
        return 4 * gib + 1.5 * gib * chunk  # states of every seed + one chunk's activations

    monkeypatch.setattr(planning, "step_bytes", fake_step_bytes)
    # 48 seeds that fit 40 at a time (by the line) run as 2 x 24, not padded to 80.
    config.train.memory_budget_gb = (4 + 1.5 * 40 + 1) / planning.HEADROOM
    plan = planning.plan_layout(config, None, 48, data_bytes=gib)
    assert (plan.chunk, plan.padded) == (24, 48), plan
    # The largest first (refused), the smallest, then bisection over the balanced chunkings.
    assert compiled[:2] == [48, 1] and len(compiled) <= 2 + math.ceil(math.log2(13)), compiled
    # A refusal at every chunk but one: one seed per chunk.
    config.train.memory_budget_gb = (4 + 1.5 + 1) / planning.HEADROOM
    assert planning.plan_layout(config, None, 48, data_bytes=gib).chunk == 1
    # The explicit chunk the compiler refuses: one line naming the device and its figure.
    config.train.seed_chunk = 48
    config.train.memory_budget_gb = 0
    config.train.target = "h100"
    with pytest.raises(errors.UsageError) as refusal:
        planning.plan_layout(
            config, None, 48, data_bytes=gib, devices=[_FakeGpu()], target=targets.get("h100")
        )
    message = str(refusal.value)
    assert "\n" not in message
    assert message.startswith("train.target='h100' (NVIDIA H100 80GB HBM3")
    assert "48 seed(s) per chunk does not fit (uses 90G of 80G hbm" in message


class _FakeGpu:
    platform = "gpu"
    device_kind = "NVIDIA H100 80GB HBM3"
    process_index = 0
    id = 0


def test_a_cheaper_execution_wins_when_it_fits_the_same_chunk(monkeypatch):
    config = load_config("configs/cam_beta.py:tiny")
    config.model.remat = True
    config.model.convmixerseg.decoder_chunk = 2
    seen = []

    def fake_step_bytes(config, trainer, layout, n, quiet=False):
        seen.append((bool(config.model.remat), int(config.model.convmixerseg.decoder_chunk)))
        chunk = layout.chunk if 0 < layout.chunk < n else n
        # remat off doubles the activations; the plain decoder costs a little more memory.
        fused = config.model.convmixerseg.decoder_chunk
        per = (1.0 if config.model.remat else 2.0) + (0.0 if fused else 0.25)
        return int((1 + per * chunk) * 2**30)

    monkeypatch.setattr(planning, "step_bytes", fake_step_bytes)
    config.train.memory_budget_gb = (1 + 1.25 * 4) / planning.HEADROOM
    plan = planning.plan_layout(
        config,
        None,
        4,
        data_bytes=0,
        devices=[_FakeGpu()],
        make_trainer=lambda cfg: None,
        target=targets.get("h100"),
    )
    # The config's own execution fits all 4; of the cheaper ones (fewest FLOPs first) only
    # remat on + the plain decoder fits 4 as well, and it wins.
    c = "model.convmixerseg"
    want = {"model.remat": True, f"{c}.remat_group": 0, f"{c}.decoder_chunk": 0}
    assert plan.chunk == 4 and plan.execution == want
    assert seen[-1] == (True, 0)
    assert (
        f"execution model.remat=True, {c}.remat_group=0, {c}.decoder_chunk=0"
        in plan.describe(4)
    )


def test_a_tpu_program_is_sized_by_its_own_peak():
    """XLA:TPU's temporaries are never all live at once: its peak is the footprint there."""

    class Mem:
        argument_size_in_bytes = 10
        output_size_in_bytes = 10
        alias_size_in_bytes = 10
        temp_size_in_bytes = 100
        peak_memory_in_bytes = 60

    assert planning._footprint(Mem(), "tpu") == 60
    assert planning._footprint(Mem(), "gpu") == 110
    assert planning._footprint(Mem(), "cpu") == 110
    Mem.peak_memory_in_bytes = 0  # not reported: the sum
    assert planning._footprint(Mem(), "tpu") == 110


def test_the_widest_chunk_gives_way_to_one_that_pads_less():
    options = planning.balanced_chunks(48)
    fitting = [c for c in options if c <= 10]
    assert planning.least_padding(fitting, 48) == 8  # 6 × 8 = 48, not 5 × 10 = 50
    assert planning.least_padding([c for c in options if c <= 24], 48) == 24
    # 47 seeds that fit 10: one padded seed (6 × 8), never 47 chunks of one.
    assert planning.least_padding([c for c in planning.balanced_chunks(47) if c <= 10], 47) == 8


def test_the_plan_says_when_the_resident_data_hold_the_chunk_back(monkeypatch):
    config = load_config("configs/cam_beta.py:tiny")
    config.train.seed_layout = "vmap"
    gib = 2**30

    def fake_step_bytes(config, trainer, layout, n, quiet=False):
        chunk = layout.chunk if 0 < layout.chunk < n else n
        return int(4 * gib + 1.5 * gib * chunk)

    monkeypatch.setattr(planning, "step_bytes", fake_step_bytes)
    # 45 GiB for the step and the data: 24 per chunk (40 GiB) fits alone, not beside 10 GiB.
    config.train.memory_budget_gb = 45 / planning.HEADROOM
    plan = planning.plan_layout(config, None, 48, data_bytes=10 * gib)
    assert plan.chunk == 16 and plan.held_by_data == 24, plan
    assert "the resident data hold the chunk back: 24 per chunk compiled to 40.00 GiB" in (
        plan.describe(48)
    )
    # With little data nothing is held back, and the plan says nothing of it.
    plan = planning.plan_layout(config, None, 48, data_bytes=gib)
    assert plan.held_by_data == 0 and "hold the chunk back" not in plan.describe(48)


class _FailingLowered:
    def __init__(self, message):
        self.message = message

    def compile(self):
        raise jax.errors.JaxRuntimeError(self.message)


def test_a_compiler_failure_counts_as_not_fitting_and_is_named(monkeypatch):
    # XLA's own errors become the planner's: memory -> DoesNotFit, anything else -> CompileFailed.
    with pytest.raises(planning.CompileFailed, match="the compiler failed: INTERNAL: Couldn't"):
        planning.compile_for_memory(_FailingLowered("INTERNAL: Couldn't find output tile sizes"))
    with pytest.raises(planning.DoesNotFit) as refusal:
        planning.compile_for_memory(_FailingLowered("RESOURCE_EXHAUSTED: Used 90G of 80G hbm"))
    assert not isinstance(refusal.value, planning.CompileFailed)
    assert refusal.value.detail == "uses 90G of 80G hbm"
    config = load_config("configs/cam_beta.py:tiny")
    config.train.seed_layout = "vmap"
    gib = 2**30

    def fake_step_bytes(config, trainer, layout, n, quiet=False):
        chunk = layout.chunk if 0 < layout.chunk < n else n
        if chunk == 7:
            raise planning.CompileFailed("the compiler failed: INTERNAL: no tiling")
        return int(4 * gib + 1.5 * gib * chunk)

    monkeypatch.setattr(planning, "step_bytes", fake_step_bytes)
    config.train.memory_budget_gb = (4 + 1.5 * 12 + 1) / planning.HEADROOM
    plan = planning.plan_layout(config, None, 48, data_bytes=gib)
    # 12 would fit, but the bisection met the failure at 7 first: the plan says so.
    assert plan.chunk < 7 and plan.failed == {7: "the compiler failed: INTERNAL: no tiling"}
    assert "7 per chunk counted as not fitting (the compiler failed: INTERNAL" in plan.describe(48)


def test_a_refusal_suggests_only_what_would_change_for_that_network():
    fcn = load_config("configs/fcn_resnet50.py:tiny,model.dtype=bfloat16,model.remat=true")
    text = str(planning._refusal(fcn, "h100", "does not fit"))
    assert "convmixerseg" not in text and "dtype" not in text and "model.remat" not in text
    assert text.endswith("try a smaller --config.train.batch_size or --config.train.seed_chunk")
    cam = load_config("configs/cam_beta.py")  # thesis: remat on, nested, fused decoder of 2
    text = str(planning._refusal(cam, "h100", "does not fit"))
    want = "--config.model.dtype=bfloat16, --config.model.convmixerseg.decoder_chunk=1, a smaller"
    assert want in text
