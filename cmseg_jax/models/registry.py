"""The networks: one record per ``config.model.arch``, saying what each can do.

A :class:`Model` is what the rest of the project knows of a network: its own config sub-dict
(``config.model.<arch>``: defaults, sizes of the ``cpu`` / ``tiny`` variants, the checks of its
fields and the flat names configs used before the sub-dict existed), how it is built from the
config (the one home of the config → module field mapping), which method heads it has
(:attr:`cmseg_jax.methods.Method.head`), whether it has the fixed Gaussian, whether
:mod:`cmseg_jax.cost` models its FLOPs and bytes and which execution fields the planner may
change for it. :mod:`cmseg_jax.config_base`, ``train.make_model``, :mod:`cmseg_jax.validate`,
the workdir, the planner and the PyTorch reference read these records; a new network is its
module plus one entry in :data:`MODELS`.

Fields every network shares stay in ``config.model``: ``arch``, ``num_classes``, ``dtype``,
``bn_momentum``, ``remat`` and the fixed Gaussian on the class maps (``smoothing``,
``smoothing_sigma``, ``smoothing_size``: taken by a network whose record says ``smoothing``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from cmseg_jax import errors
from cmseg_jax.errors import UsageError
from cmseg_jax.models.convmixerseg import ConvMixerSeg
from cmseg_jax.models.fcn_resnet import FCNResNet50
from cmseg_jax.models.smoothing import scaled_smoothing


@dataclasses.dataclass(frozen=True)
class Model:
    """One network (see the module docstring).

    Attributes:
      name: the value of ``config.model.arch``, and the key of its sub-dict ``config.model.<name>``.
      build: (config, head, smoothing: bool) -> the flax module; ``head`` is the method's.
      heads: the method heads it has ('seg', 'cam_alpha').
      smoothing: it has the fixed Gaussian on its class maps (``model.smoothing``).
      analytic_cost: :mod:`cmseg_jax.cost` models its FLOPs and bytes per seed-step (else XLA's
        cost analysis of the compiled step is read).
      defaults: its sub-dict at the thesis size (field -> value).
      sizes: variant name -> the fields of its sub-dict that variant sets (``cpu``, ``tiny``).
      ints: field of its sub-dict -> the least value of that integer field.
      choices: field of its sub-dict -> the values it may take.
      executions: the dotted execution fields (memory, not the function) the planner may change.
      check: (config, head) -> None; the checks across fields (UsageError naming the field).
      savers: dotted fields -> values that need less device memory (the same function), which a
        plan that does not fit suggests.
      legacy: flat ``config.model`` names of configs written before the sub-dict -> its field.
    """

    name: str
    build: Callable
    heads: tuple[str, ...]
    smoothing: bool
    analytic_cost: bool
    defaults: dict
    sizes: dict = dataclasses.field(default_factory=dict)
    ints: dict = dataclasses.field(default_factory=dict)
    choices: dict = dataclasses.field(default_factory=dict)
    executions: tuple[str, ...] = ()
    check: Callable = lambda config, head: None
    savers: dict = dataclasses.field(default_factory=dict)
    legacy: dict = dataclasses.field(default_factory=dict)

    def field(self, name: str) -> str:
        """The dotted config field of ``name`` in its sub-dict: ``model.<arch>.<name>``."""
        return f"model.{self.name}.{name}"


def smoothing(config: ml_collections.ConfigDict) -> tuple[float, int]:
    """(σ, K) of the Gaussian: the config's values, or derived from ``data.image_size``."""
    sigma, size = scaled_smoothing(config.data.image_size)
    m = config.model
    return (
        float(sigma if m.smoothing_sigma is None else m.smoothing_sigma),
        int(size if m.smoothing_size is None else m.smoothing_size),
    )


