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
BatchNorm is PyTorch's (``cmseg_jax.models.batchnorm``): momentum 0.1 (flax ``momentum=0.9``),
eps 1e-5, and the unbiased batch variance in the running variance.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cmseg_jax.models import activations, decoder, heads
from cmseg_jax.models.batchnorm import unbiased
from cmseg_jax.models.common import batch_norm, torch_uniform
from cmseg_jax.models.depthwise import depthwise_conv
from cmseg_jax.models.smoothing import gaussian_smooth

Array = jnp.ndarray


def gelu(x: Array) -> Array:
    # PyTorch's nn.GELU default is the exact (erf) form: jax.nn.gelu(approximate=False)'s values,
    # with a derivative that recomputes no erfc (cmseg_jax.models.activations).
    return activations.gelu(x)


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
    """Transposed conv, kernel = stride = p, as an einsum: (B, n, n, C) -> (B, n, n, p, p, F).

    Output pixel (i·p + a, j·p + c) is ``out[:, i, j, a, c]``.
    """

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
        # Patch-major (B, n, n, p, p, F): the matmul's own output layout (see Decoder).
        return jnp.einsum("bijc,cpqd->bijpqd", x, kernel.astype(x.dtype)) + bias.astype(x.dtype)


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


class MixerLayer(nn.Module):
    """One ConvMixer layer: depthwise k×k -> GELU -> BN, + residual; 1×1 -> GELU -> BN (+ residual).

    Written as a scan body ``(y, _) -> (y, None)`` so that the ``depth`` layers are one
    ``nn.scan`` over stacked parameters (see :class:`ConvMixerSeg`).
    """

    hidden: int
    kernel_size: int
    pointwise_residual: bool
    bn_momentum: float
    depthwise_impl: str
    dtype: Any
    train: bool

    @nn.compact
    def __call__(self, y: Array, _=None) -> tuple[Array, None]:
        norm = functools.partial(batch_norm, self.train, self.bn_momentum, self.dtype)
        y = y + norm("dw_bn")(gelu(Depthwise(self.kernel_size, self.depthwise_impl, name="dw")(y)))
        z = norm("pw_bn")(gelu(Pointwise(self.hidden, name="pw")(y)))
        return (y + z if self.pointwise_residual else z), None


_LAYER_AXES = dict(variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True})


class _MixerGroup(nn.Module):
    """``group`` mixer layers as one scan body, each layer rematerialised: the outer level of the
    nested remat of :class:`ConvMixerSeg` (``remat_group``)."""

    group: int
    layer: tuple

    @nn.compact
    def __call__(self, y: Array, _=None) -> tuple[Array, None]:
        layers = nn.scan(nn.remat(MixerLayer, prevent_cse=False), length=self.group, **_LAYER_AXES)
        y, _ = layers(*self.layer, name="layers")(y, None)
        return y, None


