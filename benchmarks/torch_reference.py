"""ConvMixerSeg in PyTorch: the thesis' training loop and newer PyTorch ways, for comparison.

(One file of ~780 lines on purpose: a self-contained re-implementation of the model, its
initialisation, loss and training modes that runs with torch alone, so that it can be read and
run beside the thesis' code without this package's layers.)

    python benchmarks/torch_reference.py --check          # same loss and gradients as the JAX model
    python benchmarks/torch_reference.py --seeds 1 8      # seed-steps/s per mode
    python benchmarks/torch_reference.py --config configs/cam_beta.py --seeds 1 --modes eager

Needs the ``bench`` extra (``pip install -e .[bench]``, CPU build of torch where available).

The model (:class:`TorchConvMixerSeg`) has the layers of ``cmseg_jax.models.convmixerseg`` for a
given config, written the ordinary PyTorch way (NCHW): ``Conv2d`` patch embedding
(k = stride = p), ``groups = h`` depthwise ``Conv2d`` with 'same' padding, 1×1 ``Conv2d`` pointwise
convs, ``ConvTranspose2d`` decoder (k = stride = p) or the bilinear ablation, exact-erf GELU,
``BatchNorm2d`` (momentum 0.1, eps 1e-5), the symmetric pad with -1 to a multiple of p and the crop
back, and the fixed separable Gaussian with the even-kernel centring of
``cmseg_jax.models.smoothing`` (taps at offsets -(K // 2) … K - 1 - K // 2, zero borders),
computed like the JAX default as two banded-matrix products (``smoothing_impl='matmul'``) or as two
depthwise ``conv2d`` passes (``'conv'``, ``--smoothing conv``); the same function either way. On
this project's 2-core CPU the matmul form is ~2.7× faster in PyTorch too (16 × 2 maps of 128²,
forward + backward: 82 ms vs 224 ms), so it is the default and every mode uses the same one.
PyTorch's default initialisation is what the JAX model reproduces, so a seed here is drawn from the
same distribution as a JAX seed (not the same numbers). Parameter counts are asserted equal to the
JAX model's.

Losses as in ``cmseg_jax.train``: ``full`` is the class-weighted pixel cross-entropy
(``F.cross_entropy(weight=...)``: Σ w_y·nll / Σ w_y); ``cam_beta`` / ``cam_alpha`` the softmax
cross-entropy of the pooled class scores (GMP of the class maps for ``cam_beta``) against the image
label. Training uses the same gamma augmentation (γ ~ U(gamma_range) per image) and Adam
(``torch.optim.Adam`` with the config's lr, b1, b2 and eps 1e-8, as ``optax.adam``). The JAX step's
divergence guard (a seed whose loss or gradient turns non-finite is frozen) has no counterpart here.

BatchNorm is the same on both sides: training mode normalises with the biased batch variance and
keeps the unbiased one (× n / (n - 1), n = batch · height · width per channel) in the running
variance (``cmseg_jax/models/batchnorm.py``), so eval-mode outputs agree too.

``--check`` copies a JAX/Flax params + batch_stats pytree into the torch model
(:func:`load_flax_variables`) and compares, in float32 on one training batch: the loss, the global
gradient norm, every parameter's gradient and the updated BatchNorm running means and variances
(:func:`cross_check`).

Timed modes (:func:`measure`): N seeds × ``steps`` Adam steps at batch ``train.batch_size`` on
random data generated as in ``seeds_throughput.py`` (images U(-1, 1), masks P(1) = 0.2, labels
from the masks), each seed with its own data order and gamma draws, under
``torch.set_num_threads(threads)``.

* ``eager``: the thesis' way: N models trained one after another, eager, float32, NCHW.
* ``eager_cl``: the same with model and inputs in ``torch.channels_last`` memory format.
* ``compile``: ``torch.compile`` of each model (default inductor backend; forward and backward are
  compiled, the loss and ``Adam.step`` stay eager), one after another. The graph is compiled once
  and reused by all N models (parameters are graph inputs). Compile time is excluded: every model
  first runs one untimed call (``steps`` steps) before the timed repeats; graphs compiled during
  the timed repeats are counted and reported (``torch_compile_recompiles``, expected 0).
* ``vmap``: ``torch.func.stack_module_state`` + ``torch.func.functional_call`` + ``torch.vmap``:
  the N models as one ensemble, loss summed over models, one ``backward`` and one ``Adam`` over the
  stacked parameters (Adam is elementwise, so this is N independent Adams).

BatchNorm under ``torch.vmap`` (tested in ``tests/test_torch_reference.py``): with the running
statistics stacked by ``stack_module_state`` and vmapped over (``in_dims = 0``) like the
parameters, training-mode BatchNorm updates every model's running mean, variance and
``num_batches_tracked`` in place, per model, as N eager models would (equal to float32 rounding;
the vmapped convolutions sum in another order), and eval mode uses each model's own running
statistics. With the running statistics passed unbatched (``in_dims = None``, shared by the
models) the forward pass raises ("Batch norm got a batched tensor as input while the running_mean
or running_var, which will be updated in place, were not batched").
``torch.func.replace_all_batch_norm_modules_`` is not needed; it would remove the running
statistics altogether (``track_running_stats = False``: batch statistics in eval mode too).

Every mode: one untimed call, then ``repeats`` timed calls (median), each starting from the same
initial models and optimizer state (restored outside the timer). Flush-to-zero of denormals
(``torch.set_flush_denormal``) is on by default (``--no-ftz`` turns it off); each result row says
whether it was on (``torch_ftz``) and the thread count (``torch_threads``).

Threads on a shared machine: PyTorch's CPU kernels run on OpenMP threads that spin at their
barriers, so when other processes keep the cores busy, ``threads = os.cpu_count()`` can run several
times slower than ``--threads 1`` (seen on this project's 2-core machine); compare modes only
within one run, and prefer an idle machine for recorded figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmseg_jax.models.smoothing import gaussian_kernel_1d  # noqa: E402

MODES = ("eager", "eager_cl", "compile", "vmap")


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class TorchConvMixerSeg(nn.Module):
    """ConvMixerSeg in PyTorch, NCHW; submodules are named as the Flax model's.

    ``forward(x)`` takes (B, S, S) or (B, C_in, S, S) images in [-1, 1] and returns
    ``(maps, pooled)``: class maps (B, K, S, S) and image-level class scores (B, K) (GMP of the
    maps, or the dense layer's output for the ``cam_alpha`` head).
    """

    def __init__(
        self,
        num_classes: int = 2,
        hidden: int = 256,
        depth: int = 20,
        patch_size: int = 7,
        kernel_size: int = 9,
        transition: int = 100,
        upsample: str = "transposed",
        pointwise_residual: bool = True,
        smoothing_sigma: float = 7.0,
        smoothing_size: int = 50,
        head: str = "seg",
        in_channels: int = 1,
        smoothing_impl: str = "matmul",
    ):
        super().__init__()
        if upsample not in ("transposed", "bilinear"):
            raise ValueError(f"upsample must be 'transposed' or 'bilinear', got {upsample!r}")
        if head not in ("seg", "cam_alpha"):
            raise ValueError(f"head must be 'seg' or 'cam_alpha', got {head!r}")
        if head == "cam_alpha" and upsample != "transposed":
            raise ValueError("the CAM_alpha head needs the C_t maps of the transposed-conv decoder")
        if smoothing_impl not in ("matmul", "conv"):
            raise ValueError(f"smoothing_impl must be 'matmul' or 'conv', got {smoothing_impl!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"depthwise kernel size must be odd, got {kernel_size}")
        self.depth = depth
        self.patch_size = patch_size
        self.upsample = upsample
        self.pointwise_residual = pointwise_residual
        self.head = head
        p, h = patch_size, hidden

        def bn(channels):
            return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)

        self.embed = nn.Conv2d(in_channels, h, p, stride=p)
        self.embed_bn = bn(h)
        for i in range(depth):
            dw = nn.Conv2d(h, h, kernel_size, padding=kernel_size // 2, groups=h)
            self.add_module(f"mixer{i}_dw", dw)
            self.add_module(f"mixer{i}_dw_bn", bn(h))
            self.add_module(f"mixer{i}_pw", nn.Conv2d(h, h, 1))
            self.add_module(f"mixer{i}_pw_bn", bn(h))
        if upsample == "transposed":
            self.decoder = nn.ConvTranspose2d(h, transition, p, stride=p)
            self.decoder_bn = bn(transition)
            self.classifier = nn.Conv2d(transition, num_classes, 1)
        else:
            self.classifier = nn.Conv2d(h, num_classes, 1)
        self.smoothing_size = smoothing_size
        self.smoothing_impl = smoothing_impl
        # A plain tensor, not a buffer: it holds no state (stack_module_state, state_dict skip it).
        self.smoothing_taps = (
            torch.from_numpy(gaussian_kernel_1d(smoothing_sigma, smoothing_size))
            if smoothing_sigma > 0
            else None
        )

    def band_matrix(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """(n, n) M with (M·v)[i] = Σ_d taps[d] · v[i + d], v zero outside [0, n)."""
        size = self.smoothing_size
        offset = torch.arange(n)[None, :] - torch.arange(n)[:, None] + size // 2
        inside = (offset >= 0) & (offset < size)
        taps = self.smoothing_taps.to(dtype)
        return torch.where(inside, taps[offset.clamp(0, size - 1)], torch.zeros((), dtype=dtype))

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian on every class map; taps at offsets -(K // 2) … K - 1 - K // 2."""
        channels, size = maps.shape[1], self.smoothing_size
        if self.smoothing_impl == "matmul":
            g_h = self.band_matrix(maps.shape[-2], maps.dtype)
            g_w = self.band_matrix(maps.shape[-1], maps.dtype)
            return g_h @ maps @ g_w.T
        taps = self.smoothing_taps.to(maps.dtype)
        lo, hi = size // 2, size - 1 - size // 2
        kernel_h = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)
        kernel_w = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)
        maps = F.conv2d(F.pad(maps, (0, 0, lo, hi)), kernel_h, groups=channels)
        return F.conv2d(F.pad(maps, (lo, hi, 0, 0)), kernel_w, groups=channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        size_h, size_w = x.shape[-2:]
        p = self.patch_size
        pad_h, pad_w = -size_h % p, -size_w % p
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), value=-1.0)
        y = self.embed_bn(F.gelu(self.embed(x)))
        for i in range(self.depth):
            dw, dw_bn = getattr(self, f"mixer{i}_dw"), getattr(self, f"mixer{i}_dw_bn")
            pw, pw_bn = getattr(self, f"mixer{i}_pw"), getattr(self, f"mixer{i}_pw_bn")
            y = y + dw_bn(F.gelu(dw(y)))
            z = pw_bn(F.gelu(pw(y)))
            y = y + z if self.pointwise_residual else z
        if self.upsample == "bilinear":
            logits = self.classifier(y)
            n_h, n_w = logits.shape[-2:]
            up = F.interpolate(logits, (n_h * p, n_w * p), mode="bilinear", align_corners=False)
            maps = up[..., top : top + size_h, left : left + size_w]
            return maps, maps.amax(dim=(2, 3))
        features = self.decoder(y)[..., top : top + size_h, left : left + size_w]
        features = self.decoder_bn(F.gelu(features))
        maps = self.classifier(features)
        if self.head == "cam_alpha":
            pooled = self.classifier(features.amax(dim=(2, 3), keepdim=True)).flatten(1)
        if self.smoothing_taps is not None:
            maps = self.smooth(maps)
        if self.head == "seg":
            pooled = maps.amax(dim=(2, 3))
        return maps, pooled


