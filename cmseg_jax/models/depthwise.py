"""Depthwise k×k convolution ('same' padding, stride 1) in two interchangeable implementations.

* ``conv``: ``lax.conv_general_dilated`` with ``feature_group_count = C``. Vmapped over seeds it is
  one wider depthwise conv (seeds · C groups). Good where the backend has a tuned depthwise kernel
  (cuDNN, TPU).
* ``shift``: the k² shifted copies of the input times their per-channel tap, summed — elementwise
  work that XLA fuses into one loop, with a hand-written VJP (input gradient = the same op with the
  kernel flipped; kernel gradient = k² channel-wise dot products). Vmapped over seeds it stays
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
    """(k, k, C): sum over b, h, w of pad(x)[b, h+i, w+j, c] · g[b, h, w, c].

    A ``lax.scan`` over the k kernel rows, each step the k column taps of one row over the whole
    batch. XLA:CPU hands every reduction to YNNPACK as its own kernel (its product stored first),
    so the cost is mostly per-kernel overhead: k steps of k reductions ran 2.1× faster than one
    loop step per two images with all k² reductions unrolled in it (8.6 against 17.8 ms at h = 64,
    19², batch 16, 2 cores), and as fast as one step per tap (9.1 ms).
    """
    p = k // 2
    _, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))

    def row(_, i):
        rows = lax.dynamic_slice_in_dim(xp, i, h, axis=1)
        taps = [jnp.sum(rows[:, :, j : j + w, :] * g, (0, 1, 2), jnp.float32) for j in range(k)]
        return None, jnp.stack(taps)

    return lax.scan(row, None, jnp.arange(k))[1]


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
