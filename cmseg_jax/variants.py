"""The evaluation variants: ways of evaluating a run's trained parameters, one record each.

Besides the model as trained (``default``), a run evaluates variants of it whose function differs
at test time only. A :class:`Variant` is all the project knows of one: its name, the suffix of
its files in the workdir, its title in ``summary.md`` and the report, whether a config evaluates
it, and what it changes in the network (keywords of ``train.make_model``). The trainer builds one
final evaluation and one ensemble per variant a config evaluates, the sweep writes their files,
and the workdir and the report read these records; a new variant is one more entry in
:data:`VARIANTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Variant:
    """One evaluation variant (see the module docstring).

    Attributes:
      name: its key in the workdir's format and the report (``default``, ``no_smoothing``).
      suffix: of its ``results{suffix}.csv``, ``final_stats{suffix}.npz`` and ensemble files.
      title: how ``summary.md`` and the report title its tables.
      applies: (config) -> whether a run of ``config`` evaluates it.
      model: keyword arguments of ``train.make_model`` that make its network.
    """

    name: str
    suffix: str
    title: str
    applies: Callable
    model: dict = dataclasses.field(default_factory=dict)


def _without_smoothing(config: ml_collections.ConfigDict) -> bool:
    return bool(config.eval.without_smoothing and config.model.smoothing)


DEFAULT = Variant("default", "", "as trained", lambda config: True)
NO_SMOOTHING = Variant(
    "no_smoothing",
    "_no_smoothing",
    "evaluated without Gaussian smoothing (trained with it)",
    _without_smoothing,
    {"smoothing": False},
)
VARIANTS: dict[str, Variant] = {v.name: v for v in (DEFAULT, NO_SMOOTHING)}


def of(config: ml_collections.ConfigDict) -> list[Variant]:
    """The variants a run of ``config`` evaluates, ``default`` first."""
    return [v for v in VARIANTS.values() if v.applies(config)]
