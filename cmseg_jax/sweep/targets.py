"""Accelerators a sweep can be planned for without having one (``train.target``).

Each :class:`Target` names a device, its memory, its datasheet peaks, and how XLA compiles for
it *deviceless* on any host: XLA:TPU through libtpu's topology descriptions (the ``tpu`` extra),
XLA:GPU through the CUDA PJRT plugin and a ``GpuTargetConfig`` text proto (the ``aot-gpu``
extra: the two wheels ``jax-cuda12-plugin`` and ``jax-cuda12-pjrt``; no NVIDIA library is needed
to compile). The compiled program's memory analysis is XLA's own buffer assignment for that
device: a fact about memory. The peaks are datasheet figures, used only for a roofline floor:
nothing here is a measured time.

``train.target = ''`` (the default) plans for the visible devices, as a real run does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

from cmseg_jax import errors

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """One accelerator kind.

    Attributes:
      name: the ``train.target`` value.
      platform: 'tpu' or 'gpu' (jax's ``Device.platform``).
      device_kind: what the device calls itself.
      memory_bytes: memory of one device (one TPU core / chip as jax sees it, one GPU).
      peak_flops: datasheet dense peak per compute dtype, FLOP/s per device.
      bandwidth: datasheet memory bandwidth, bytes/s per device.
      compiler: how it is compiled deviceless (said in the dry run).
      topology: libtpu topology name (TPU) whose first device is planned for.
      gpu_spec: the GpuTargetConfig fields (GPU).
    """

    name: str
    platform: str
    device_kind: str
    memory_bytes: int
    peak_flops: dict
    bandwidth: float
    compiler: str
    topology: str = ""
    gpu_spec: dict | None = None

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for a compute dtype ('float32' or 'bfloat16')."""
        return self.peak_flops.get(dtype) or self.peak_flops["bfloat16"]


def _tpu(name, kind, memory_gib, bf16_tflops, gbps, topology):
    # At jax's default precision XLA:TPU runs float32 matmuls and convolutions as bfloat16 passes
    # on the MXU, so the float32 peak is the bfloat16 one.
    return Target(
        name=name,
        platform="tpu",
        device_kind=kind,
        memory_bytes=int(memory_gib * GiB),
        peak_flops={"bfloat16": bf16_tflops * 1e12, "float32": bf16_tflops * 1e12},
        bandwidth=gbps * 1e9,
        compiler=f"XLA:TPU (libtpu, deviceless, topology {topology})",
        topology=topology,
    )


def _gpu(name, kind, memory_bytes, bf16_tflops, f32_tflops, gbps, spec):
    return Target(
        name=name,
        platform="gpu",
        device_kind=kind,
        memory_bytes=int(memory_bytes),
        peak_flops={"bfloat16": bf16_tflops * 1e12, "float32": f32_tflops * 1e12},
        bandwidth=gbps * 1e9,
        compiler="XLA:GPU (CUDA PJRT plugin, deviceless, GpuTargetConfig)",
        gpu_spec=dict(spec, device_memory_size=int(memory_bytes), description=kind),
    )


# Datasheet figures: dense (not sparse) peaks; the float32 GPU peak is TF32 tensor-core throughput,
# which XLA:GPU uses for float32 matmuls and convolutions at jax's default precision.
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        # Colab's TPU runtime (v5e-1) and Cloud TPU v5 lite pods: 16 GiB HBM2e, 819 GB/s.
        _tpu("tpu-v5e", "TPU v5 lite", 16, 197, 819, "v5e:2x2"),
        # Trillium: 32 GiB HBM, 1,640 GB/s.
        _tpu("tpu-v6e", "TPU v6 lite", 32, 918, 1640, "v6e:2x2"),
        # One v4 chip (megacore, one jax device): 32 GiB HBM2, 1,200 GB/s.
        _tpu("tpu-v4", "TPU v4", 32, 275, 1200, "v4:2x2x1"),
        # One v2 core (a v2-8 has 8): 8 GiB HBM, 300 GB/s, 22.5 TFLOP/s.
        _tpu("tpu-v2", "TPU v2", 8, 22.5, 300, "v2:2x2"),
        _gpu(
            "h100",
            "NVIDIA H100 80GB HBM3",
            84_929_347_584,
            989,
            494,
            3352,
            dict(cc=(9, 0), cores=132, clock=1.98, l2=52_428_800, smem_core=233_472,
                 smem_optin=232_448, fpus=128),
        ),
        _gpu(
            "a100-80",
            "NVIDIA A100-SXM4-80GB",
            85_899_345_920,
            312,
            156,
            2039,
            dict(cc=(8, 0), cores=108, clock=1.41, l2=41_943_040, smem_core=167_936,
                 smem_optin=166_912, fpus=64),
        ),
        _gpu(
            "l4",
            "NVIDIA L4",
            23_034 * 2**20,
            121,
            60,
            300,
            dict(cc=(8, 9), cores=58, clock=2.04, l2=50_331_648, smem_core=102_400,
                 smem_optin=101_376, fpus=128),
        ),
    )
}