def own(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The sub-dict of the config's network, ``config.model.<arch>``."""
    return config.model[of(config).name]


def convmixerseg_fields(
    config: ml_collections.ConfigDict, head: str = "seg", smoothing_on: bool | None = None
) -> dict:
    """ConvMixerSeg's keyword arguments from ``config.model`` and ``config.model.convmixerseg``
    (σ and K of the Gaussian derived from the image size where unset, :func:`smoothing`);
    ``smoothing_on`` overrides ``model.smoothing`` (the Gaussian has no parameters)."""
    m, c = config.model, config.model.convmixerseg
    smoothing_on = m.smoothing if smoothing_on is None else smoothing_on
    sigma, size = smoothing(config)
    return dict(
        num_classes=m.num_classes,
        hidden=c.hidden,
        depth=c.depth,
        patch_size=c.patch_size,
        kernel_size=c.kernel_size,
        transition=c.transition,
        upsample=c.upsample,
        pointwise_residual=c.pointwise_residual,
        smoothing_sigma=sigma if smoothing_on else 0.0,
        smoothing_size=size,
        head=head,
        bn_momentum=m.bn_momentum,
        depthwise_impl=c.depthwise_impl,
        dtype=jnp.dtype(m.dtype),
        remat=bool(m.remat),
        remat_group=int(c.remat_group),
        decoder_chunk=int(c.decoder_chunk),
    )


def _check_convmixerseg(config: ml_collections.ConfigDict, head: str) -> None:
    c = config.model.convmixerseg
    if config.model.remat and c.remat_group > 1 and c.depth % c.remat_group:
        raise UsageError(
            f"config.model.convmixerseg.remat_group={c.remat_group!r}: must divide "
            f"model.convmixerseg.depth ({c.depth})"
        )
    if head == "cam_alpha" and c.upsample != "transposed":
        raise UsageError(
            f"config.model.convmixerseg.upsample={c.upsample!r}: cam_alpha needs 'transposed'"
        )


CONVMIXERSEG_DEFAULTS = {
    "hidden": 256,
    "depth": 20,
    "patch_size": 7,
    "kernel_size": 9,
    "transition": 100,
    # transposed | bilinear: the decoder (the thesis' −GS + bilinear ablation takes bilinear).
    "upsample": "transposed",
    "pointwise_residual": True,
    # auto | conv | shift: how the depthwise conv is computed (models/depthwise.py).
    "depthwise_impl": "auto",
    # With model.remat: layers per outer remat group (nested remat; must divide depth). The
    # backward pass stores depth / G + G layer inputs instead of depth (9 instead of 20 at G = 4),
    # for one more forward pass of the mixer layers. 0: every layer's input stored.
    "remat_group": 4,
    # Images per pass of the fused full-resolution decoder block (models/decoder.py): its C_t maps
    # exist for this many images at a time; 0 = plain autodiff of the block.
    "decoder_chunk": 2,
}

CONVMIXERSEG = Model(
    name="convmixerseg",
    build=lambda config, head, smoothing_on: ConvMixerSeg(
        **convmixerseg_fields(config, head, smoothing_on)
    ),
    heads=("seg", "cam_alpha"),
    smoothing=True,
    analytic_cost=True,
    defaults=CONVMIXERSEG_DEFAULTS,
    sizes={
        # the whole batch per decoder pass: fastest on a CPU
        "cpu": {"hidden": 64, "depth": 4, "transition": 16, "decoder_chunk": 16},
        "tiny": {"hidden": 8, "depth": 1, "transition": 4, "remat_group": 0},
    },
    ints={
        "hidden": 1,
        "depth": 1,
        "patch_size": 1,
        "kernel_size": 1,
        "transition": 1,
        "decoder_chunk": 0,
        "remat_group": 0,
    },
    choices={"upsample": ("transposed", "bilinear"), "depthwise_impl": ("auto", "conv", "shift")},
    executions=(
        "model.remat",
        "model.convmixerseg.remat_group",
        "model.convmixerseg.decoder_chunk",
    ),
    check=_check_convmixerseg,
    savers={"model.convmixerseg.decoder_chunk": 1, "model.convmixerseg.remat_group": 4},
    legacy={name: name for name in CONVMIXERSEG_DEFAULTS},
)


def _fcn_resnet50(config: ml_collections.ConfigDict, head: str, smoothing_on: bool) -> nn.Module:
    del head, smoothing_on  # one head; no Gaussian
    m = config.model
    return FCNResNet50(
        num_classes=m.num_classes,
        width=m.fcn_resnet50.width,
        bn_momentum=m.bn_momentum,
        dtype=jnp.dtype(m.dtype),
        remat=bool(m.remat),
    )


FCN_RESNET50 = Model(
    name="fcn_resnet50",
    build=_fcn_resnet50,
    heads=("seg",),
    smoothing=False,
    analytic_cost=False,
    # The stem width (64 = torchvision's ResNet-50; its stages have 1, 2, 4, 8 × it).
    defaults={"width": 64},
    sizes={"cpu": {"width": 16}, "tiny": {"width": 8}},
    ints={"width": 1},
    legacy={"fcn_width": "width"},
)
MODELS: dict[str, Model] = {m.name: m for m in (CONVMIXERSEG, FCN_RESNET50)}


def get(name: str) -> Model:
    """The network called ``name``; a one-line error naming the field for an unknown one."""
    return errors.lookup(MODELS, name, "model.arch")


def of(config: ml_collections.ConfigDict) -> Model:
    """The network of ``config`` (ConvMixerSeg for a config.json written before ``model.arch``)."""
    return get(config.model.get("arch", "convmixerseg"))


def legacy_fields() -> dict[str, str]:
    """Dotted flat field of configs written before the sub-dicts -> its field now
    (``model.hidden`` -> ``model.convmixerseg.hidden``)."""
    return {
        f"model.{old}": model.field(new)
        for model in MODELS.values()
        for old, new in model.legacy.items()
    }


def upgrade(record: dict) -> dict:
    """A ``config.json`` record (a plain dict) in today's form: the flat ``config.model`` fields of
    a config written before the sub-dicts moved into its network's sub-dict, and a grid's
    ``sweep.grid`` spec renamed likewise. Today's records come back equal."""
    record = copy.deepcopy(record)
    model = record.get("model")
    if isinstance(model, dict):
        arch = get(model.get("arch", "convmixerseg"))
        own_dict = model.setdefault(arch.name, {})
        for old, new in arch.legacy.items():
            if old in model:
                own_dict.setdefault(new, model.pop(old))
        for other in MODELS.values():  # another network's flat fields of the old flat config
            for old in other.legacy:
                if other is not arch and old not in arch.legacy:
                    model.pop(old, None)
    sweep = record.get("sweep")
    spec = sweep.get("grid") if isinstance(sweep, dict) else None
    renames = legacy_fields()
    if isinstance(spec, str) and any(
        item.partition("=")[0].strip() in renames for item in spec.split(";")
    ):
        items = []
        for item in spec.split(";"):
            field, eq, values = item.partition("=")
            name = field.strip()
            items.append(f"{renames.get(name, name)}{eq}{values}".strip())
        sweep["grid"] = "; ".join(items)
    return record
