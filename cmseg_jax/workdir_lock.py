"""One writer per workdir: an OS advisory lock held by a sweep for its whole run.

A sweep locks ``WORKDIR/lock`` (:data:`cmseg_jax.workdir.LOCK`) with ``flock`` before it reads
its data or compiles anything, and holds it until it exits. The kernel drops the lock when the
process dies, so a ``kill -9`` never leaves a workdir stuck: the next start takes it. The file
names its holder (one JSON object: ``pid``, ``host``, ``started``) so that a second sweep on the
same workdir stops at once with one line naming it, and ``predict`` and ``report`` can say that
what they read is still being written. A clean exit removes the file; one left by a killed
process is not locked and is simply taken over.

Why ``flock`` and not ``fcntl`` record locks: a record lock is released when the process closes
*any* descriptor of the file, and readers of the holder line open it too. The path is unlinked
on release, so :meth:`WorkdirLock.acquire` checks that the file it locked is still the one the
path names (else another process may hold a newer file of the same name) and retries.

On a shared file system ``flock`` is as good as the file system's own support (NFSv4 and Lustre
map it onto their lock managers; a few setups make it local to a host).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time

from cmseg_jax import errors
from cmseg_jax import workdir as workdir_io

# A reader's probe (a shared lock held for a few microseconds) must not make a starting sweep
# believe the workdir is in use: a conflict is retried for this long before it counts.
_RETRY_S = 0.5
_RETRY_STEP_S = 0.05


def lock_path(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir) / workdir_io.LOCK


def _describe(record: dict | None) -> str:
    if not record:
        return "holder unknown"
    return (
        f"pid {record.get('pid', '?')} on {record.get('host', '?')}, "
        f"started {record.get('started', '?')}"
    )


def _read_record(fd: int) -> dict | None:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode(errors="replace") or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class WorkdirLock:
    """The exclusive lock of one workdir (a context manager: acquire / release).

    Args:
      workdir: the sweep's workdir; created (with its parents) if absent. Directories created
        here are removed again on release if the run left them empty (a start that failed).
    """

    def __init__(self, workdir: str | pathlib.Path):
        self.workdir = pathlib.Path(workdir)
        self.path = lock_path(workdir)
        self._fd: int | None = None
        self._created: list[pathlib.Path] = []

    def _make_dirs(self) -> None:
        missing, d = [], self.workdir.absolute()
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                self._remove_created()
                # mkdir says ENOENT where a file system takes no new directories (/proc, /sys).
                why = (
                    f"{d.parent} takes no new directories (a virtual file system?)"
                    if e.errno == errno.ENOENT and d.parent.is_dir()
                    else e.strerror
                )
                raise errors.IOFailure(f"{d}: cannot create the workdir: {why}") from None
            self._created.append(d)

    def _remove_created(self) -> None:
        for d in reversed(self._created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        self._created.clear()

    def acquire(self) -> None:
        """Takes the lock and records this process as its holder.

        Raises:
          UsageError: another process holds it (the line names it: pid, host, start time).
          OSError: the workdir or the lock file cannot be created or written (naming it).
        """
        self._make_dirs()
        deadline = time.monotonic() + _RETRY_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise OSError(e.errno, e.strerror, str(self.path)) from None
                if time.monotonic() < deadline:
                    os.close(fd)
                    time.sleep(_RETRY_STEP_S)
                    continue
                record = _read_record(fd)
                os.close(fd)
                raise errors.UsageError(
                    f"{self.workdir}: in use by another sweep ({_describe(record)}; lock "
                    f"{self.path}); wait for it to end, or stop it, then rerun this command"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder we waited for removed the file: lock the new one
        self._fd = fd
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as e:
            self.release()
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def release(self) -> None:
        """Removes the lock file and drops the lock (and directories made by :meth:`acquire`
        that stayed empty)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(workdir: str | pathlib.Path) -> str | None:
    """Who is writing ``workdir`` now (``pid …, started …``), or None when no process holds its
    lock. Read-only: nothing is created or changed."""
    try:
        fd = os.open(lock_path(workdir), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return _describe(_read_record(fd))
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
