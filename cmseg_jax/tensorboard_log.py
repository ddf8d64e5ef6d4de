"""Live training curves for TensorBoard, written next to ``metrics.jsonl`` during a sweep.

``WORKDIR/tensorboard/`` holds one TensorBoard *run* per seed and one per across-seed statistic,
so that a chart overlays the seeds and the band they span::

    tensorboard/seed_03/   each seed's own curves
    tensorboard/mean/      mean over the seeds that did not diverge
    tensorboard/std/       their standard deviation (ddof = 1; absent with one seed)
    tensorboard/min/       smallest and largest value: the band around the mean
    tensorboard/max/

Tags (step = 1-based epoch): ``loss/train`` (the epoch's mean training loss),
``eval_loss/<split>`` (the loss evaluated on the split after the epoch) and ``<metric>/<split>``
for every metric of ``results.csv`` (``mcc/val``, ``iou/test``, ``cls_mcc/val`` ...). The values
are those of the epoch's ``metrics.jsonl`` rows (stored by TensorBoard as float32).
Diverged seeds keep their own run and are left out of the statistics.

Resume: a run resumed after epoch ``k`` opens new event files that start with a purge at step
``k + 1`` (``SummaryWriter(purge_step=k + 1)``, a ``SessionLog.START`` event); TensorBoard then
hides whatever an earlier, killed run had logged from epoch ``k + 1`` on, as the resume also drops
those rows from ``metrics.jsonl``. Readers that ignore the purge (plain protobuf parsers) can see
those steps twice. The writer is ``tensorboardX``: no TensorFlow needed.
"""

from __future__ import annotations

import collections
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np

from cmseg_jax import errors
from cmseg_jax import workdir as workdir_io
from cmseg_jax.data.dataset import SPLITS
from cmseg_jax.results import RESULT_METRICS

SUBDIR = workdir_io.TENSORBOARD_DIR
_QUEUE = 1 << 20


def tags(split: str) -> list[tuple[str, str]]:
    """(tag, metrics.jsonl field) of every scalar logged for ``split``'s rows."""
    out = [(f"eval_loss/{split}", "loss")] + [(f"{m}/{split}", m) for m in RESULT_METRICS]
    if split == SPLITS[0]:
        out.append(("loss/train", "train_loss"))
    return out


def epoch_scalars(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """run -> tag -> value of one epoch's ``metrics.jsonl`` rows (one per seed and split)."""
    width = max(2, len(str(max(int(r["seed"]) for r in rows))))
    out: dict[str, dict[str, float]] = collections.defaultdict(dict)
    pooled: dict[str, list[float]] = collections.defaultdict(list)
    for row in rows:
        for tag, field in tags(row["split"]):
            value = float(row[field])
            out[f"seed_{int(row['seed']):0{width}d}"][tag] = value
            if not row["diverged"] and np.isfinite(value):
                pooled[tag].append(value)
    for tag, values in pooled.items():
        values = np.asarray(values, np.float64)
        out["mean"][tag] = float(values.mean())
        out["min"][tag] = float(values.min())
        out["max"][tag] = float(values.max())
        if len(values) > 1:
            out["std"][tag] = float(values.std(ddof=1))
    return dict(out)


class EpochBoard:
    """Event-file writers of one sweep's workdir, one per run, opened on first use.

    Args:
      workdir: the sweep's workdir (files go to ``workdir/tensorboard/<run>/``).
      first_epoch: the first epoch this process logs; earlier events of the same runs are kept,
        later ones (from a run killed before its checkpoint) are purged.
    """

    def __init__(self, workdir: str | pathlib.Path, first_epoch: int = 1):
        self.directory = pathlib.Path(workdir) / SUBDIR
        self.first_epoch = int(first_epoch)
        self._writers: dict = {}

    def _writer(self, run: str):
        if run not in self._writers:
            with warnings.catch_warnings():  # tensorboardX warns about optional crc32c / soundfile
                warnings.simplefilter("ignore")
                from tensorboardX import SummaryWriter

            # A queue that never fills: a put on a full one would wait for ever on an event
            # thread that died (a full disk), so the thread is checked instead (_check_thread).
            self._writers[run] = SummaryWriter(
                str(self.directory / run),
                purge_step=self.first_epoch,
                flush_secs=30,
                max_queue=_QUEUE,
            )
        return self._writers[run]

    def _check_thread(self, run: str) -> None:
        """Raises if the event-writing thread of ``run`` died (its write failed): the events
        it had are lost, and tensorboardX's own close at exit would wait on it for ever."""
        event_writer = getattr(self._writers[run].file_writer, "event_writer", None)
        thread = getattr(event_writer, "_worker", None)
        if thread is None or thread.is_alive():
            return
        event_writer._closed = True  # nothing left to flush or stop
        del self._writers[run]
        cause = errors.thread_failure()
        reason = errors.os_reason(cause) if cause is not None else "its writer thread stopped"
        raise errors.IOFailure(
            f"{self.directory / run}: could not write the TensorBoard events ({reason})"
        )

    def write(self, rows: Sequence[dict]) -> None:
        """Logs one epoch's ``metrics.jsonl`` rows and flushes them to disk."""
        if not rows:
            return
        epoch = int(rows[0]["epoch"])
        for run, scalars in epoch_scalars(rows).items():
            try:
                writer = self._writer(run)
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, global_step=epoch)
                writer.flush()
                self._check_thread(run)
            except OSError as e:  # tensorboardX's errors name no file (a full disk)
                raise errors.IOFailure(
                    f"{self.directory / run}: could not write the TensorBoard events "
                    f"({errors.os_reason(e)})"
                ) from e

    def close(self) -> None:
        for run in list(self._writers):
            self._check_thread(run)
            self._writers.pop(run).close()


def read_scalars(logdir: str | pathlib.Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run -> tag -> [(step, value)] of the event files under ``logdir`` (a workdir's
    ``tensorboard/``), as TensorBoard shows them (purged steps left out).

    Needs the ``tensorboard`` package (``pip install tensorboard``; the ``test`` extra has it).
    """
    from tensorboard.backend.event_processing import event_accumulator

    logdir = pathlib.Path(logdir)
    out = {}
    for run in sorted(p for p in logdir.iterdir() if p.is_dir()):
        acc = event_accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        out[run.name] = {
            tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
        }
    return out