def torch_model(
    config, smoothing: bool | None = None, smoothing_impl: str = "matmul"
) -> TorchConvMixerSeg:
    """The config's network (as ``cmseg_jax.train.make_model``), in PyTorch."""
    from cmseg_jax import methods
    from cmseg_jax.models import registry

    m = config.model
    if abs(m.bn_momentum - 0.9) > 1e-12:
        raise ValueError(f"model.bn_momentum={m.bn_momentum}: only 0.9 (PyTorch's 0.1) is mirrored")
    if m.dtype != "float32":
        raise ValueError(f"model.dtype={m.dtype!r}: only float32 is mirrored")
    fields = registry.convmixerseg_fields(config, methods.of(config).head, smoothing)
    # How JAX computes (layout, precision, recomputation) is not part of the function.
    # The record's execution fields (remat, remat_group, decoder_chunk, ...) are among them.
    executions = {field.rsplit(".", 1)[-1] for field in registry.of(config).executions}
    for name in {"bn_momentum", "depthwise_impl", "dtype", *executions}:
        fields.pop(name, None)
    return TorchConvMixerSeg(**fields, smoothing_impl=smoothing_impl)


def count_params(model: nn.Module) -> int:
    """Trainable scalars (BatchNorm weight and bias included, running statistics not)."""
    return sum(p.numel() for p in model.parameters())


