"""Thin Orbax wrapper: save / verify / restore / resume the seed-stacked train state.

A checkpoint holds the whole seed-stacked :class:`~cmseg_jax.train.TrainState` (every leaf has a
leading seed axis, in the order of ``config.json``'s ``seeds``) and is written after each epoch,
under ``WORKDIR/checkpoints/<epoch>``. Orbax writes to a temporary directory and renames it when the
write is complete, so a run killed mid-save leaves the previous checkpoint intact; temporary
directories left by a kill are removed when the checkpoints are next opened.

Integrity: every checkpoint records the SHA-256 of each array it saved (dtype, shape and bytes) in
its Orbax step metadata (``custom_metadata["sha256"]``: tree path -> hex digest). A restore
recomputes them; a checkpoint that cannot be read or does not match is *corrupt*.
:meth:`Checkpointer.restore_latest` walks back from the newest checkpoint to the newest intact one,
reporting each corrupt one (and, when resuming a run, moving it to ``WORKDIR/corrupt_checkpoints``
so that the epoch can be written again).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging as py_logging
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cmseg_jax import errors
from cmseg_jax import workdir as workdir_io
from cmseg_jax.models.convmixerseg import upgrade_legacy_layout

CHECKSUM_KEY = "sha256"
SIGNATURE_KEY = "arrays"
# A caller's own JSON text kept with a checkpoint (the sweep: its metrics.jsonl rows so far).
RECORD_KEY = "record"
CORRUPT_DIR = workdir_io.CORRUPT_DIR


class CorruptCheckpoint(errors.IOFailure):
    """A checkpoint is unreadable or its content does not match its recorded checksums."""


def tree_digests(tree: Any) -> dict[str, str]:
    """Tree path -> SHA-256 hex digest of the leaf's dtype, shape and bytes (host numpy)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
        out[jax.tree_util.keystr(path)] = h.hexdigest()
    return out


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs failures (with tracebacks) at ERROR; the caller reports them in one line."""
    logger = py_logging.getLogger("absl")
    level = logger.level
    logger.setLevel(py_logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class Checkpointer:
    """Per-epoch checkpoints of a sweep's stacked state.

    Args:
      workdir: the sweep's workdir; checkpoints go to ``workdir/<subdir>``.
      max_to_keep: number of most recent epochs kept on disk.
      subdir: directory under the workdir (``checkpoints``; ``interrupted`` for the mid-epoch
        checkpoint of a stopped run).
      create: create the directory (False: read only, e.g. for predict).
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        max_to_keep: int = 2,
        subdir: str = workdir_io.CHECKPOINTS_DIR,
        create: bool = True,
    ):
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / subdir
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # Every save is awaited at once: no background thread, errors where they happen.
            enable_async_checkpointing=False,
            create=create,
            cleanup_tmp_directories=create,
        )
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        with _quiet_orbax():  # it warns about each step directory without metadata
            return ocp.CheckpointManager(self.directory, options=self._options)

    def _reopen(self) -> None:
        """A fresh Orbax manager: a failed restore can leave the old one unable to restore or
        save anything else."""
        with _quiet_orbax():
            self._manager.close()
        self._manager = self._open()

    def epochs(self) -> list[int]:
        """The epochs with a checkpoint directory, oldest first (intact or not)."""
        return sorted(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        """The last epoch with a checkpoint directory (1-based), or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any, record: str | None = None) -> None:
        """Saves ``state`` (host numpy) as the checkpoint of ``epoch`` and waits until it is on
        disk, with the checksums of its arrays and, if given, ``record`` (any text the caller
        wants back with this state: :meth:`record`).

        Raises:
          IOFailure: the write failed (e.g. the disk is full); the previous checkpoints are kept.
        """
        custom = {CHECKSUM_KEY: tree_digests(state), SIGNATURE_KEY: tree_signature(state)}
        if record is not None:
            custom[RECORD_KEY] = record
        free = _free_bytes(self.directory)  # for the message of a full disk
        try:
            with _quiet_orbax():
                self._manager.save(epoch, args=ocp.args.StandardSave(state), custom_metadata=custom)
                self._manager.wait_until_finished()
        except Exception as e:
            reason = errors.os_reason(e)
            if errors.disk_full(e):
                reason = f"{reason}: {_space_needed(state, free)}"
            raise errors.IOFailure(
                f"{self.directory / str(epoch)}: could not write the checkpoint ({reason}); the "
                "earlier checkpoints are kept, rerun the same command to resume from the last one"
            ) from e

    def restore(self, epoch: int, like: Any) -> Any:
        """Restores epoch ``epoch`` into the structure of ``like`` and verifies its checksums.

        A checkpoint without checksums that does not restore into ``like`` as saved is read as
        saved and mapped onto today's layout (checkpoints written before the mixer layers were
        one scan: :func:`~cmseg_jax.models.convmixerseg.upgrade_legacy_layout`).

        Returns:
          The state as host numpy arrays.

        Raises:
          CorruptCheckpoint: unreadable, or an array differs from what was saved.
          IOFailure: the checkpoint holds arrays of another structure (not corruption).
        """
        path = self.directory / str(epoch)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        with _quiet_orbax():
            try:
                meta = self._manager.metadata(epoch)
            except Exception as e:
                raise CorruptCheckpoint(f"{path}: unreadable ({errors.first_line(e)})") from e
            custom = meta.custom_metadata or {}
            recorded = custom.get(CHECKSUM_KEY)
            if recorded is None and meta.commit_timestamp_nsecs is None:
                raise CorruptCheckpoint(f"{path}: incomplete or unreadable step metadata")
            signature = custom.get(SIGNATURE_KEY)
            wanted = tree_signature(like)
            if recorded is not None and set(recorded) != set(wanted):
                raise errors.IOFailure(
                    f"{path}: holds a different state structure ({len(recorded)} arrays, "
                    f"expected {len(wanted)}); written by another version or config?"
                )
            if signature is not None and signature != wanted:
                key = next(k for k in sorted(wanted) if signature.get(k) != wanted[k])
                raise errors.IOFailure(
                    f"{path}: array {key} is {signature.get(key)}, expected {wanted[key]}; "
                    "written by another config?"
                )
            try:
                restored = self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
            except Exception as e:
                restored = self._restore_legacy(epoch, like) if recorded is None else None
                if restored is None:
                    raise CorruptCheckpoint(f"{path}: unreadable ({errors.first_line(e)})") from e
        restored = jax.tree_util.tree_map(np.asarray, restored)
        if recorded is not None:
            got = tree_digests(restored)
            bad = sorted(k for k, v in recorded.items() if got.get(k) != v)
            if bad:
                more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                raise CorruptCheckpoint(
                    f"{path}: content does not match its checksum (array {bad[0]}{more})"
                )
        return restored

    def record(self, epoch: int) -> str | None:
        """The ``record`` saved with the checkpoint of ``epoch``; None if it has none."""
        with _quiet_orbax():
            try:
                custom = self._manager.metadata(epoch).custom_metadata or {}
            except Exception:  # unreadable metadata: restore() has reported the checkpoint
                return None
        record = custom.get(RECORD_KEY)
        return record if isinstance(record, str) else None

    def _restore_legacy(self, epoch: int, like: Any) -> Any | None:
        """The checkpoint read as saved and mapped onto ``like``'s layout; None if unreadable.

        Raises:
          IOFailure: it reads, but holds another model's arrays.
        """
        try:
            raw = self._manager.restore(epoch, args=ocp.args.StandardRestore())
        except Exception:
            return None
        upgraded = upgrade_legacy_layout(raw, layer_axis=1)  # axis 0 is the seed
        try:
            return _fill_like(like, upgraded)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise errors.IOFailure(
                f"{self.directory / str(epoch)}: does not fit this model ({errors.first_line(e)});"
                " written by another version or config?"
            ) from e

    def restore_latest(
        self,
        like: Any,
        report: Callable[[str], None],
        quarantine: bool = True,
    ) -> tuple[int | None, Any]:
        """The newest intact checkpoint, walking back over corrupt ones.

        Args:
          like: the state structure, as for :meth:`restore`.
          report: called with one line per corrupt checkpoint skipped.
          quarantine: move each corrupt checkpoint to ``WORKDIR/corrupt_checkpoints/<epoch>``
            (so that the epoch can be trained and saved again).

        Returns:
          (epoch, state), or (None, None) when no checkpoint is intact.
        """
        for epoch in sorted(self.epochs(), reverse=True):
            try:
                return epoch, self.restore(epoch, like)
            except CorruptCheckpoint as e:
                line = errors.first_line(e)
                if quarantine:
                    line += f"; moved to {self.quarantine(epoch)}"
                self._reopen()
                report(line)
        return None, None

    def quarantine(self, epoch: int) -> pathlib.Path:
        """Moves the checkpoint of ``epoch`` out of the way; returns where it went."""
        dest_dir = self.workdir / CORRUPT_DIR
        dest_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.directory.name}-{epoch}"
        dest, n = dest_dir / name, 1
        while dest.exists():
            n += 1
            dest = dest_dir / f"{name}.{n}"
        shutil.move(str(self.directory / str(epoch)), str(dest))
        return dest

    def close(self) -> None:
        self._manager.close()


def _free_bytes(directory: pathlib.Path) -> int | None:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _space_needed(state: Any, free: int | None) -> str:
    """How much a checkpoint of ``state`` takes next to what was free when its save began."""
    need = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(state))
    had = "free space unknown" if free is None else f"{_size(free)} were free"
    return f"a checkpoint takes about {_size(need)}, {had}"


def _fill_like(like: Any, raw: Any) -> Any:
    """``like``'s structure with every leaf looked up by its key path in the raw tree ``raw``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, leaf in paths:
        node = raw
        for entry in path:
            key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", None)))
            node = node[key]
        value = np.asarray(node)
        if value.shape != np.shape(leaf):
            raise ValueError(
                f"{jax.tree_util.keystr(path)} has shape {value.shape}, expected {np.shape(leaf)}"
            )
        leaves.append(value.astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


class InterruptedCheckpoint:
    """The checkpoint of an epoch stopped part-way (SIGINT / SIGTERM), in ``WORKDIR/interrupted``.

    It holds the seed-stacked state after ``step`` optimizer steps of ``epoch`` and the summed
    training loss of those steps, which is all a resumed run needs to finish the epoch exactly as
    an uninterrupted one. It is only valid right after the last complete epoch, and is deleted once
    that epoch's own checkpoint is written.
    """

    SUBDIR = workdir_io.INTERRUPTED_DIR

    def __init__(self, workdir: str | pathlib.Path):
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / self.SUBDIR

    def save(self, epoch: int, step: int, state: Any, loss_sum: np.ndarray) -> None:
        self.clear()
        tree = {"state": state, "loss_sum": np.asarray(loss_sum), "step": np.asarray(step)}
        ckpt = Checkpointer(self.workdir, max_to_keep=1, subdir=self.SUBDIR)
        try:
            ckpt.save(epoch, tree)
        finally:
            ckpt.close()

    def load(
        self, epoch: int, like: Any, num: int, report: Callable[[str], None]
    ) -> tuple[int, Any, np.ndarray] | None:
        """(step, state, loss_sum) if the stopped epoch is ``epoch``, else None (and any other
        interrupted checkpoint is deleted: it no longer follows the last complete epoch)."""
        if not self.directory.is_dir():
            return None
        ckpt = Checkpointer(self.workdir, max_to_keep=1, subdir=self.SUBDIR)
        try:
            if ckpt.epochs() != [epoch]:
                found = None
            else:
                part_like = {
                    "state": like,
                    "loss_sum": np.zeros(num, np.float32),
                    "step": np.zeros((), np.int64),
                }
                _, found = ckpt.restore_latest(part_like, report, quarantine=False)
        finally:
            ckpt.close()
        if found is None:
            self.clear()
            return None
        return int(found["step"]), found["state"], found["loss_sum"]

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def tree_signature(tree: Any) -> dict[str, str]:
    """Tree path -> ``dtype(shape)`` of every leaf (arrays or shape-dtype structs)."""
    return {
        jax.tree_util.keystr(p): f"{np.dtype(x.dtype).name}{tuple(int(d) for d in x.shape)}"
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
