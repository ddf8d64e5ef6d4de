"""ConvMixerSeg: a ConvMixer backbone with symmetric patch decoding, for semantic segmentation.

Architecture (thesis configuration in brackets)::

  x (B, S, S, C_in)  --pad to a multiple of p-->  (B, P, P, C_in)          [S = 512, P = 518]
  patch embed  conv k = stride = p  -> GELU -> BN          (B, P/p, P/p, h)    [p = 7, h = 256]
  depth × [ depthwise conv k 'same' -> GELU -> BN, + residual                [k = 9, depth = 20]
            pointwise 1×1 conv      -> GELU -> BN, + residual (switchable) ]
  decoder  transposed conv k = stride = p -> GELU -> BN -> crop  (B, S, S, C_t)  [C_t = 100]
           (ablation: 1×1 conv at patch resolution + bilinear upsampling, no transposed conv)
  1×1 conv to classes (no activation)                      (B, S, S, K)        [K = 2]
  fixed Gaussian smoothing (switchable)                    (B, S, S, K)        [σ = 7, 50 taps]

Input size vs patch size. 512 is not a multiple of 7, so the input is padded symmetrically with the
value -1 (air after intensity mapping) to 518 = 74·7 and the decoder output is cropped back to 512;
every prediction covers the full label, nothing is resized.

Why the layers are hand-written instead of ``nn.Conv``: the sweep ``vmap``s the model over seeds,
and vmapping a convolution over its *weights* lowers to a grouped convolution, which XLA runs
slowly. The non-overlapping patch conv and transposed conv are exactly a reshape + einsum, and the
pointwise conv is an einsum, so vmapped seeds become batched matmuls. Only the depthwise conv stays
a convolution (vmapped it becomes a wider depthwise conv, seeds × h groups) or, on CPU, a fused
shift-and-add (``cmseg_jax.models.depthwise``).

Initialisation follows PyTorch's defaults (weights and biases ~ U(±1/sqrt(fan_in)), with PyTorch's
fan-in for transposed convs), so the spread over seeds is comparable with the thesis' PyTorch runs.
BatchNorm uses PyTorch's momentum 0.1 (flax ``momentum=0.9``) and eps 1e-5.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmseg_jax.models import heads
from cmseg_jax.models.depthwise import depthwise_conv
from cmseg_jax.models.smoothing import gaussian_smooth

Array = jnp.ndarray


def torch_uniform(fan_in: int):
    """PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def gelu(x: Array) -> Array:
    # PyTorch's nn.GELU default is the exact (erf) form.
    return jax.nn.gelu(x, approximate=False)


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = p as reshape + einsum: (B, P, P, C) -> (B, P/p, P/p, F)."""

    features: int
    patch_size: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, height, width, c = x.shape
        p = self.patch_size
        fan_in = c * p * p
        kernel = self.param("kernel", torch_uniform(fan_in), (p, p, c, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        x = x.reshape(b, height // p, p, width // p, p, c)
        return jnp.einsum("bipjqc,pqcd->bijd", x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


class PatchDecode(nn.Module):
    """Transposed conv, kernel = stride = p, as einsum + reshape: (B, n, n, C) -> (B, np, np, F)."""

    features: int
    patch_size: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, n_h, n_w, c = x.shape
        p = self.patch_size
        # PyTorch computes a ConvTranspose2d's fan-in from weight.shape[1] * k * k = out * p * p.
        fan_in = self.features * p * p
        kernel = self.param("kernel", torch_uniform(fan_in), (c, p, p, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        y = jnp.einsum("bijc,cpqd->bipjqd", x, kernel.astype(x.dtype))
        return y.reshape(b, n_h * p, n_w * p, self.features) + bias.astype(x.dtype)


class Pointwise(nn.Module):
    """1×1 conv as an einsum: (..., C) -> (..., features)."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(c), (c, self.features))
        bias = self.param("bias", torch_uniform(c), (self.features,))
        return jnp.einsum("...c,cd->...d", x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


class Depthwise(nn.Module):
    """Depthwise k×k conv, 'same' padding: (B, H, W, C) -> (B, H, W, C)."""

    kernel_size: int
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        k = self.kernel_size
        fan_in = k * k  # PyTorch: in_channels / groups * k * k
        kernel = self.param("kernel", torch_uniform(fan_in), (k, k, c))
        bias = self.param("bias", torch_uniform(fan_in), (c,))
        return depthwise_conv(x, kernel.astype(x.dtype), self.impl) + bias.astype(x.dtype)


class ConvMixerSeg(nn.Module):
    """ConvMixerSeg segmentation network with a CAM_β (default) or CAM_α head.

    Attributes:
      num_classes: K output class maps (2: background, liver).
      hidden: h, channels of the mixer layers.
      depth: number of mixer layers.
      patch_size: p, kernel and stride of patch embedding and decoding.
      kernel_size: k of the depthwise convs.
      transition: C_t, channels after the transposed conv.
      upsample: 'transposed' (thesis) or 'bilinear' (ablation; no decoder block, no C_t).
      pointwise_residual: residual around the pointwise block (the thesis' addition).
      smoothing_sigma: σ of the fixed Gaussian on the class maps; <= 0 switches it off.
      smoothing_size: Gaussian kernel size K.
      head: 'seg' (class maps are the 1×1 conv output; CAM_β pools them) or 'cam_alpha' (GMP over
        the C_t hidden maps -> dense; the class maps are the dense-weighted hidden maps).
      bn_momentum: flax BatchNorm momentum (0.9 == PyTorch 0.1).
      depthwise_impl: 'auto' | 'conv' | 'shift' (see ``cmseg_jax.models.depthwise``).
      dtype: computation dtype.
    """

    num_classes: int = 2
    hidden: int = 256
    depth: int = 20
    patch_size: int = 7
    kernel_size: int = 9
    transition: int = 100
    upsample: str = "transposed"
    pointwise_residual: bool = True
    smoothing_sigma: float = 7.0
    smoothing_size: int = 50
    head: str = "seg"
    bn_momentum: float = 0.9
    depthwise_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> dict[str, Array]:
        """Forward pass.

        Args:
          x: (B, S, S) or (B, S, S, C_in) images with intensities in [-1, 1].
          train: BatchNorm uses batch statistics (and updates running ones) when True.

        Returns:
          dict with ``maps`` (B, S, S, K) class maps (logits for 'seg', CAMs for 'cam_alpha') and
          ``pooled`` (B, K) image-level class scores (GMP over ``maps`` for 'seg', the dense layer's
          output for 'cam_alpha').
        """
        if self.upsample not in ("transposed", "bilinear"):
            raise ValueError(
                f"model.upsample must be 'transposed' or 'bilinear', got {self.upsample!r}"
            )
        if self.head not in ("seg", "cam_alpha"):
            raise ValueError(f"model.head must be 'seg' or 'cam_alpha', got {self.head!r}")
        if self.head == "cam_alpha" and self.upsample != "transposed":
            raise ValueError("the CAM_alpha head needs the C_t maps of the transposed-conv decoder")
        if x.ndim == 3:
            x = x[..., None]
        x = x.astype(self.dtype)
        size_h, size_w = x.shape[1:3]
        p = self.patch_size
        pad_h, pad_w = -size_h % p, -size_w % p
        # Pad with -1 (air) so the border patches see plausible CT rather than a step to zero.
        x = jnp.pad(
            x,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
            constant_values=-1.0,
        )

        def norm(name):
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=1e-5,
                dtype=self.dtype,
                name=name,
            )

        y = norm("embed_bn")(gelu(PatchEmbed(self.hidden, p, name="embed")(x)))
        for i in range(self.depth):
            y = y + norm(f"mixer{i}_dw_bn")(
                gelu(Depthwise(self.kernel_size, self.depthwise_impl, name=f"mixer{i}_dw")(y))
            )
            z = norm(f"mixer{i}_pw_bn")(gelu(Pointwise(self.hidden, name=f"mixer{i}_pw")(y)))
            y = y + z if self.pointwise_residual else z

        def crop(t):
            return t[:, pad_h // 2 : pad_h // 2 + size_h, pad_w // 2 : pad_w // 2 + size_w]

        if self.upsample == "bilinear":
            # 1×1 conv and bilinear upsampling are both linear with weights summing to one, so they
            # commute (bias included): classify at patch resolution, then upsample the K maps.
            logits = Pointwise(self.num_classes, name="classifier")(y)
            b, n_h, n_w, k = logits.shape
            maps = crop(jax.image.resize(logits, (b, n_h * p, n_w * p, k), "bilinear"))
            return heads.seg_outputs(maps)

        features = crop(PatchDecode(self.transition, p, name="decoder")(y))
        features = norm("decoder_bn")(gelu(features))
        classifier = Pointwise(self.num_classes, name="classifier")
        if self.head == "cam_alpha":
            pooled = classifier(jnp.max(features, axis=(1, 2)))
            maps = classifier(features)
        else:
            maps, pooled = classifier(features), None
        if self.smoothing_sigma > 0:
            maps = gaussian_smooth(maps, self.smoothing_sigma, self.smoothing_size)
        return heads.seg_outputs(maps) if pooled is None else {"maps": maps, "pooled": pooled}


def count_params(params) -> int:
    """Number of trainable scalars in a params pytree (BatchNorm scale and bias included)."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
