"""Thin Orbax wrapper: save / restore / resume the seed-stacked train state, export one seed.

A checkpoint holds the whole seed-stacked :class:`~cmseg_jax.train.TrainState` (every leaf has a
leading seed axis, in the order of ``config.json``'s ``seeds``) and is written after each epoch,
under ``WORKDIR/checkpoints/<epoch>``. Orbax writes to a temporary directory and renames it when the
write is complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cmseg_jax.models.convmixerseg import upgrade_legacy_layout


class Checkpointer:
    """Per-epoch checkpoints of a sweep's stacked state.

    Args:
      workdir: the sweep's workdir; checkpoints go to ``workdir/checkpoints``.
      max_to_keep: number of most recent epochs kept on disk.
    """

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 2):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_epoch(self) -> int | None:
        """The last completed epoch with a checkpoint (1-based), or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any) -> None:
        """Saves ``state`` as the checkpoint of ``epoch`` and waits until it is on disk."""
        self._manager.save(epoch, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, epoch: int, like: Any) -> Any:
        """Restores epoch ``epoch`` into the structure, shapes and shardings of ``like``.

        A checkpoint written with the earlier, unrolled model layout (one entry per mixer layer)
        is read as saved and mapped onto today's layout
        (:func:`~cmseg_jax.models.convmixerseg.upgrade_legacy_layout`); one that still does not
        fit is refused with a message naming the checkpoint.
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as err:
            raw = self._manager.restore(epoch, args=ocp.args.StandardRestore())
            upgraded = upgrade_legacy_layout(raw, layer_axis=1)  # axis 0 is the seed
            try:
                return _fill_like(like, upgraded)
            except (KeyError, IndexError, ValueError) as mismatch:
                raise ValueError(
                    f"{self.directory / str(epoch)}: the checkpoint does not fit this model "
                    f"({mismatch}); it was written by another model configuration or layout"
                ) from err

    def close(self) -> None:
        self._manager.close()


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


def select_seed(stacked_state: Any, index: int) -> Any:
    """One seed's state (host numpy) out of a seed-stacked state; ``index`` is its row."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x[index]), stacked_state)
