"""Depthwise k×k convolution ('same' padding, stride 1) in two interchangeable implementations.

* ``conv``: ``lax.conv_general_dilated`` with ``feature_group_count = C``. Vmapped over seeds it is
  one wider depthwise conv (seeds · C groups). Good where the backend has a tuned depthwise kernel
  (cuDNN, TPU).
* ``shift``: the k² shifted copies of the input times their per-channel tap, summed — elementwise
  work that XLA fuses into one loop, with a hand-written VJP (input gradient = the same op with the
  kernel flipped; kernel gradient = the k² lags of each channel's cross-correlation of the input
  with the output gradient, by FFT: ``_kernel_grad``). Vmapped over seeds it stays
  elementwise: no grouped convolution at all. On XLA:CPU, whose grouped convolutions are slow, it
  is several times faster than ``conv`` forward and backward (see ``_shift_sum``; ``python
  benchmarks/seeds_throughput.py --depthwise conv`` re-measures the whole step).

``auto`` picks ``shift`` on CPU and ``conv`` elsewhere. Both compute the same function (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _shift_sum(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """sum_{i,j} pad(x)[:, i:i+H, j:j+W, :] * kernel[i, j]  — (B, H, W, C), kernel (k, k, C).

    All k² taps are static slices of one padded copy, summed row by row, which XLA fuses into a
    single loop over the output (about 9× faster on XLA:CPU than a ``lax.scan`` over the kernel
    rows, whose dynamic slices each materialise a copy). The mixer layers are one scanned body, so
    the k² unrolled taps appear once in the program.
    """
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    out = None
    for i in range(k):
        rows = xp[:, i : i + h]
        acc = rows[:, :, 0:w] * kernel[i, 0]
        for j in range(1, k):
            acc = acc + rows[:, :, j : j + w] * kernel[i, j]
        out = acc if out is None else out + acc
    return out


@jax.custom_vjp
def depthwise_shift(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Depthwise 'same' cross-correlation by shift-and-add; x (B, H, W, C), kernel (k, k, C)."""
    return _shift_sum(x, kernel)


def _fwd(x, kernel):
    return _shift_sum(x, kernel), (x, kernel)


def _kernel_grad(x: jnp.ndarray, g: jnp.ndarray, k: int) -> jnp.ndarray:
    """(k, k, C) float32: sum over b, h, w of pad(x)[b, h+i, w+j, c] · g[b, h, w, c].

    The k² lags of each channel's cross-correlation of the padded input with the output
    gradient, computed by FFT: ``irfft2(Σ_b rfft2(pad(x)) · conj(rfft2(g zero-padded to the
    same size)))`` over (h, w), of which lags 0 .. k−1 are kept. The zero padding makes the
    circular correlation exact at those lags (h + i and w + j never wrap). Three library calls
    instead of k² reductions: XLA:CPU hands every reduction to YNNPACK as its own kernel with
    its operand stored first, so the direct sum cost about 150 µs a tap. At h = 64, 19²,
    batch 16 on 2 cores: 3.6 ms against 8.6–10.3 ms for a ``lax.scan`` over kernel rows and
    17.8 ms for all k² reductions per two-image chunk; the difference from the direct sum is
    float32 rounding (≈3e-7 of the largest entry; tested against float64).
    """
    p = k // 2
    _, h, w, _ = x.shape
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    size = xp.shape[1:3]
    gp = jnp.pad(g.astype(jnp.float32), ((0, 0), (0, k - 1), (0, k - 1), (0, 0)))
    spectrum = jnp.sum(
        jnp.fft.rfft2(xp, axes=(1, 2)) * jnp.conj(jnp.fft.rfft2(gp, axes=(1, 2))), axis=0
    )
    return jnp.fft.irfft2(spectrum, s=size, axes=(0, 1))[:k, :k, :]


def _bwd(res, g):
    x, kernel = res
    # d/dx of a cross-correlation is the correlation of g with the flipped kernel; for odd k the
    # 'same' padding is symmetric, so this is the same op.
    grad_x = _shift_sum(g, kernel[::-1, ::-1])
    return grad_x, _kernel_grad(x, g, kernel.shape[0]).astype(kernel.dtype)


depthwise_shift.defvjp(_fwd, _bwd)


def depthwise_conv(x: jnp.ndarray, kernel: jnp.ndarray, impl: str = "auto") -> jnp.ndarray:
    """Depthwise 'same' convolution (cross-correlation, as in every DL framework).

    Args:
      x: (B, H, W, C).
      kernel: (k, k, C) with odd k.
      impl: 'conv', 'shift' or 'auto' (shift on CPU, conv elsewhere).

    Returns:
      (B, H, W, C).
    """
    k = kernel.shape[0]
    if k % 2 == 0:
        raise ValueError(f"depthwise kernel size must be odd, got {k}")
    if impl == "auto":
        impl = "shift" if jax.default_backend() == "cpu" else "conv"
    if impl == "shift":
        return depthwise_shift(x, kernel)
    if impl == "conv":
        return lax.conv_general_dilated(
            x,
            kernel[:, :, None, :],
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    raise ValueError(
        f"model.convmixerseg.depthwise_impl must be 'auto', 'conv' or 'shift', got {impl!r}"
    )
