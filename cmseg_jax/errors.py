"""Mistakes and failures as one line on stderr with an exit status; SIGINT / SIGTERM handling.

Every command-line entry point (sweep, report, predict, data.check, the phantom writer, the TFDS
build) ends an expected failure with one line on stderr, ``error: <flag, field or file>: <what is
wrong>``, and an exit status:

* 2 -- a usage mistake: a flag, a config field, a workdir that holds another run;
* 1 -- a data or I/O failure: a data file, a checkpoint, the workdir, a full disk;
* 130 / 143 -- interrupted by SIGINT (Ctrl-C) / SIGTERM.

``--debug`` adds the traceback. An exception not recognised here is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

EXIT_DATA = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """A flag, config field or argument is wrong (exit status 2); the message names it."""

    exit_code = EXIT_USAGE


class DataError(ValueError):
    """A data file is missing or malformed. One-line message: '<file>: <what is wrong>'."""

    exit_code = EXIT_DATA  # a data failure, not a usage mistake


class IOFailure(RuntimeError):
    """A file, checkpoint or the disk failed (exit status 1); the message names the path."""

    exit_code = EXIT_DATA


class Interrupted(BaseException):
    """SIGINT or SIGTERM ended the command (exit status 128 + the signal number).

    A ``BaseException`` like ``KeyboardInterrupt``, so that ``except Exception`` clauses on the
    way up do not swallow it.
    """

    def __init__(self, signum: int, message: str = ""):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(message or "stopped")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the members of exception groups, each once."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])


def _oserror_text(e: OSError) -> str:
    what = e.strerror or first_line(e)
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {what}"
    return f"{e.filename}: {what}" if e.filename is not None else what


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its chain) says the disk or a quota is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
    return False


def os_reason(exc: BaseException) -> str:
    """The one-line reason of an I/O failure: the first ``OSError`` of the chain, else the
    first line of ``exc``."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror:
            return _oserror_text(e)
    if disk_full(exc):
        return "No space left on device"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return " ".join(text.splitlines()[0].split())


def describe(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) of an expected failure; None for anything else (a bug)."""
    if isinstance(exc, Interrupted):
        return exc.exit_code, f"interrupted ({exc.signal_name}): {first_line(exc)}"
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT, "interrupted (SIGINT)"
    if isinstance(exc, UsageError | IOFailure | DataError):
        return exc.exit_code if hasattr(exc, "exit_code") else EXIT_DATA, first_line(exc)
    if isinstance(exc, OSError):
        return EXIT_DATA, _oserror_text(exc)
    if disk_full(exc):
        return EXIT_DATA, os_reason(exc)
    if "RESOURCE_EXHAUSTED" in str(exc) and "memory" in str(exc).lower():
        return EXIT_DATA, (
            f"the device ran out of memory ({first_line(exc)[:200]}); train fewer seeds at "
            "once with --config.train.seed_chunk=K, or a smaller batch"
        )
    return None


# Set once a command has reported its failure in its one line: it is about to exit, and what
# background threads or atexit handlers say after that (a full disk again) is noise.
_REPORTED = False


def _late_noise(exc: BaseException | None) -> bool:
    """Whether a background thread's or a callback's exception says nothing of its own: the
    late completions of an Orbax save whose event loop is gone (after the save failed and was
    reported), or anything once the command has reported its failure."""
    if _REPORTED:
        return True
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


_THREAD_FAILURES: list[BaseException] = []


def thread_failure() -> BaseException | None:
    """The last full-disk error that ended a background thread (a writer thread whose owner
    checks on it), once :func:`quiet_background_noise` is installed; else None."""
    return _THREAD_FAILURES[-1] if _THREAD_FAILURES else None


def quiet_background_noise() -> None:
    """Drops :func:`_late_noise` from ``sys.unraisablehook`` and ``threading.excepthook``
    (every other exception there still prints), and keeps a full disk that ends a thread for
    :func:`thread_failure` instead of printing it; installed once by each command's body.

    A full disk in mid-save fails Orbax's write with one exception, which the command reports
    in one line; the tensorstore writes still in flight then complete onto the save's closed
    event loop, each printing "Event loop is closed", and at exit tensorboardX's atexit
    handlers retry their flush onto the full disk; asyncio logs the failed writes' futures as
    never retrieved. None of it can be drained from outside those libraries, so it is silenced
    here.
    """
    if getattr(sys.unraisablehook, "_cmseg_quiet", False):
        return
    unraisable, thread = sys.unraisablehook, threading.excepthook

    def quiet_unraisable(info) -> None:
        if not _late_noise(info.exc_value):
            unraisable(info)

    def quiet_thread(args) -> None:
        if disk_full(args.exc_value):  # the thread's owner reports it (thread_failure())
            _THREAD_FAILURES.append(args.exc_value)
        elif not _late_noise(args.exc_value):
            thread(args)

    quiet_unraisable._cmseg_quiet = True
    sys.unraisablehook, threading.excepthook = quiet_unraisable, quiet_thread
    logging.getLogger("asyncio").addFilter(_quiet_asyncio)


def _quiet_asyncio(record: logging.LogRecord) -> bool:
    """asyncio's "Future exception was never retrieved" of the writes of a failed save: the
    failure itself reaches the command (a full disk), which reports it."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (_late_noise(exc) or (exc is not None and disk_full(exc)))


def report(exc: BaseException, debug: bool = False) -> int:
    """Prints ``exc`` as one line on stderr (with its traceback first if ``debug``); returns the
    exit status. Re-raises an exception that :func:`describe` does not recognise."""
    global _REPORTED
    described = describe(exc)
    if described is None:
        raise exc
    code, line = described
    _REPORTED = not debug  # --debug shows everything
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    prefix = "" if line.startswith("interrupted") else "error: "
    print(f"{prefix}{line}", file=sys.stderr, flush=True)
    return code


