"""FCN-ResNet-50, the thesis' fully supervised baseline: torchvision's ``fcn_resnet50`` in Flax.

Architecture (torchvision's ``fcn_resnet50(num_classes=K, aux_loss=False)``; channel counts at the
thesis width w = 64)::

  x (B, S, S)  -> repeated to 3 channels                     (B, S, S, 3)
  stem   7×7/2 conv w (no bias) -> BN -> ReLU -> 3×3/2 max pool (B, S/4, S/4, w)
  layer1 3 bottlenecks, planes w                             (B, S/4, S/4, 4w)
  layer2 4 bottlenecks, planes 2w, stride 2                  (B, S/8, S/8, 8w)
  layer3 6 bottlenecks, planes 4w, dilation 2 (no stride)    (B, S/8, S/8, 16w)
  layer4 3 bottlenecks, planes 8w, dilation 4 (no stride)    (B, S/8, S/8, 32w)
  head   3×3 conv 32w -> 8w (no bias) -> BN -> ReLU -> dropout 0.1 -> 1×1 conv (bias) to K
  bilinear upsampling to S × S (``F.interpolate(..., align_corners=False)``)  (B, S, S, K)

Bottleneck (ResNet v1.5, torchvision's): 1×1 conv -> BN -> ReLU -> 3×3 conv (the stride and the
dilation sit here) -> BN -> ReLU -> 1×1 conv to 4·planes -> BN, + identity (a 1×1 conv with the
stride -> BN where the shape changes) -> ReLU. ``replace_stride_with_dilation=[False, True, True]``
gives output stride 8; as in torchvision the first block of a dilated stage keeps the previous
stage's dilation (layer3: 1, 2, 2, ...; layer4: 2, 4, 4).

Input channels. torchvision's ResNet stem takes 3 channels; the project's CT slices have one, so
the image is repeated to 3 channels, exactly what feeding ``x.expand(-1, 3, -1, -1)`` to the
unmodified torchvision model does (the thesis compares with torchvision's model as it is). With
K = 2 and no auxiliary head that is **32,947,266** parameters, torchvision's count
(``in_channels=1``, a stem with one input channel, gives 32,940,994).

Training from scratch: the thesis does not say whether the baseline started from ImageNet or COCO
weights, and the project downloads nothing, so every run initialises as torchvision does without
weights: backbone convs ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (normal, std
sqrt(2 / (out · kh · kw))), BatchNorm weight 1 and bias 0, and the FCN head's convs (created after
the backbone's init loop) PyTorch's default conv init, U(±1/sqrt(fan_in)) for weight and bias.
BatchNorm is PyTorch's (``cmseg_jax.models.batchnorm``: momentum 0.1 == flax 0.9, eps 1e-5, the
unbiased batch variance in the running variance). Dropout needs a
``'dropout'`` rng when ``train=True``.

Parameter names map one to one onto torchvision's ``state_dict`` (:func:`torchvision_name`), so
torchvision weights can be copied in (``benchmarks/fcn_torchvision_check.py`` does, and compares
the outputs).

Under ``vmap`` over seeds every convolution becomes a grouped convolution (one group per seed);
see ``benchmarks/README.md`` for what that costs against ``lax.map`` over seeds.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmseg_jax.models import heads
from cmseg_jax.models.common import batch_norm, torch_uniform

Array = jnp.ndarray

BLOCKS = (3, 4, 6, 3)
EXPANSION = 4
# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): a plain (not truncated)
# normal with variance 2 / (out_channels · kh · kw).
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")



def _conv(features, kernel, dtype, name, stride=1, dilation=1, init=KAIMING_FAN_OUT, bias=False):
    """A PyTorch ``Conv2d`` with ``padding = dilation · (kernel - 1) / 2`` (zeros), NHWC."""
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=bias,
        dtype=dtype,
        kernel_init=init,
        name=name,
    )


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5): (B, H, W, C) -> (B, H/stride, W/stride, 4·planes)."""

    planes: int
    stride: int
    dilation: int
    downsample: bool
    bn_momentum: float
    dtype: Any
    train: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        norm = functools.partial(batch_norm, self.train, self.bn_momentum, self.dtype)
        conv = functools.partial(_conv, dtype=self.dtype)
        out_features = self.planes * EXPANSION
        y = nn.relu(norm("bn1")(conv(self.planes, 1, name="conv1")(x)))
        y = conv(self.planes, 3, name="conv2", stride=self.stride, dilation=self.dilation)(y)
        y = nn.relu(norm("bn2")(y))
        y = norm("bn3")(conv(out_features, 1, name="conv3")(y))
        identity = x
        if self.downsample:
            identity = conv(out_features, 1, name="downsample_conv", stride=self.stride)(x)
            identity = norm("downsample_bn")(identity)
        return nn.relu(y + identity)