def jax_param_count(config) -> int:
    """The JAX model's parameter count for ``config`` (shapes only, nothing is computed)."""
    import jax
    import jax.numpy as jnp

    from cmseg_jax.models.common import count_params as count_jax
    from cmseg_jax.train import make_model

    size = config.data.image_size
    model = make_model(config)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size)), train=False)
    )
    return count_jax(variables["params"])


def assert_same_param_count(config) -> int:
    """Raises unless the torch and JAX models of ``config`` have the same parameter count."""
    n_torch, n_jax = count_params(torch_model(config)), jax_param_count(config)
    if n_torch != n_jax:
        raise AssertionError(f"torch model has {n_torch:,} parameters, JAX model {n_jax:,}")
    return n_torch


def task_loss(method, maps, pooled, masks, labels, class_weights) -> torch.Tensor:
    """The training loss of ``cmseg_jax.train`` for ``method``."""
    if method == "full":
        return F.cross_entropy(maps, masks.long(), weight=class_weights)
    return F.cross_entropy(pooled, labels.long())


def gamma_augment(images, low, high, generator=None) -> torch.Tensor:
    """2·((x + 1) / 2)^γ − 1 with γ ~ U(low, high) per image over the leading axes (..., H, W)."""
    gamma = torch.empty(images.shape[:-2], dtype=images.dtype)
    gamma.uniform_(low, high, generator=generator)
    unit = ((images + 1.0) * 0.5).clamp(0.0, 1.0)
    return 2.0 * unit ** gamma[..., None, None] - 1.0


