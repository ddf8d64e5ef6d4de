"""cmseg_jax.xla_flags: the sweep's default XLA flags, overridden by the user's XLA_FLAGS."""

import json

from cmseg_jax import workdir as workdir_io
from cmseg_jax import xla_flags

DEFAULTS = ("--xla_cpu_prefer_vector_width=512", "--xla_cpu_enable_fast_math=true")


def test_flag_name():
    assert xla_flags.flag_name("--xla_cpu_use_onednn=true") == "xla_cpu_use_onednn"
    assert xla_flags.flag_name("--xla_cpu_experimental_ynn_fusion_type=") == (
        "xla_cpu_experimental_ynn_fusion_type"
    )
    assert xla_flags.flag_name("-xla_dump_to=/tmp/a=b") == "xla_dump_to"
    assert xla_flags.flag_name("--xla_cpu_enable_fast_math") == "xla_cpu_enable_fast_math"


def test_compose_puts_the_defaults_first_and_the_users_flags_win():
    assert xla_flags.compose(None, DEFAULTS) == (" ".join(DEFAULTS), list(DEFAULTS))
    assert xla_flags.compose("", ()) == ("", [])
    # The user names one of the defaults' flags (with another value): that default is left out.
    flags, applied = xla_flags.compose(
        "  --xla_cpu_prefer_vector_width=256   --xla_backend_optimization_level=0 ", DEFAULTS
    )
    assert applied == ["--xla_cpu_enable_fast_math=true"]
    assert flags == (
        "--xla_cpu_enable_fast_math=true --xla_cpu_prefer_vector_width=256 "
        "--xla_backend_optimization_level=0"
    )
    # A flag given without a value still names it.
    assert xla_flags.compose("--xla_cpu_enable_fast_math", DEFAULTS)[1] == [DEFAULTS[0]]


def test_apply_sets_xla_flags_and_records_it(monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    info = xla_flags.apply(DEFAULTS, environ)
    assert environ["XLA_FLAGS"] == (
        "--xla_cpu_prefer_vector_width=512 --xla_cpu_enable_fast_math=false"
    )
    assert info == {
        "flags": environ["XLA_FLAGS"],
        "defaults": ["--xla_cpu_prefer_vector_width=512"],
        "user": "--xla_cpu_enable_fast_math=false",
        "backend_started": False,
    }
    assert xla_flags.record() == info
    line = xla_flags.describe(info)
    assert line.startswith("XLA: flags --xla_cpu_prefer_vector_width=512 ")
    assert "defaults applied: --xla_cpu_prefer_vector_width=512;" in line
    # No defaults and no XLA_FLAGS: the variable stays unset.
    environ = {}
    assert xla_flags.apply((), environ)["flags"] == "" and "XLA_FLAGS" not in environ
    assert "defaults applied: none; from XLA_FLAGS: none" in xla_flags.describe(xla_flags.record())


def test_apply_changes_nothing_once_a_backend_has_started(monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: True)
    environ = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
    info = xla_flags.apply(DEFAULTS, environ)
    assert environ == {"XLA_FLAGS": "--xla_backend_optimization_level=0"}
    assert info["defaults"] == [] and info["backend_started"] is True
    assert "had already started" in xla_flags.describe(info)


def test_the_cpu_defaults_are_off_as_measured():
    # benchmarks/xla_cpu_flags.py found no setting faster than the default (benchmarks/README.md).
    assert xla_flags.CPU_DEFAULTS == ()


def test_run_info_records_the_xla_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    info = xla_flags.apply(DEFAULTS, {})
    workdir_io.write_run_info(
        tmp_path, [0], [], 1, 1, data="phantom", device="cpu:cpu", xla=xla_flags.record()
    )
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["xla"] == info and run["xla"]["flags"] == " ".join(DEFAULTS)
