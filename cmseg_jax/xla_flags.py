"""The XLA flags a sweep starts its backend with: the one place for the project's CPU defaults.

XLA reads ``XLA_FLAGS`` once, when the first backend starts (the first ``jax.devices()`` or
computation, not ``import jax``), so the sweep CLI calls :func:`apply` before anything touches a
device. :data:`CPU_DEFAULTS` are XLA:CPU flags that the sweep would set by default; each one
whose flag the user's own ``XLA_FLAGS`` already names is left out, so the user's value wins,
and the user's flags come last. The result is said in one ``XLA:`` line and recorded in
``run.json`` (``"xla"``). ``xla_cpu_*`` flags change only XLA:CPU's compilations (on an
accelerator: the few host computations).

:data:`CPU_DEFAULTS` is empty: ``benchmarks/xla_cpu_flags.py`` timed every XLA:CPU library path
of jaxlib 0.10.2 (oneDNN, XNNPACK, YNNPACK fusion kinds, fast math, vector width, ISA) against
the default training step on a 2-core AVX-512 host and none was faster beyond the machine's
drift (the table and what each flag does: ``benchmarks/README.md``). Re-run it on another CPU
before adding one here.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence

# XLA:CPU flags the sweep sets unless the user's XLA_FLAGS names them; "--flag=value" items.
CPU_DEFAULTS: tuple[str, ...] = ()

_applied: dict | None = None


def flag_name(item: str) -> str:
    """``--xla_cpu_use_onednn=true`` -> ``xla_cpu_use_onednn`` (also for ``-flag`` / no value)."""
    return item.lstrip("-").split("=", 1)[0]


def compose(user: str | None, defaults: Sequence[str]) -> tuple[str, list[str]]:
    """(the ``XLA_FLAGS`` value, the defaults in it): every default whose flag ``user`` does not
    name, in order, then ``user``'s own flags unchanged."""
    user_items = (user or "").split()
    named = {flag_name(item) for item in user_items}
    applied = [item for item in defaults if flag_name(item) not in named]
    return " ".join(applied + user_items), applied


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # a jax without this (private) query: assume not yet started
        return False


def apply(
    defaults: Sequence[str] = CPU_DEFAULTS, environ: MutableMapping[str, str] | None = None
) -> dict:
    """Sets ``XLA_FLAGS`` to :func:`compose` of the user's and ``defaults``; what it did.

    Returns (and keeps, for :func:`record`) ``{"flags": the XLA_FLAGS the backend starts with,
    "defaults": the defaults among them, "user": the user's XLA_FLAGS, "backend_started": True
    when a backend had already started, so that nothing was changed}``.
    """
    global _applied
    environ = os.environ if environ is None else environ
    user = environ.get("XLA_FLAGS", "")
    started = _backend_started()
    if started:
        flags, applied = user, []
    else:
        flags, applied = compose(user, defaults)
        if flags or "XLA_FLAGS" in environ:
            environ["XLA_FLAGS"] = flags
    _applied = {"flags": flags, "defaults": applied, "user": user, "backend_started": started}
    return dict(_applied)


def record() -> dict:
    """What :func:`apply` set in this process; without it, the environment's ``XLA_FLAGS``."""
    if _applied is not None:
        return dict(_applied)
    user = os.environ.get("XLA_FLAGS", "")
    return {"flags": user, "defaults": [], "user": user, "backend_started": None}


def describe(info: dict) -> str:
    """The sweep's ``XLA:`` line for :func:`apply`'s result."""
    flags = info["flags"] or "(none)"
    if info.get("backend_started"):
        return f"XLA: flags {flags} (the backend had already started: the defaults were not set)"
    defaults = " ".join(info["defaults"]) or "none"
    user = info["user"] or "none"
    return f"XLA: flags {flags} (defaults applied: {defaults}; from XLA_FLAGS: {user})"