# --------------------------------------------------------------------------------------------
# Flax -> torch
# --------------------------------------------------------------------------------------------


def _kernel_to_torch(kernel: np.ndarray, module: nn.Module) -> np.ndarray:
    """A Flax kernel in the layout of ``module.weight``."""
    if isinstance(module, nn.ConvTranspose2d):  # (C, p, p, F) -> (C, F, p, p)
        return kernel.transpose(0, 3, 1, 2)
    if kernel.ndim == 3:  # depthwise (k, k, C) -> (C, 1, k, k)
        return kernel.transpose(2, 0, 1)[:, None]
    if kernel.ndim == 4:  # patch embedding (p, p, C, F) -> (F, C, p, p)
        return kernel.transpose(3, 2, 0, 1)
    if kernel.ndim == 2:  # 1×1 conv (C, F) -> (F, C, 1, 1)
        return kernel.T[:, :, None, None]
    raise ValueError(f"unexpected kernel shape {kernel.shape}")


def _unrolled(tree) -> dict:
    """A ConvMixerSeg variables collection with one entry per torch module: the scanned mixer
    layers (``mixer/{dw,dw_bn,pw,pw_bn}``, stacked on axis 0) as ``mixer{i}_dw`` … and the
    decoder block's entries (under ``head``) at the top level."""
    tree = dict(tree)
    tree.update(tree.pop("head", {}))
    mixer = tree.pop("mixer", {})
    for part, leaves in mixer.items():
        for leaf, value in leaves.items():
            for i, layer in enumerate(np.asarray(value)):
                tree.setdefault(f"mixer{i}_{part}", {})[leaf] = layer
    return tree