# How many command bodies (cli(), run_main()) are running: a SIGTERM outside them is one of
# start-up (imports, flag parsing), where nothing has been written yet.
_BODIES = 0


def _sigterm_at_startup(signum, frame) -> None:
    del frame
    if _BODIES:
        raise Interrupted(signum, "stopped")
    name = signal.Signals(signum).name
    print(f"interrupted ({name}): while starting up; nothing was written", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + signum)  # an import may be half done: nothing to unwind, nothing to save


def handle_sigterm_from_startup() -> None:
    """Makes SIGTERM one line and exit status 143 from the first import of the package on,
    instead of a silent death by signal (-15): during start-up it ends the process at once,
    inside a command's body it raises :class:`Interrupted` (the sweep's :class:`StopSignals`
    takes over for its run). Called by ``cmseg_jax/__init__.py`` for the package's own
    commands only; a library user's handlers are left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_at_startup)


@contextlib.contextmanager
def _body() -> Iterator[None]:
    global _BODIES
    quiet_background_noise()
    _BODIES += 1
    try:
        yield
    finally:
        _BODIES -= 1


@contextlib.contextmanager
def cli(debug: bool = False) -> Iterator[None]:
    """Runs a command's body: an expected failure becomes one line and ``sys.exit(status)``."""
    try:
        with _body():
            yield
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 -- describe() sorts expected from unexpected
        if describe(e) is None:
            raise
        code = report(e, debug)
        sys.exit(code)


def lookup(table: dict, name, field: str):
    """``table[name]``; for an unknown name the one-line UsageError of config field ``field``
    (``config.data.source='x': must be one of phantom, lits``)."""
    if name in table:
        return table[name]
    raise UsageError(f"config.{field}={name!r}: must be one of {', '.join(table)}")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with a ``--debug`` flag and one-line usage errors (exit status 2)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", help="on an error, print its traceback too"
        )

    def error(self, message: str):
        print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


def run_main(body, args) -> int:
    """``body(args)`` with expected failures as one line; returns the exit status."""
    try:
        with _body():
            return body(args) or 0
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 -- describe() sorts expected from unexpected
        if describe(e) is None:
            raise
        return report(e, getattr(args, "debug", False))


def last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = lines[-1] if lines else type(exc).__name__
    head, sep, rest = line.partition(": ")
    return rest if sep and head.isidentifier() and head.endswith("Error") else line


def _moved_field(field: str) -> str | None:
    """Where a network's flat field of older configs is now (``model.hidden`` ->
    ``model.convmixerseg.hidden``), or None."""
    from cmseg_jax.models.registry import legacy_fields

    return legacy_fields().get(field)


def _flag_error(exc: BaseException, argv: Sequence[str]) -> str:
    """One line for a command line that does not parse, naming the flag."""
    import ml_collections

    from cmseg_jax.config_base import load_config_file

    spec = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if spec and overrides:
        try:
            config = load_config_file(spec)
        except Exception:  # reported below through absl's own message
            config = None
        for name in overrides if config is not None else ():
            node = config
            for part in name.split(".")[1:]:
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    moved = _moved_field(name.removeprefix("config."))
                    if moved:
                        return f"--{name}: no such config field; it is now --config.{moved}"
                    group = isinstance(node, ml_collections.ConfigDict)
                    fields = ", ".join(sorted(node.keys())) if group else ""
                    return f"--{name}: no such config field" + (
                        f" (there: {fields})" if fields else ""
                    )
                node = node[part]
    text = str(exc)
    line = last_line(exc) if "Traceback" in text else first_line(exc)
    if "Traceback" in text and spec:
        line = f"--config={spec}: {line}"
    return line.removeprefix("flag ")


def parse_absl_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with a one-line error (exit status 2) instead of its usage text.

    An unknown ``--config.<field>`` override is named with the fields that do exist there.
    """
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except Exception as e:  # flag syntax, a config file that raises, a config override
        if "--debug" in argv:
            traceback.print_exception(e, file=sys.stderr)
        print(f"error: {_flag_error(e, argv)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)


def guarded(main, debug_flag):
    """An absl ``main`` with its expected failures turned into one line and an exit status;
    ``debug_flag`` is the absl flag holder of ``--debug``."""

    @functools.wraps(main)
    def wrapped(argv):
        with cli(debug=debug_flag.value):
            return main(argv)

    return wrapped


class StopSignals:
    """SIGINT and SIGTERM during a run: deferred to a safe point, or immediate.

    While :attr:`deferring` is set, a first signal is only recorded (:attr:`signum`); the run
    checks :attr:`requested` at its safe points (after a compiled call, after a checkpoint),
    writes a checkpoint and raises :class:`Interrupted`. Otherwise, or on a second signal, the
    handler raises :class:`Interrupted` at once. Installed only in the main thread.
    """

    def __init__(self):
        self.signum: int | None = None
        self.deferring = False
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        del frame
        first = self.signum is None
        if first:
            # Kept even when raising: an exception raised where Python ignores it (a garbage
            # collection callback) is then still honoured at the next safe point.
            self.signum = signum
        if self.deferring and first:
            return
        raise Interrupted(
            signum, "stopped; rerun the same command to resume from the last checkpoint"
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def stop(self, message: str) -> Interrupted:
        """The :class:`Interrupted` to raise for the recorded signal."""
        return Interrupted(self.signum or signal.SIGINT, message)
