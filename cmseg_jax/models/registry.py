"""The networks: one record per ``config.model.arch``, saying what each can do.

A :class:`Model` is what the rest of the project knows of a network: how it is built from the
config (the one home of the config → module field mapping), which method heads it has
(:attr:`cmseg_jax.methods.Method.head`), whether it has the fixed Gaussian, whether
:mod:`cmseg_jax.cost` models its FLOPs and bytes, which execution fields the planner may change
for it, and which of its own fields to check. ``train.make_model``, :mod:`cmseg_jax.validate`,
the planner and the PyTorch reference read these records; a new network is its module plus one
entry in :data:`MODELS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from cmseg_jax import config_base, errors
from cmseg_jax.errors import UsageError
from cmseg_jax.models.convmixerseg import ConvMixerSeg
from cmseg_jax.models.fcn_resnet import FCNResNet50


@dataclasses.dataclass(frozen=True)
class Model:
    """One network (see the module docstring).

    Attributes:
      name: the value of ``config.model.arch``.
      build: (config, head, smoothing: bool) -> the flax module; ``head`` is the method's.
      heads: the method heads it has ('seg', 'cam_alpha').
      smoothing: it has the fixed Gaussian on its class maps (``model.smoothing``).
      analytic_cost: :mod:`cmseg_jax.cost` models its FLOPs and bytes per seed-step (else XLA's
        cost analysis of the compiled step is read).
      executions: the execution fields (memory, not the function) the planner may change for it.
      check: (config) -> None; raises UsageError naming a bad field of its own.
    """

    name: str
    build: Callable
    heads: tuple[str, ...]
    smoothing: bool
    analytic_cost: bool
    executions: tuple[str, ...] = ()
    check: Callable = lambda config: None


def convmixerseg_fields(
    config: ml_collections.ConfigDict, head: str = "seg", smoothing: bool | None = None
) -> dict:
    """ConvMixerSeg's fields from ``config.model`` (σ and K of the Gaussian derived from the image
    size where unset, :func:`cmseg_jax.config_base.smoothing`); ``smoothing`` overrides
    ``model.smoothing`` (the Gaussian has no parameters)."""
    m = config.model
    smoothing = m.smoothing if smoothing is None else smoothing
    sigma, size = config_base.smoothing(config)
    return dict(
        num_classes=m.num_classes,
        hidden=m.hidden,
        depth=m.depth,
        patch_size=m.patch_size,
        kernel_size=m.kernel_size,
        transition=m.transition,
        upsample=m.upsample,
        pointwise_residual=m.pointwise_residual,
        smoothing_sigma=sigma if smoothing else 0.0,
        smoothing_size=size,
        head=head,
        bn_momentum=m.bn_momentum,
        depthwise_impl=m.depthwise_impl,
        dtype=jnp.dtype(m.dtype),
        remat=bool(m.remat),
        remat_group=int(m.get("remat_group", 0)),  # absent from configs written before it
        decoder_chunk=int(m.decoder_chunk),
    )


def _fcn_resnet50(config: ml_collections.ConfigDict, head: str, smoothing: bool) -> nn.Module:
    del head, smoothing  # one head; no Gaussian
    m = config.model
    return FCNResNet50(
        num_classes=m.num_classes,
        width=m.fcn_width,
        bn_momentum=m.bn_momentum,
        dtype=jnp.dtype(m.dtype),
        remat=bool(m.remat),
    )


def _check_fcn(config: ml_collections.ConfigDict) -> None:
    width = config.model.get("fcn_width")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UsageError(f"config.model.fcn_width={width!r}: must be an integer >= 1")


CONVMIXERSEG = Model(
    name="convmixerseg",
    build=lambda config, head, smoothing: ConvMixerSeg(
        **convmixerseg_fields(config, head, smoothing)
    ),
    heads=("seg", "cam_alpha"),
    smoothing=True,
    analytic_cost=True,
    executions=("model.remat", "model.remat_group", "model.decoder_chunk"),
)
FCN_RESNET50 = Model(
    name="fcn_resnet50",
    build=_fcn_resnet50,
    heads=("seg",),
    smoothing=False,
    analytic_cost=False,
    check=_check_fcn,
)
MODELS: dict[str, Model] = {m.name: m for m in (CONVMIXERSEG, FCN_RESNET50)}


def get(name: str) -> Model:
    """The network called ``name``; a one-line error naming the field for an unknown one."""
    return errors.lookup(MODELS, name, "model.arch")


def of(config: ml_collections.ConfigDict) -> Model:
    """The network of ``config`` (ConvMixerSeg for a config.json written before ``model.arch``)."""
    return get(config.model.get("arch", "convmixerseg"))