def flax_to_torch(model: TorchConvMixerSeg, params, batch_stats=None) -> dict[str, torch.Tensor]:
    """Flax ``params`` (and ``batch_stats``) as a state dict of ``model`` (float32 copies).

    Also converts a gradient pytree (it has the layout of ``params``).
    """
    modules = dict(model.named_modules())
    out = {}
    params, batch_stats = _unrolled(params), _unrolled(batch_stats or {})
    for name, leaves in params.items():
        module = modules[name]
        for leaf, value in leaves.items():
            value = np.asarray(value, np.float32)
            if isinstance(module, nn.BatchNorm2d):
                key = {"scale": "weight", "bias": "bias"}[leaf]
            elif leaf == "kernel":
                key, value = "weight", _kernel_to_torch(value, module)
            else:
                key = "bias"
            out[f"{name}.{key}"] = torch.tensor(np.ascontiguousarray(value))
    for name, leaves in batch_stats.items():
        for leaf, value in leaves.items():
            key = {"mean": "running_mean", "var": "running_var"}[leaf]
            out[f"{name}.{key}"] = torch.tensor(np.asarray(value, np.float32))
    return out


def load_flax_variables(model: TorchConvMixerSeg, params, batch_stats=None) -> None:
    """Copies a Flax params (+ batch_stats) pytree into ``model``; every parameter must be set."""
    state = flax_to_torch(model, params, batch_stats)
    missing = set(dict(model.named_parameters())) - set(state)
    if missing:
        raise KeyError(f"no Flax value for torch parameters {sorted(missing)}")
    own = model.state_dict()
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: Flax gives {tuple(value.shape)}, torch has {own[key].shape}")
    model.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------
# Cross-check
# --------------------------------------------------------------------------------------------


def check_batch(config, seed: int = 0):
    """A training batch as numpy arrays (images, masks, labels), half of the images liver-free."""
    size, batch = config.data.image_size, config.train.batch_size
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch, size, size)).astype(np.float32)
    masks = (rng.random((batch, size, size)) < 0.2).astype(np.uint8)
    masks[1::2] = 0
    labels = masks.reshape(batch, -1).max(1).astype(np.int32)
    return images, masks, labels