class FCNHead(nn.Module):
    """torchvision's ``FCNHead``: 3×3 conv C -> C/4 (no bias), BN, ReLU, dropout, 1×1 conv."""

    num_classes: int
    bn_momentum: float
    dtype: Any
    train: bool
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        inter = c // 4
        y = _conv(inter, 3, self.dtype, "conv", init=torch_uniform(c * 9))(x)
        y = nn.relu(batch_norm(self.train, self.bn_momentum, self.dtype, "bn")(y))
        y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
        init = torch_uniform(inter)
        out = nn.Conv(
            self.num_classes, (1, 1), dtype=self.dtype, kernel_init=init, bias_init=init, name="out"
        )
        return out(y)


class FCNResNet50(nn.Module):
    """FCN with a dilated ResNet-50 backbone (see the module docstring).

    Attributes:
      num_classes: K output class maps (2: background, liver).
      width: the stem's channels; stage ``i`` has ``width · 2^i`` planes and ``4 · width · 2^i``
        output channels (64 = torchvision's ResNet-50; smaller for the quick config variants).
      in_channels: 3 = the image repeated into torchvision's RGB stem (default, the model as it
        is); 1 = a single-channel stem.
      aux_head: torchvision's auxiliary FCN head on layer3 (``aux_loss=True``); its upsampled maps
        are returned as ``aux``. Off by default, as in the thesis' comparison.
      bn_momentum: flax BatchNorm momentum (0.9 == PyTorch 0.1).
      dtype: computation dtype of activations and convolutions (float32 or bfloat16).
        Parameters, BatchNorm statistics and the returned maps and scores are float32.
      remat: recompute each bottleneck block's activations in the backward pass.
    """

    num_classes: int = 2
    width: int = 64
    in_channels: int = 3
    aux_head: bool = False
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    remat: bool = False
    replace_stride_with_dilation: tuple[bool, bool, bool] = (False, True, True)

    @nn.compact
    def __call__(self, x: Array, train: bool) -> dict[str, Array]:
        """Forward pass.

        Args:
          x: (B, S, S) images with intensities in [-1, 1] (or (B, S, S, 1)).
          train: BatchNorm uses batch statistics (and updates running ones) and dropout is on
            when True (then a 'dropout' rng is needed).

        Returns:
          dict with ``maps`` (B, S, S, K) float32 pixel logits and ``pooled`` (B, K) their GMP
          (as ConvMixerSeg's 'seg' head), and ``aux`` (B, S, S, K) with ``aux_head``.
        """
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if x.ndim == 3:
            x = x[..., None]
        b, size_h, size_w, _ = x.shape
        x = jnp.broadcast_to(x, (b, size_h, size_w, self.in_channels)).astype(self.dtype)
        norm = functools.partial(batch_norm, train, self.bn_momentum, self.dtype)
        y = nn.relu(norm("bn1")(_conv(self.width, 7, self.dtype, "conv1", stride=2)(x)))
        y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        block = nn.remat(Bottleneck) if self.remat else Bottleneck
        in_features, dilation = self.width, 1
        features = {}
        for stage, blocks in enumerate(BLOCKS):
            planes = self.width * 2**stage
            stride, previous = (1 if stage == 0 else 2), dilation
            if stage > 0 and self.replace_stride_with_dilation[stage - 1]:
                dilation, stride = dilation * stride, 1
            for i in range(blocks):
                y = block(
                    planes,
                    stride if i == 0 else 1,
                    previous if i == 0 else dilation,
                    i == 0 and (stride != 1 or in_features != planes * EXPANSION),
                    self.bn_momentum,
                    self.dtype,
                    train,
                    name=f"layer{stage + 1}_{i}",
                )(y)
            in_features = planes * EXPANSION
            features[stage + 1] = y

        def head(name, z):
            logits = FCNHead(self.num_classes, self.bn_momentum, self.dtype, train, name=name)(z)
            logits = logits.astype(jnp.float32)
            # Half-pixel centres with the source index clamped at 0: F.interpolate's bilinear
            # with align_corners=False (tests/test_fcn.py checks it for upsampling).
            return jax.image.resize(logits, (b, size_h, size_w, self.num_classes), "bilinear")

        outputs = heads.seg_outputs(head("classifier", features[4]))
        if self.aux_head:
            outputs["aux"] = head("aux_classifier", features[3])
        return outputs


_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_MODULES = {
    "downsample_conv": "downsample.0",
    "downsample_bn": "downsample.1",
    "conv": "0",
    "bn": "1",
    "out": "4",
}


def torchvision_name(collection: str, path: tuple[str, ...]) -> str:
    """The ``state_dict`` key of torchvision's ``fcn_resnet50`` for one flax variable.

    Args:
      collection: 'params' or 'batch_stats'.
      path: the variable's path in that collection, e.g. ``('layer3_0', 'downsample_bn',
        'scale')``.

    Returns:
      e.g. ``'backbone.layer3.0.downsample.1.weight'``. Flax conv kernels are (kh, kw, I, O),
      torchvision's weights (O, I, kh, kw).
    """
    *modules, leaf = path
    parts = []
    for name in modules:
        if name.startswith("layer"):
            parts.extend(name.split("_"))
        else:
            parts.append(_MODULES.get(name, name))
    if modules[0] not in ("classifier", "aux_classifier"):
        parts.insert(0, "backbone")
    return ".".join(parts + [_LEAVES[(collection, leaf)]])