def _grouped(depth: int, group: int):
    """(flat -> grouped, grouped -> flat) views of the mixer's variables: the stored (depth, ...)
    stacks as (depth / group, group, ...) under ``layers``, and back."""

    def split(variables):
        return {
            col: {
                "layers": jax.tree_util.tree_map(
                    lambda a: a.reshape(depth // group, group, *a.shape[1:]), tree
                )
            }
            if tree
            else tree
            for col, tree in variables.items()
        }

    def merge(variables):
        return {
            col: jax.tree_util.tree_map(lambda a: a.reshape(depth, *a.shape[2:]), tree["layers"])
            if tree
            else tree
            for col, tree in variables.items()
        }

    return split, merge


class ConvMixerSeg(nn.Module):
    """ConvMixerSeg segmentation network with a CAM_β (default) or CAM_α head.

    The ``depth`` mixer layers are one ``nn.scan`` over parameters stacked on a leading layer axis
    (``params['mixer']['dw']['kernel']`` is (depth, k, k, h)): the program holds one layer, which
    keeps compiles short at depth 20, and with ``remat`` the backward pass stores only each layer's
    input (B, P/p, P/p, h) and recomputes the rest, instead of about 13 such tensors per layer.
    ``remat_group`` G > 1 nests it: the backward pass stores the input of every G-th layer, and
    recomputes a group's G layer inputs when it reaches the group (depth / G + G stored tensors
    instead of depth: 9 instead of 20 at depth 20, G = 4, for one more forward pass of the mixer
    layers). The parameters keep their flat (depth, ...) stacks: the grouping is a view of them.
    ``remat`` also recomputes the full-resolution decoder block (transposed conv, GELU, BN over the
    C_t maps) in the backward pass rather than keeping its C_t-channel activations. Remat changes
    memory and FLOPs, not the function (tested).

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
      dtype: computation dtype of activations and matmuls (float32 or bfloat16). Parameters,
        BatchNorm statistics, the Gaussian smoothing and the returned maps and scores are float32.
      remat: recompute activations in the backward pass (mixer layers and decoder block).
      remat_group: with ``remat``, layers per outer remat group (nested remat); 0 or 1: one
        level, every layer's input stored. Must divide ``depth``.
      decoder_chunk: images per pass of the fused full-resolution decoder block ('seg' head; see
        :mod:`cmseg_jax.models.decoder`); 0 = plain autodiff of the block.
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
    remat: bool = False
    remat_group: int = 0
    decoder_chunk: int = 0

    @nn.compact
    def __call__(self, x: Array, train: bool, smoothing_sigma: Array | None = None) -> dict:
        """Forward pass.

        Args:
          x: (B, S, S) or (B, S, S, C_in) images with intensities in [-1, 1].
          train: BatchNorm uses batch statistics (and updates running ones) when True.
          smoothing_sigma: optional () σ of the Gaussian in place of the attribute's, which may
            be traced (a σ axis vmapped next to the seeds); used only if the model smooths.

        Returns:
          dict with ``maps`` (B, S, S, K) float32 class maps (logits for 'seg', CAMs for
          'cam_alpha') and ``pooled`` (B, K) image-level class scores (GMP over ``maps`` for
          'seg', the dense layer's output for 'cam_alpha').
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
        norm = functools.partial(batch_norm, train, self.bn_momentum, self.dtype)

        y = norm("embed_bn")(gelu(PatchEmbed(self.hidden, p, name="embed")(x)))
        if self.depth > 0:
            layer_args = (
                self.hidden,
                self.kernel_size,
                self.pointwise_residual,
                self.bn_momentum,
                self.depthwise_impl,
                self.dtype,
                train,
            )
            group = self.remat_group if self.remat else 0
            if group > 1 and self.depth % group:
                raise ValueError(
                    f"model.remat_group ({group}) must divide model.depth ({self.depth})"
                )
            if group > 1 and not self.is_initializing():
                # Initialisation takes the flat scan below, so the parameters (and their random
                # draws) are those of any other remat setting.
                split, merge = _grouped(self.depth, group)
                groups = nn.scan(
                    nn.remat(_MixerGroup, prevent_cse=False),
                    length=self.depth // group,
                    **_LAYER_AXES,
                )
                mixers = nn.map_variables(
                    groups, ["params", "batch_stats"], split, merge, mutable=True
                )
                y, _ = mixers(group, layer_args, name="mixer")(y, None)
            else:
                layer = nn.remat(MixerLayer, prevent_cse=False) if self.remat else MixerLayer
                mixers = nn.scan(layer, length=self.depth, **_LAYER_AXES)
                y, _ = mixers(*layer_args, name="mixer")(y, None)

        def crop(t):
            return t[:, pad_h // 2 : pad_h // 2 + size_h, pad_w // 2 : pad_w // 2 + size_w]

        if self.upsample == "bilinear":
            # 1×1 conv and bilinear upsampling are both linear with weights summing to one, so they
            # commute (bias included): classify at patch resolution, then upsample the K maps.
            logits = Pointwise(self.num_classes, name="classifier")(y).astype(jnp.float32)
            b, n_h, n_w, k = logits.shape
            maps = crop(jax.image.resize(logits, (b, n_h * p, n_w * p, k), "bilinear"))
            return heads.seg_outputs(maps)

        fused = self.decoder_chunk > 0 and self.head == "seg"
        # The fused decoder already recomputes its C_t maps in the backward pass.
        block = nn.remat(Decoder, prevent_cse=False) if self.remat and not fused else Decoder
        maps, pooled = block(
            self.num_classes,
            self.transition,
            p,
            (pad_h // 2, size_h, pad_w // 2, size_w),
            self.head,
            self.bn_momentum,
            self.dtype,
            train,
            self.decoder_chunk,
            name="head",
        )(y)
        if self.smoothing_sigma > 0:
            # The taps and the smoothed maps stay float32 whatever the compute dtype.
            sigma = self.smoothing_sigma if smoothing_sigma is None else smoothing_sigma
            maps = gaussian_smooth(maps, sigma, self.smoothing_size)
        return heads.seg_outputs(maps) if pooled is None else {"maps": maps, "pooled": pooled}


class _BatchNormVariables(nn.Module):
    """The variables of a ``BatchNorm`` (same names, shapes and initial values), for the fused
    decoder, which computes the normalisation itself: returns (scale, bias, mean, var)."""

    features: int

    @nn.compact
    def __call__(self):
        mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,), jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, (self.features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return scale, bias, mean, var


class Decoder(nn.Module):
    """Transposed conv (k = stride = p) -> crop -> GELU -> BN -> 1×1 conv to the class maps.

    Computed in patch-major layout: the transposed conv's output stays (B, n, n, p, p, C_t), the
    natural output of its matmul, and the crop is a mask on the BatchNorm statistics (and on the
    CAM_α max); only the K-channel class maps are rearranged to (B, S, S, K) and cropped. The same
    function as decoding to (B, np, np, C_t) and cropping first.

    With ``chunk > 0`` (and the 'seg' head) the block is the fused, batch-chunked custom VJP of
    :mod:`cmseg_jax.models.decoder`: the C_t maps of only ``chunk`` images exist at a time, in the
    forward and the backward pass. ``chunk = 0`` is plain autodiff (and the CAM_α head always is).

    Returns float32 (maps (B, S, S, K), pooled (B, K) for the CAM_α head or None).
    """

    num_classes: int
    transition: int
    patch_size: int
    window: tuple[int, int, int, int]  # (top, height, left, width) of the crop
    head: str
    bn_momentum: float
    dtype: Any
    train: bool
    chunk: int = 0

    @nn.compact
    def __call__(self, y: Array) -> tuple[Array, Array | None]:
        top, height, left, width = self.window
        b, n_h, n_w, _ = y.shape
        p = self.patch_size
        upsample = PatchDecode(self.transition, p, name="decoder")
        classifier = Pointwise(self.num_classes, name="classifier")
        if self.head == "seg" and self.chunk > 0:
            logits = self._fused(y, upsample, classifier)
        else:
            features = upsample(y)  # (B, n, n, p, p, C_t)
            inside = decoder.inside_mask(self.window, n_h, n_w, p)[None, ..., None]
            features = batch_norm(self.train, self.bn_momentum, self.dtype, "decoder_bn")(
                gelu(features), mask=jnp.broadcast_to(inside, features.shape)
            )
            logits = classifier(features).astype(jnp.float32)
        maps = logits.transpose(0, 1, 3, 2, 4, 5).reshape(b, n_h * p, n_w * p, self.num_classes)
        maps = maps[:, top : top + height, left : left + width]
        if self.head == "cam_alpha":
            peak = jnp.max(jnp.where(inside, features, -jnp.inf), axis=(1, 2, 3, 4))
            return maps, classifier(peak).astype(jnp.float32)
        return maps, None

    def _fused(self, y, upsample, classifier):
        # Zero-image calls create the submodules' parameters (same tree as the plain path).
        upsample(y[:0])
        classifier(jnp.zeros((0, self.transition), y.dtype))
        kernel, bias = (upsample.variables["params"][k] for k in ("kernel", "bias"))
        w, wb = (classifier.variables["params"][k] for k in ("kernel", "bias"))
        scale, offset, ra_mean, ra_var = _BatchNormVariables(self.transition, name="decoder_bn")()
        chunk = math.gcd(self.chunk, y.shape[0])
        if not self.train:
            w_folded, b_folded = decoder.fold(scale, offset, w, wb, ra_mean.value, ra_var.value)
            return decoder.decoder_logits(y, kernel, bias, w_folded, b_folded, chunk)
        logits, mean, var = decoder.decoder_train(
            y, kernel, bias, scale, offset, w, wb, self.window, chunk
        )
        if not self.is_initializing():
            m = self.bn_momentum
            # PyTorch's running variance: unbiased over the pixels inside the crop of the batch.
            count = y.shape[0] * self.window[1] * self.window[3]
            ra_mean.value = m * ra_mean.value + (1.0 - m) * lax.stop_gradient(mean)
            ra_var.value = m * ra_var.value + (1.0 - m) * unbiased(lax.stop_gradient(var), count)
        return logits


_LEGACY_MIXER = re.compile(r"mixer(\d+)_(dw|dw_bn|pw|pw_bn)$")


def upgrade_legacy_layout(tree: Any, layer_axis: int = 0) -> Any:
    """Maps a variables tree of the unrolled ConvMixerSeg layout onto today's.

    Until the mixer layers became one ``nn.scan``, every layer had its own entries
    (``mixer0_dw``, ``mixer0_dw_bn``, ``mixer0_pw``, ``mixer0_pw_bn``, ``mixer1_dw`` …) and the
    decoder block's (``decoder``, ``decoder_bn``, ``classifier``) sat at the top level. Today the
    layers are stacked on a new axis ``layer_axis`` under ``mixer/{dw,dw_bn,pw,pw_bn}`` and the
    decoder block lives under ``head``. Applied to every dict in ``tree`` (params, batch_stats and
    the Adam moments alike); a tree already in today's layout is returned unchanged.

    Args:
      tree: nested dicts / lists of arrays (e.g. a raw checkpoint).
      layer_axis: where the layer axis goes (1 for seed-stacked arrays).
    """
    if isinstance(tree, list | tuple):
        return type(tree)(upgrade_legacy_layout(x, layer_axis) for x in tree)
    if not isinstance(tree, dict):
        return tree
    tree = {k: upgrade_legacy_layout(v, layer_axis) for k, v in tree.items()}
    layers: dict[int, dict[str, Any]] = {}
    for key in list(tree):
        match = _LEGACY_MIXER.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tree.pop(key)
    if layers:
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"legacy mixer layers are not numbered 0..N-1: {sorted(layers)}")
        ordered = [layers[i] for i in range(len(layers))]
        tree["mixer"] = jax.tree_util.tree_map(
            lambda *xs: np.stack([np.asarray(x) for x in xs], axis=layer_axis), *ordered
        )
    top_level = "embed" in tree or "embed_bn" in tree
    if top_level and "head" not in tree and ("decoder" in tree or "decoder_bn" in tree):
        block = ("decoder", "decoder_bn", "classifier")
        tree["head"] = {k: tree.pop(k) for k in block if k in tree}
    return tree