def cross_check(config, seed: int = 0, smoothing_impl: str = "matmul") -> dict[str, float]:
    """One training batch through the JAX and the torch model with the same weights, in float32.

    The JAX seed's initial variables are copied into the torch model; the loss, its gradient and the
    BatchNorm running means and variances after the step are compared.

    Returns:
      ``loss_jax``, ``loss_torch``, ``loss_rel`` (relative difference), ``grad_norm_jax``,
      ``grad_norm_torch``, ``grad_norm_rel``, ``grad_diff_rel`` (‖g_torch − g_jax‖ / ‖g_jax‖ over
      all parameters), ``grad_max_rel`` (largest over parameters of max |Δg| / max |g_jax|),
      ``running_mean_max_abs`` (largest |Δ| of the updated running means),
      ``running_var_max_rel`` (largest |Δ| / var of the updated running variances) and
      ``num_params``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from cmseg_jax.methods import classification_loss, segmentation_loss
    from cmseg_jax.train import INIT, make_model, seed_key

    size = config.data.image_size
    jmodel = make_model(config)
    variables = jmodel.init(
        jax.random.fold_in(seed_key(config.root_seed, seed), INIT),
        jnp.zeros((1, size, size), jnp.float32),
        train=False,
    )
    params, batch_stats = variables["params"], variables["batch_stats"]
    images, masks, labels = check_batch(config, seed)
    weights = np.asarray([1.0, 4.0], np.float32)[: config.model.num_classes]

    def loss_fn(params):
        outputs, updates = jmodel.apply(
            {"params": params, "batch_stats": batch_stats},
            jnp.asarray(images),
            train=True,
            mutable=["batch_stats"],
        )
        if config.method == "full":
            num, den = segmentation_loss(outputs["maps"], jnp.asarray(masks), jnp.asarray(weights))
        else:
            num, den = classification_loss(outputs["pooled"], jnp.asarray(labels))
        return num / den, updates["batch_stats"]

    (loss_j, stats_j), grads_j = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    model = torch_model(config, smoothing_impl=smoothing_impl)
    load_flax_variables(model, params, batch_stats)
    model.train()
    maps, pooled = model(torch.from_numpy(images))
    loss_t = task_loss(
        config.method,
        maps,
        pooled,
        torch.from_numpy(masks),
        torch.from_numpy(labels),
        torch.from_numpy(weights),
    )
    loss_t.backward()

    grads_ref = flax_to_torch(model, grads_j)
    grad_max_rel, diff_sq = 0.0, 0.0
    for name, p in model.named_parameters():
        ref = grads_ref[name]
        scale = max(float(ref.abs().max()), 1e-30)
        grad_max_rel = max(grad_max_rel, float((p.grad - ref).abs().max()) / scale)
        diff_sq += float((p.grad.double() - ref.double()).square().sum())
    norm_t = float(torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters())))
    norm_j = float(optax.global_norm(grads_j))
    stats_ref = flax_to_torch(model, {}, stats_j)
    own = model.state_dict()
    mean_diff = max(
        float((own[k] - v).abs().max()) for k, v in stats_ref.items() if k.endswith("running_mean")
    )
    var_rel = max(
        float(((own[k] - v).abs() / v.abs()).max())
        for k, v in stats_ref.items()
        if k.endswith("running_var")
    )
    loss_j, loss_t = float(loss_j), loss_t.item()
    return {
        "loss_jax": loss_j,
        "loss_torch": loss_t,
        "loss_rel": abs(loss_t - loss_j) / max(abs(loss_j), 1e-30),
        "grad_norm_jax": norm_j,
        "grad_norm_torch": norm_t,
        "grad_norm_rel": abs(norm_t - norm_j) / max(norm_j, 1e-30),
        "grad_diff_rel": math.sqrt(diff_sq) / max(norm_j, 1e-30),
        "grad_max_rel": grad_max_rel,
        "running_mean_max_abs": mean_diff,
        "running_var_max_rel": var_rel,
        "num_params": count_params(model),
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def random_data(config, steps: int) -> dict[str, torch.Tensor]:
    """``batch · steps`` random slices, generated as in ``seeds_throughput.py``."""
    size, batch = config.data.image_size, config.train.batch_size
    num = batch * steps
    rng = np.random.default_rng(0)
    masks = (rng.random((num, size, size)) < 0.2).astype(np.uint8)
    return {
        "images": torch.from_numpy(rng.uniform(-1, 1, (num, size, size)).astype(np.float32)),
        "masks": torch.from_numpy(masks).long(),
        "labels": torch.from_numpy(masks.reshape(num, -1).max(1).astype(np.int64)),
        "class_weights": torch.tensor([1.0, 4.0])[: config.model.num_classes],
    }


class _Batches:
    """Per-seed data order and gamma draws: a fresh permutation of the data per call."""

    def __init__(self, config, data, seed: int):
        self.data = data
        self.batch = config.train.batch_size
        self.augment = config.train.gamma_augment
        self.gamma = tuple(config.train.gamma_range)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = None

    def start(self) -> None:
        self.order = torch.randperm(len(self.data["images"]), generator=self.generator)

    def __call__(self, step: int):
        idx = self.order[step * self.batch : (step + 1) * self.batch]
        images = self.data["images"][idx]
        if self.augment:
            images = gamma_augment(images, *self.gamma, generator=self.generator)
        return images, self.data["masks"][idx], self.data["labels"][idx]


def _adam(config, params) -> torch.optim.Adam:
    t = config.train
    return torch.optim.Adam(params, lr=t.learning_rate, betas=(t.b1, t.b2), eps=1e-8)


class _Snapshot:
    """The initial tensors of a set of modules/tensors and optimizers, restored before each call."""

    def __init__(
        self, tensors: Sequence[torch.Tensor], optimizers: Sequence[torch.optim.Optimizer]
    ):
        self.tensors = list(tensors)
        self.saved = [t.detach().clone() for t in self.tensors]
        self.optimizers = list(optimizers)
        self.opt_states = [copy.deepcopy(o.state_dict()) for o in self.optimizers]

    def restore(self) -> None:
        with torch.no_grad():
            for t, s in zip(self.tensors, self.saved, strict=True):
                t.copy_(s)
        for o, s in zip(self.optimizers, self.opt_states, strict=True):
            o.state.clear()
            o.load_state_dict(s)
            o.zero_grad(set_to_none=True)


def _make_models(config, num_seeds, channels_last=False, smoothing_impl="matmul"):
    models = []
    for seed in range(num_seeds):
        torch.manual_seed(config.root_seed * 1_000_003 + seed)
        model = torch_model(config, smoothing_impl=smoothing_impl).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
    return models


def _one_after_another(
    config,
    data,
    num_seeds,
    steps,
    channels_last=False,
    compile_model=False,
    smoothing_impl="matmul",
):
    """(run, reset, states) for N models trained one after another."""
    models = _make_models(config, num_seeds, channels_last, smoothing_impl)
    optimizers = [_adam(config, m.parameters()) for m in models]
    nets = [torch.compile(m) for m in models] if compile_model else models
    batches = [_Batches(config, data, seed) for seed in range(num_seeds)]
    weights = data["class_weights"]
    snapshot = _Snapshot([t for m in models for t in m.state_dict().values()], optimizers)

    def states():
        return [m.state_dict() for m in models]

    def run():
        for net, opt, batch in zip(nets, optimizers, batches, strict=True):
            batch.start()
            for step in range(steps):
                images, masks, labels = batch(step)
                if channels_last:
                    images = images.unsqueeze(1).contiguous(memory_format=torch.channels_last)
                maps, pooled = net(images)
                loss = task_loss(config.method, maps, pooled, masks, labels, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    return run, snapshot.restore, states


def _vmapped(config, data, num_seeds, steps, smoothing_impl="matmul"):
    """(run, reset, states) for N models as one ``torch.vmap`` ensemble with one Adam."""
    from torch.func import functional_call, stack_module_state

    models = _make_models(config, num_seeds, smoothing_impl=smoothing_impl)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    del models
    opt = _adam(config, list(params.values()))
    batches = [_Batches(config, data, seed) for seed in range(num_seeds)]
    weights = data["class_weights"]
    method = config.method

    def one_model(p, b, images, masks, labels):
        maps, pooled = functional_call(base, (p, b), (images,))
        return task_loss(method, maps, pooled, masks, labels, weights)

    ensemble = torch.vmap(one_model)
    snapshot = _Snapshot([*params.values(), *buffers.values()], [opt])

    def run():
        for batch in batches:
            batch.start()
        for step in range(steps):
            parts = zip(*(b(step) for b in batches), strict=True)
            images, masks, labels = (torch.stack(t) for t in parts)
            losses = ensemble(params, buffers, images, masks, labels)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()

    def states():
        stacked = {**params, **buffers}
        return [{k: v[i].detach() for k, v in stacked.items()} for i in range(num_seeds)]

    return run, snapshot.restore, states


def _trial(config, data, mode: str, num_seeds: int, steps: int, smoothing_impl="matmul"):
    """(run, reset, states) of ``mode``: ``run()`` trains every seed ``steps`` steps, ``reset()``
    restores the initial models and optimizers, ``states()`` lists every seed's parameters and
    buffers by name."""
    if mode == "vmap":
        return _vmapped(config, data, num_seeds, steps, smoothing_impl)
    return _one_after_another(
        config,
        data,
        num_seeds,
        steps,
        channels_last=mode == "eager_cl",
        compile_model=mode == "compile",
        smoothing_impl=smoothing_impl,
    )


def _median_seconds(run: Callable, reset: Callable, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        reset()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def _torch_settings(threads: int, ftz: bool):
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    ftz_on = torch.set_flush_denormal(ftz) and ftz
    try:
        yield ftz_on
    finally:
        torch.set_num_threads(old_threads)
        torch.set_flush_denormal(False)


def measure(
    config,
    seeds: Sequence[int] = (1, 8),
    steps: int = 4,
    repeats: int = 3,
    threads: int | None = None,
    modes: Sequence[str] = MODES,
    ftz: bool = True,
    smoothing_impl: str = "matmul",
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Seed-steps/s of every mode for every N in ``seeds``.

    Args:
      config: an experiment ConfigDict, or a ``path/to/config.py[:variant]`` string.
      seeds: the numbers of seeds N to time.
      steps: Adam steps per seed in one timed call.
      repeats: timed calls per mode (median reported) after one untimed call.
      threads: ``torch.set_num_threads`` (default ``os.cpu_count()``).
      modes: any of ``eager``, ``eager_cl``, ``compile``, ``vmap``.
      ftz: flush denormals to zero (``torch.set_flush_denormal``).
      smoothing_impl: 'matmul' or 'conv' (see :class:`TorchConvMixerSeg`).
      on_row: called with each row as soon as it is measured.

    Returns:
      One dict per N: ``{"num_seeds": N, "torch_<mode>": seed-steps/s, ..., "torch_threads": T,
      "torch_ftz": bool}`` (plus ``torch_compile_recompiles`` with ``compile``).
    """
    if isinstance(config, str):
        from cmseg_jax.config_base import load_config_file

        config = load_config_file(config, ROOT)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; expected some of {MODES}")
    threads = threads or os.cpu_count()
    assert_same_param_count(config)
    data = random_data(config, steps)
    rows = []
    with _torch_settings(threads, ftz) as ftz_on:
        for n in seeds:
            row: dict = {"num_seeds": n}
            for mode in modes:
                run, reset, _ = _trial(config, data, mode, n, steps, smoothing_impl)
                reset()
                run()  # warm-up, and compilation for 'compile'
                before = _compiled_graphs()
                seconds = _median_seconds(run, reset, repeats)
                row[f"torch_{mode}"] = n * steps / seconds
                if mode == "compile":
                    row["torch_compile_recompiles"] = _compiled_graphs() - before
            row["torch_threads"] = threads
            row["torch_ftz"] = ftz_on
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cam_beta.py:cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=4, help="Adam steps per seed per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument(
        "--ftz", action=argparse.BooleanOptionalAction, default=True, help="flush denormals"
    )
    parser.add_argument("--smoothing", default="matmul", choices=("matmul", "conv"))
    parser.add_argument("--check", action="store_true", help="compare with the JAX model")
    args = parser.parse_args()

    from cmseg_jax.config_base import load_config_file

    config = load_config_file(args.config, ROOT)
    if args.check:
        result = cross_check(config, smoothing_impl=args.smoothing)
        print(json.dumps({"config": args.config, **result}))
        if max(result["loss_rel"], result["grad_norm_rel"], result["grad_diff_rel"]) >= 1e-4:
            sys.exit("torch and JAX disagree")
        return
    print(
        json.dumps(
            {
                "config": args.config,
                "torch": torch.__version__,
                "params": assert_same_param_count(config),
                "image_size": config.data.image_size,
                "batch_size": config.train.batch_size,
                "steps_per_call": args.steps,
                "smoothing_impl": args.smoothing,
                "repeats": args.repeats,
                "unit": "seed-steps/s (median of repeats)",
            }
        ),
        flush=True,
    )

    def show(row):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))

    measure(
        config,
        args.seeds,
        args.steps,
        args.repeats,
        args.threads,
        args.modes,
        ftz=args.ftz,
        smoothing_impl=args.smoothing,
        on_row=show,
    )


if __name__ == "__main__":
    main()