def get(name: str) -> Target:
    """The target called ``name``.

    Raises:
      UsageError: naming ``train.target`` and the known names.
    """
    if name not in TARGETS:
        raise errors.UsageError(
            f"train.target={name!r}: unknown; one of {', '.join(TARGETS)} ('' = the visible "
            "devices)"
        )
    return TARGETS[name]


def gpu_target_config(target: Target) -> str:
    """The ``GpuTargetConfig`` text proto XLA:GPU compiles for (what a CUDA device reports)."""
    s = target.gpu_spec
    major, minor = s["cc"]
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {s["smem_core"]}
  threads_per_core_limit: 2048
  core_count: {s["cores"]}
  fpus_per_core: {s["fpus"]}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(target.bandwidth)}
  l2_cache_size: {s["l2"]}
  clock_rate_ghz: {s["clock"]}
  device_memory_size: {s["device_memory_size"]}
  shared_memory_per_block_optin: {s["smem_optin"]}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
runtime_version {{ major: 12 minor: 8 }}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{s["description"]}"
"""


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (libtpu and the CUDA plugin log their missing hardware there
    from C++); restored afterwards, also on an error."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_EXTRA = {"tpu": ("tpu", "libtpu"), "gpu": ("aot-gpu", "jax_plugins.xla_cuda12")}


def devices(target: Target) -> list:
    """One device of ``target`` to compile for, without the hardware.

    Raises:
      UsageError: the target's compiler is not installed (naming the extra to install).
    """
    import importlib.util

    extra, module = _EXTRA[target.platform]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise errors.UsageError(
            f"train.target={target.name!r}: planning for {target.device_kind} needs its compiler; "
            f'pip install -e ".[{extra}]"'
        )
    from jax.experimental import topologies

    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    try:
        with _quiet_stderr():
            if target.platform == "tpu":
                topo = topologies.get_topology_desc(topology_name=target.topology, platform="tpu")
            else:
                topo = topologies.get_topology_desc(
                    platform="cuda", target_config=gpu_target_config(target), topology="1x1x1"
                )
    except Exception as e:  # the plugin's own failure, one line
        raise errors.UsageError(
            f"train.target={target.name!r}: the {target.platform.upper()} compiler could not "
            f"describe {target.device_kind} ({errors.first_line(e)})"
        ) from None
    return list(topo.devices[:1])


def start_host_backend() -> None:
    """Starts jax on the host's CPU alone, with the compiler plugins' start-up logging (the CUDA
    plugin reports its absent driver from C++ when jax discovers it) kept off the terminal."""
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # backends already started: keep what they are
        pass
    with _quiet_stderr():
        jax.devices()


def compile_quietly(lowered):
    """``lowered.compile()`` with the compiler's C++ logging kept off the terminal."""
    with _quiet_stderr():
        return lowered.compile()
