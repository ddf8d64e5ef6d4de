"""The full-resolution decoder block of ConvMixerSeg, fused and chunked over the batch.

The block is: transposed conv (k = stride = p) -> GELU -> BatchNorm (batch statistics over the
cropped pixels) -> 1×1 conv to K class maps. At the thesis size its C_t = 100 channel maps are the
largest tensors of the network (16 × 518² × 100 floats = 1.7 GB per seed-step in float32), and
autodiff of the plain formulation keeps about seven of them alive in the backward pass. Here the
block is one ``jax.custom_vjp`` whose passes walk the batch in chunks of ``chunk`` images and
recompute the C_t maps from the (small) patch features each time, so only one chunk's C_t maps
exist at once and only the K-channel output is materialised for the whole batch:

* forward: (1) GELU statistics Σg, Σg² per channel over the pixels inside the crop; (2) the logits,
  with BatchNorm and the 1×1 conv folded into one (C_t, K) matrix and a bias.
* backward: (1) the BatchNorm/1×1-conv parameter gradients and the two BatchNorm backward sums;
  (2) the input gradient through GELU and the transposed conv, and its kernel and bias gradients.

That is the transposed conv's matmul four times instead of once (forward) and twice (backward):
more FLOPs, far fewer bytes moved, and memory independent of the batch size.

Layouts (patch-major, the transposed conv's own output order; see ``convmixerseg.Decoder``)::

  y (B, n, n, C)  kernel (C, p, p, Ct)  ->  logits (B, n, n, p, p, K)
  inside (n, n, p, p) bool: the pixels kept by the crop (the BatchNorm statistics use only these)

BatchNorm semantics are the plain path's (``cmseg_jax.models.batchnorm``): the batch is normalised
with its biased variance E[g²] − E[g]², eps 1e-5, statistics reduced in float32; the caller keeps
PyTorch's unbiased variance in the running average. GELU is the exact (erf) form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cmseg_jax.models.activations import gelu, gelu_grad

EPS = 1e-5


def _features(y, kernel, bias):
    """GELU(transposed conv) of one chunk: (b, n, n, C) -> (b, n, n, p, p, Ct), compute dtype."""
    f = jnp.einsum("bijc,cpqd->bijpqd", y, kernel.astype(y.dtype)) + bias.astype(y.dtype)
    return f


def _chunks(x, chunk):
    """(B, ...) -> (B / chunk, chunk, ...)."""
    return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def fold(scale, offset, w, wb, mean, var):
    """BatchNorm then 1×1 conv as one affine map of g: logits = g · w' + b'."""
    a = scale * lax.rsqrt(var + EPS)
    return a[:, None] * w, wb + (offset - mean * a) @ w


def decoder_stats(y, kernel, bias, inside, chunk):
    """Mean and biased variance (Ct,) of GELU(transposed conv) over the pixels inside the crop."""
    inside = inside[None, ..., None].astype(jnp.float32)
    count = jnp.sum(inside) * y.shape[0]

    def body(sums, y_c):
        g = gelu(_features(y_c, kernel, bias)).astype(jnp.float32) * inside
        axes = (0, 1, 2, 3, 4)
        return (sums[0] + jnp.sum(g, axes), sums[1] + jnp.sum(g * g, axes)), None

    zeros = jnp.zeros(kernel.shape[-1], jnp.float32)
    (s1, s2), _ = lax.scan(body, (zeros, zeros), _chunks(y, chunk))
    mean = s1 / count
    return mean, jnp.maximum(s2 / count - mean * mean, 0.0)


def decoder_logits(y, kernel, bias, w_folded, b_folded, chunk):
    """Logits (B, n, n, p, p, K) float32 of the block with BatchNorm folded into ``w_folded``."""

    def body(_, y_c):
        g = gelu(_features(y_c, kernel, bias))
        logits = jnp.einsum("...d,dk->...k", g, w_folded.astype(g.dtype))
        return None, (logits + b_folded.astype(g.dtype)).astype(jnp.float32)

    _, logits = lax.scan(body, None, _chunks(y, chunk))
    return logits.reshape((y.shape[0],) + logits.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def decoder_train(y, kernel, bias, scale, offset, w, wb, inside_spec, chunk):
    """The block in training mode: (logits (B, n, n, p, p, K), batch mean (Ct,), batch var (Ct,)).

    Args:
      y: (B, n, n, C) patch features (compute dtype).
      kernel, bias: transposed conv (C, p, p, Ct), (Ct,).
      scale, offset: BatchNorm affine parameters (Ct,).
      w, wb: 1×1 conv (Ct, K), (K,).
      inside_spec: static (top, height, left, width) of the crop in pixels.
      chunk: images per pass; must divide B.
    """
    return _train_fwd(y, kernel, bias, scale, offset, w, wb, inside_spec, chunk)[0]


def inside_mask(inside_spec, n_h, n_w, p):
    """(n_h, n_w, p, p) bool: pixel (i·p + a, j·p + c) lies inside the crop window."""
    top, height, left, width = inside_spec
    rows = jnp.arange(n_h * p).reshape(n_h, 1, p, 1)
    cols = jnp.arange(n_w * p).reshape(1, n_w, 1, p)
    return (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)


def _train_fwd(y, kernel, bias, scale, offset, w, wb, inside_spec, chunk):
    p = kernel.shape[1]
    inside = inside_mask(inside_spec, y.shape[1], y.shape[2], p)
    mean, var = decoder_stats(y, kernel, bias, inside, chunk)
    w_folded, b_folded = fold(scale, offset, w, wb, mean, var)
    logits = decoder_logits(y, kernel, bias, w_folded, b_folded, chunk)
    return (logits, mean, var), (y, kernel, bias, scale, offset, w, mean, var)


def _train_bwd(inside_spec, chunk, res, cotangents):
    y, kernel, bias, scale, offset, w, mean, var = res
    d_logits, d_mean, d_var = cotangents
    p = kernel.shape[1]
    inside = inside_mask(inside_spec, y.shape[1], y.shape[2], p)[None, ..., None]
    inside = inside.astype(jnp.float32)
    count = jnp.sum(inside) * y.shape[0]
    r = lax.rsqrt(var + EPS)
    d_logits = d_logits.astype(jnp.float32)

    def recompute(y_c):
        f = _features(y_c, kernel, bias)
        g = gelu(f).astype(jnp.float32)
        return f, g, (g - mean) * r

    # Pass 1: the parameter gradients of BatchNorm and the 1×1 conv, and the BatchNorm sums.
    def sums(acc, xs):
        y_c, dl_c = xs
        _, _, xhat = recompute(y_c)
        d_out = jnp.einsum("...k,dk->...d", dl_c, w)
        out = xhat * scale + offset
        d_xhat = d_out * scale * inside
        # (K, pixels) @ (pixels, Ct), transposed: the small K-channel maps are the operand laid
        # out across the contraction; as einsum("...d,...k->dk") XLA:CPU transposed ``out`` (a
        # C_t-map sized copy) instead.
        d_w_c = lax.dot_general(
            dl_c.reshape(-1, dl_c.shape[-1]),
            out.reshape(-1, out.shape[-1]),
            (((0,), (0,)), ((), ())),
        )
        return (
            acc[0] + d_w_c.T,
            acc[1] + jnp.sum(dl_c, axis=(0, 1, 2, 3, 4)),
            acc[2] + jnp.sum(d_out * xhat, axis=(0, 1, 2, 3, 4)),
            acc[3] + jnp.sum(d_out, axis=(0, 1, 2, 3, 4)),
            acc[4] + jnp.sum(d_xhat, axis=(0, 1, 2, 3, 4)),
            acc[5] + jnp.sum(d_xhat * xhat, axis=(0, 1, 2, 3, 4)),
        ), None

    ct = kernel.shape[-1]
    zeros = jnp.zeros(ct, jnp.float32)
    init = (jnp.zeros_like(w), jnp.zeros(w.shape[1], jnp.float32), zeros, zeros, zeros, zeros)
    (d_w, d_wb, d_scale, d_offset, m1, m2), _ = lax.scan(
        sums, init, (_chunks(y, chunk), _chunks(d_logits, chunk))
    )
    m1, m2 = m1 / count, m2 / count

    # Pass 2: through BatchNorm (with the batch statistics' own cotangents), GELU and the
    # transposed conv.
    def grads(acc, xs):
        y_c, dl_c = xs
        f, g, xhat = recompute(y_c)
        d_xhat = jnp.einsum("...k,dk->...d", dl_c, w) * scale
        d_g = r * (d_xhat - m1 - xhat * m2) + d_mean / count + d_var * 2.0 * (g - mean) / count
        d_f = (d_g * inside * gelu_grad(f.astype(jnp.float32))).astype(y.dtype)
        d_kernel = jnp.einsum("bijc,bijpqd->cpqd", y_c, d_f, preferred_element_type=jnp.float32)
        # (pixels, p·p·Ct) @ (p·p·Ct, C): the C_t maps keep their own order (p, q, d) in the
        # contraction; as an einsum over (p, q, d) XLA:CPU transposed them (a C_t-map sized copy)
        # instead of the small kernel.
        flat = kernel.reshape(kernel.shape[0], -1).astype(d_f.dtype)
        d_y = lax.dot_general(d_f.reshape(d_f.shape[:3] + (-1,)), flat, (((3,), (1,)), ((), ())))
        return (acc[0] + d_kernel, acc[1] + jnp.sum(d_f.astype(jnp.float32), (0, 1, 2, 3, 4))), d_y

    (d_kernel, d_bias), d_y = lax.scan(
        grads,
        (jnp.zeros(kernel.shape, jnp.float32), zeros),
        (_chunks(y, chunk), _chunks(d_logits, chunk)),
    )
    d_y = d_y.reshape(y.shape).astype(y.dtype)
    return (
        d_y,
        d_kernel.astype(kernel.dtype),
        d_bias.astype(bias.dtype),
        d_scale.astype(scale.dtype),
        d_offset.astype(offset.dtype),
        d_w.astype(w.dtype),
        d_wb.astype(w.dtype),
    )


decoder_train.defvjp(_train_fwd, _train_bwd)
