"""FCN-ResNet-50: torchvision's layer layout, parameter counts, shapes, init, and a tiny sweep."""

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmseg_jax.models.batchnorm import BatchNorm
from cmseg_jax.models.common import count_params
from cmseg_jax.models.fcn_resnet import FCNResNet50, torchvision_name
from tests.conftest import ROOT, load_config


def _variables(model, size=64):
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size)), train=False)
    )


def _init(model, x):
    return jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)


@functools.cache
def _forward(model, train):
    """One jitted forward pass per model and mode, shared by the tests (eager dispatch of
    ResNet-50's ops is slow); train mode returns (outputs, updated batch_stats)."""
    if not train:
        return jax.jit(lambda v, x: model.apply(v, x, train=False))

    def fn(v, x, rng):
        out, updates = model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        return out, updates["batch_stats"]

    return jax.jit(fn)


@functools.cache
def _tiny():
    """The width-8 model, its variables and a (2, 32, 32) input."""
    model = FCNResNet50(width=8)
    x = jnp.linspace(-1, 1, 2 * 32 * 32).reshape(2, 32, 32)
    return model, _init(model, x), x


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # torchvision: fcn_resnet50(weights=None, weights_backbone=None, num_classes=2), counted
        # with sum(p.numel() for p in model.parameters()).
        ({}, 32_947_266),
        # ... with model.backbone.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False).
        ({"in_channels": 1}, 32_940_994),
        # ... with aux_loss=True.
        ({"aux_head": True}, 35_307_588),
    ],
)
def test_parameter_count_is_torchvisions(kwargs, expected):
    assert count_params(_variables(FCNResNet50(**kwargs))["params"]) == expected


def _torch_shape(collection, path, shape):
    # Flax conv kernels are (kh, kw, I, O); torch conv weights (O, I, kh, kw).
    if collection == "params" and path[-1] == "kernel":
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    return tuple(shape)


def test_every_variable_maps_onto_torchvisions_state_dict():
    expected = {}
    for line in TORCHVISION_STATE_DICT.strip().splitlines():
        name, shape = line.split()
        expected[name] = tuple(int(s) for s in shape.split(","))
    got = {}
    for collection, tree in _variables(FCNResNet50()).items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = tuple(p.key for p in path)
            name = torchvision_name(collection, keys)
            assert name not in got, f"{collection}/{'/'.join(keys)}: {name} mapped twice"
            got[name] = _torch_shape(collection, keys, leaf.shape)
    assert got == expected


def test_output_is_the_input_size_in_float32():
    model, variables, x = _tiny()
    odd = jnp.linspace(-1, 1, 2 * 37 * 37).reshape(2, 37, 37)
    assert _forward(model, False)(variables, odd)["maps"].shape == (2, 37, 37, 2)
    out = _forward(model, False)(variables, x)
    assert out["maps"].shape == (2, 32, 32, 2) and out["maps"].dtype == jnp.float32
    np.testing.assert_array_equal(out["pooled"], out["maps"].max(axis=(1, 2)))
    train_out, batch_stats = _forward(model, True)(variables, x, jax.random.PRNGKey(1))
    assert train_out["maps"].shape == (2, 32, 32, 2)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), batch_stats, variables["batch_stats"])
    assert all(jax.tree.leaves(moved))
    bf16 = _forward(FCNResNet50(width=8, dtype=jnp.bfloat16), False)(variables, x)
    assert bf16["maps"].dtype == jnp.float32
    np.testing.assert_allclose(bf16["maps"], out["maps"], atol=0.1)


def test_output_stride_is_8_and_the_last_stages_are_dilated():
    model = FCNResNet50(width=8)
    x = jnp.zeros((1, 64, 64))
    variables = _variables(model, 64)
    _, state = jax.eval_shape(
        lambda v: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        ),
        variables,
    )
    inter = state["intermediates"]
    sides = {f"layer{s}": inter[f"layer{s}_0"]["__call__"][0].shape[1:3] for s in (1, 2, 3, 4)}
    assert sides == {"layer1": (16, 16), "layer2": (8, 8), "layer3": (8, 8), "layer4": (8, 8)}
    # torchvision: the first block of a dilated stage keeps the previous stage's dilation.
    dilation = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Conv) and module.name == "conv2":
            dilation[module.scope.path[0]] = module.kernel_dilation[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert [dilation[f"layer3_{i}"] for i in range(6)] == [1, 2, 2, 2, 2, 2]
    assert [dilation[f"layer4_{i}"] for i in range(3)] == [2, 4, 4]
    assert {dilation[f"layer{s}_0"] for s in (1, 2)} == {1}


def test_every_batchnorm_is_pytorchs():
    # 53 in the backbone (stem, 3 per bottleneck, 4 downsample paths) and 1 in the head, all with
    # PyTorch's running variance (cmseg_jax/models/batchnorm.py, tested in test_models.py).
    model, variables, x = _tiny()
    kinds = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm | BatchNorm):
            kinds.append(type(context.module))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda v: model.apply(
                v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)}
            ),
            variables,
        )
    assert kinds == [BatchNorm] * 54


def test_dropout_needs_an_rng_and_is_off_in_eval():
    model, variables, x = _tiny()
    one, two, again = (
        _forward(model, True)(variables, x, jax.random.PRNGKey(k))[0]["maps"] for k in (1, 2, 1)
    )
    assert not jnp.allclose(one, two)
    np.testing.assert_array_equal(one, again)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)


def test_init_is_torchvisions():
    variables = _init(FCNResNet50(width=16), jnp.zeros((1, 32, 32)))
    params = variables["params"]
    # Backbone: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
    kernel = np.asarray(params["layer4_1"]["conv2"]["kernel"])  # (3, 3, 128, 128)
    std = np.sqrt(2.0 / (128 * 9))
    assert kernel.std() == pytest.approx(std, rel=0.03)
    assert abs(kernel.mean()) < 0.05 * std
    assert np.abs(kernel).max() > 3.5 * std  # not truncated at 2 std
    # FCN head: PyTorch's default conv init, U(±1/sqrt(fan_in)) for weights and bias.
    head = params["classifier"]
    for leaf, fan_in in [
        (head["conv"]["kernel"], 512 * 9),
        (head["out"]["kernel"], 128),
        (head["out"]["bias"], 128),
    ]:
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(leaf).max() <= bound
    conv = np.asarray(head["conv"]["kernel"])
    assert conv.std() == pytest.approx(1 / np.sqrt(3 * 512 * 9), rel=0.03)
    for bn in (params["bn1"], params["layer3_0"]["downsample_bn"], head["bn"]):
        np.testing.assert_array_equal(bn["scale"], 1.0)
        np.testing.assert_array_equal(bn["bias"], 0.0)


def _interpolate_bilinear(x, out_h, out_w):
    """PyTorch's F.interpolate(mode='bilinear', align_corners=False) on (H, W), in numpy."""

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, ry = taps(x.shape[0], out_h)
    c0, c1, cx = taps(x.shape[1], out_w)
    top = x[r0][:, c0] * (1 - cx) + x[r0][:, c1] * cx
    bottom = x[r1][:, c0] * (1 - cx) + x[r1][:, c1] * cx
    return top * (1 - ry[:, None]) + bottom * ry[:, None]


@pytest.mark.parametrize("shape_in, shape_out", [((4, 4), (32, 32)), ((5, 3), (37, 20))])
def test_upsampling_is_torchs_bilinear(shape_in, shape_out):
    x = np.random.default_rng(0).standard_normal(shape_in).astype(np.float32)
    got = jax.image.resize(jnp.asarray(x), shape_out, "bilinear")
    np.testing.assert_allclose(got, _interpolate_bilinear(x, *shape_out), atol=1e-5)


def test_config_builds_the_model_it_names():
    config = load_config("configs/fcn_resnet50.py")
    assert (config.method, config.train.learning_rate, config.train.epochs) == ("full", 1e-3, 25)
    from cmseg_jax.train import make_model

    model = make_model(config)
    assert isinstance(model, FCNResNet50) and model.width == 64
    assert make_model(load_config("configs/fcn_resnet50.py:tiny")).width == 8


def test_tiny_sweep_end_to_end(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmseg_jax.sweep",
            "--config=configs/fcn_resnet50.py:tiny",
            "--num_seeds=2",
            "--config.train.epochs=1",
            # One vmapped program of both seeds: under lax.map over seeds XLA:CPU compiles this
            # model's step several times longer (benchmarks/README.md).
            "--config.train.seed_chunk=2",
            f"--workdir={tmp_path}",
            "--progress=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| MCC |" in proc.stdout
    assert (tmp_path / "results.csv").is_file()
    assert not (tmp_path / "results_no_smoothing.csv").exists()


# torchvision 0.28's fcn_resnet50(weights=None, weights_backbone=None, num_classes=2,
# aux_loss=False).state_dict(): name and shape of every entry but num_batches_tracked.
TORCHVISION_STATE_DICT = """
backbone.conv1.weight 64,3,7,7
backbone.bn1.weight 64
backbone.bn1.bias 64
backbone.bn1.running_mean 64
backbone.bn1.running_var 64
backbone.layer1.0.conv1.weight 64,64,1,1
backbone.layer1.0.bn1.weight 64
backbone.layer1.0.bn1.bias 64
backbone.layer1.0.bn1.running_mean 64
backbone.layer1.0.bn1.running_var 64
backbone.layer1.0.conv2.weight 64,64,3,3
backbone.layer1.0.bn2.weight 64
backbone.layer1.0.bn2.bias 64
backbone.layer1.0.bn2.running_mean 64
backbone.layer1.0.bn2.running_var 64
backbone.layer1.0.conv3.weight 256,64,1,1
backbone.layer1.0.bn3.weight 256
backbone.layer1.0.bn3.bias 256
backbone.layer1.0.bn3.running_mean 256
backbone.layer1.0.bn3.running_var 256
backbone.layer1.0.downsample.0.weight 256,64,1,1
backbone.layer1.0.downsample.1.weight 256
backbone.layer1.0.downsample.1.bias 256
backbone.layer1.0.downsample.1.running_mean 256
backbone.layer1.0.downsample.1.running_var 256
backbone.layer1.1.conv1.weight 64,256,1,1
backbone.layer1.1.bn1.weight 64
backbone.layer1.1.bn1.bias 64
backbone.layer1.1.bn1.running_mean 64
backbone.layer1.1.bn1.running_var 64
backbone.layer1.1.conv2.weight 64,64,3,3
backbone.layer1.1.bn2.weight 64
backbone.layer1.1.bn2.bias 64
backbone.layer1.1.bn2.running_mean 64
backbone.layer1.1.bn2.running_var 64
backbone.layer1.1.conv3.weight 256,64,1,1
backbone.layer1.1.bn3.weight 256
backbone.layer1.1.bn3.bias 256
backbone.layer1.1.bn3.running_mean 256
backbone.layer1.1.bn3.running_var 256
backbone.layer1.2.conv1.weight 64,256,1,1
backbone.layer1.2.bn1.weight 64
backbone.layer1.2.bn1.bias 64
backbone.layer1.2.bn1.running_mean 64
backbone.layer1.2.bn1.running_var 64
backbone.layer1.2.conv2.weight 64,64,3,3
backbone.layer1.2.bn2.weight 64
backbone.layer1.2.bn2.bias 64
backbone.layer1.2.bn2.running_mean 64
backbone.layer1.2.bn2.running_var 64
backbone.layer1.2.conv3.weight 256,64,1,1
backbone.layer1.2.bn3.weight 256
backbone.layer1.2.bn3.bias 256
backbone.layer1.2.bn3.running_mean 256
backbone.layer1.2.bn3.running_var 256
backbone.layer2.0.conv1.weight 128,256,1,1
backbone.layer2.0.bn1.weight 128
backbone.layer2.0.bn1.bias 128
backbone.layer2.0.bn1.running_mean 128
backbone.layer2.0.bn1.running_var 128
backbone.layer2.0.conv2.weight 128,128,3,3
backbone.layer2.0.bn2.weight 128
backbone.layer2.0.bn2.bias 128
backbone.layer2.0.bn2.running_mean 128
backbone.layer2.0.bn2.running_var 128
backbone.layer2.0.conv3.weight 512,128,1,1
backbone.layer2.0.bn3.weight 512
backbone.layer2.0.bn3.bias 512
backbone.layer2.0.bn3.running_mean 512
backbone.layer2.0.bn3.running_var 512
backbone.layer2.0.downsample.0.weight 512,256,1,1
backbone.layer2.0.downsample.1.weight 512
backbone.layer2.0.downsample.1.bias 512
backbone.layer2.0.downsample.1.running_mean 512
backbone.layer2.0.downsample.1.running_var 512
backbone.layer2.1.conv1.weight 128,512,1,1
backbone.layer2.1.bn1.weight 128
backbone.layer2.1.bn1.bias 128
backbone.layer2.1.bn1.running_mean 128
backbone.layer2.1.bn1.running_var 128
backbone.layer2.1.conv2.weight 128,128,3,3
backbone.layer2.1.bn2.weight 128
backbone.layer2.1.bn2.bias 128
backbone.layer2.1.bn2.running_mean 128
backbone.layer2.1.bn2.running_var 128
backbone.layer2.1.conv3.weight 512,128,1,1
backbone.layer2.1.bn3.weight 512
backbone.layer2.1.bn3.bias 512
backbone.layer2.1.bn3.running_mean 512
backbone.layer2.1.bn3.running_var 512
backbone.layer2.2.conv1.weight 128,512,1,1
backbone.layer2.2.bn1.weight 128
backbone.layer2.2.bn1.bias 128
backbone.layer2.2.bn1.running_mean 128
backbone.layer2.2.bn1.running_var 128
backbone.layer2.2.conv2.weight 128,128,3,3
backbone.layer2.2.bn2.weight 128
backbone.layer2.2.bn2.bias 128
backbone.layer2.2.bn2.running_mean 128
backbone.layer2.2.bn2.running_var 128
backbone.layer2.2.conv3.weight 512,128,1,1
backbone.layer2.2.bn3.weight 512
backbone.layer2.2.bn3.bias 512
backbone.layer2.2.bn3.running_mean 512
backbone.layer2.2.bn3.running_var 512
backbone.layer2.3.conv1.weight 128,512,1,1
backbone.layer2.3.bn1.weight 128
backbone.layer2.3.bn1.bias 128
backbone.layer2.3.bn1.running_mean 128
backbone.layer2.3.bn1.running_var 128
backbone.layer2.3.conv2.weight 128,128,3,3
backbone.layer2.3.bn2.weight 128
backbone.layer2.3.bn2.bias 128
backbone.layer2.3.bn2.running_mean 128
backbone.layer2.3.bn2.running_var 128
backbone.layer2.3.conv3.weight 512,128,1,1
backbone.layer2.3.bn3.weight 512
backbone.layer2.3.bn3.bias 512
backbone.layer2.3.bn3.running_mean 512
backbone.layer2.3.bn3.running_var 512
backbone.layer3.0.conv1.weight 256,512,1,1
backbone.layer3.0.bn1.weight 256
backbone.layer3.0.bn1.bias 256
backbone.layer3.0.bn1.running_mean 256
backbone.layer3.0.bn1.running_var 256
backbone.layer3.0.conv2.weight 256,256,3,3
backbone.layer3.0.bn2.weight 256
backbone.layer3.0.bn2.bias 256
backbone.layer3.0.bn2.running_mean 256
backbone.layer3.0.bn2.running_var 256
backbone.layer3.0.conv3.weight 1024,256,1,1
backbone.layer3.0.bn3.weight 1024
backbone.layer3.0.bn3.bias 1024
backbone.layer3.0.bn3.running_mean 1024
backbone.layer3.0.bn3.running_var 1024
backbone.layer3.0.downsample.0.weight 1024,512,1,1
backbone.layer3.0.downsample.1.weight 1024
backbone.layer3.0.downsample.1.bias 1024
backbone.layer3.0.downsample.1.running_mean 1024
backbone.layer3.0.downsample.1.running_var 1024
backbone.layer3.1.conv1.weight 256,1024,1,1
backbone.layer3.1.bn1.weight 256
backbone.layer3.1.bn1.bias 256
backbone.layer3.1.bn1.running_mean 256
backbone.layer3.1.bn1.running_var 256
backbone.layer3.1.conv2.weight 256,256,3,3
backbone.layer3.1.bn2.weight 256
backbone.layer3.1.bn2.bias 256
backbone.layer3.1.bn2.running_mean 256
backbone.layer3.1.bn2.running_var 256
backbone.layer3.1.conv3.weight 1024,256,1,1
backbone.layer3.1.bn3.weight 1024
backbone.layer3.1.bn3.bias 1024
backbone.layer3.1.bn3.running_mean 1024
backbone.layer3.1.bn3.running_var 1024
backbone.layer3.2.conv1.weight 256,1024,1,1
backbone.layer3.2.bn1.weight 256
backbone.layer3.2.bn1.bias 256
backbone.layer3.2.bn1.running_mean 256
backbone.layer3.2.bn1.running_var 256
backbone.layer3.2.conv2.weight 256,256,3,3
backbone.layer3.2.bn2.weight 256
backbone.layer3.2.bn2.bias 256
backbone.layer3.2.bn2.running_mean 256
backbone.layer3.2.bn2.running_var 256
backbone.layer3.2.conv3.weight 1024,256,1,1
backbone.layer3.2.bn3.weight 1024
backbone.layer3.2.bn3.bias 1024
backbone.layer3.2.bn3.running_mean 1024
backbone.layer3.2.bn3.running_var 1024
backbone.layer3.3.conv1.weight 256,1024,1,1
backbone.layer3.3.bn1.weight 256
backbone.layer3.3.bn1.bias 256
backbone.layer3.3.bn1.running_mean 256
backbone.layer3.3.bn1.running_var 256
backbone.layer3.3.conv2.weight 256,256,3,3
backbone.layer3.3.bn2.weight 256
backbone.layer3.3.bn2.bias 256
backbone.layer3.3.bn2.running_mean 256
backbone.layer3.3.bn2.running_var 256
backbone.layer3.3.conv3.weight 1024,256,1,1
backbone.layer3.3.bn3.weight 1024
backbone.layer3.3.bn3.bias 1024
backbone.layer3.3.bn3.running_mean 1024
backbone.layer3.3.bn3.running_var 1024
backbone.layer3.4.conv1.weight 256,1024,1,1
backbone.layer3.4.bn1.weight 256
backbone.layer3.4.bn1.bias 256
backbone.layer3.4.bn1.running_mean 256
backbone.layer3.4.bn1.running_var 256
backbone.layer3.4.conv2.weight 256,256,3,3
backbone.layer3.4.bn2.weight 256
backbone.layer3.4.bn2.bias 256
backbone.layer3.4.bn2.running_mean 256
backbone.layer3.4.bn2.running_var 256
backbone.layer3.4.conv3.weight 1024,256,1,1
backbone.layer3.4.bn3.weight 1024
backbone.layer3.4.bn3.bias 1024
backbone.layer3.4.bn3.running_mean 1024
backbone.layer3.4.bn3.running_var 1024
backbone.layer3.5.conv1.weight 256,1024,1,1
backbone.layer3.5.bn1.weight 256
backbone.layer3.5.bn1.bias 256
backbone.layer3.5.bn1.running_mean 256
backbone.layer3.5.bn1.running_var 256
backbone.layer3.5.conv2.weight 256,256,3,3
backbone.layer3.5.bn2.weight 256
backbone.layer3.5.bn2.bias 256
backbone.layer3.5.bn2.running_mean 256
backbone.layer3.5.bn2.running_var 256
backbone.layer3.5.conv3.weight 1024,256,1,1
backbone.layer3.5.bn3.weight 1024
backbone.layer3.5.bn3.bias 1024
backbone.layer3.5.bn3.running_mean 1024
backbone.layer3.5.bn3.running_var 1024
backbone.layer4.0.conv1.weight 512,1024,1,1
backbone.layer4.0.bn1.weight 512
backbone.layer4.0.bn1.bias 512
backbone.layer4.0.bn1.running_mean 512
backbone.layer4.0.bn1.running_var 512
backbone.layer4.0.conv2.weight 512,512,3,3
backbone.layer4.0.bn2.weight 512
backbone.layer4.0.bn2.bias 512
backbone.layer4.0.bn2.running_mean 512
backbone.layer4.0.bn2.running_var 512
backbone.layer4.0.conv3.weight 2048,512,1,1
backbone.layer4.0.bn3.weight 2048
backbone.layer4.0.bn3.bias 2048
backbone.layer4.0.bn3.running_mean 2048
backbone.layer4.0.bn3.running_var 2048
backbone.layer4.0.downsample.0.weight 2048,1024,1,1
backbone.layer4.0.downsample.1.weight 2048
backbone.layer4.0.downsample.1.bias 2048
backbone.layer4.0.downsample.1.running_mean 2048
backbone.layer4.0.downsample.1.running_var 2048
backbone.layer4.1.conv1.weight 512,2048,1,1
backbone.layer4.1.bn1.weight 512
backbone.layer4.1.bn1.bias 512
backbone.layer4.1.bn1.running_mean 512
backbone.layer4.1.bn1.running_var 512
backbone.layer4.1.conv2.weight 512,512,3,3
backbone.layer4.1.bn2.weight 512
backbone.layer4.1.bn2.bias 512
backbone.layer4.1.bn2.running_mean 512
backbone.layer4.1.bn2.running_var 512
backbone.layer4.1.conv3.weight 2048,512,1,1
backbone.layer4.1.bn3.weight 2048
backbone.layer4.1.bn3.bias 2048
backbone.layer4.1.bn3.running_mean 2048
backbone.layer4.1.bn3.running_var 2048
backbone.layer4.2.conv1.weight 512,2048,1,1
backbone.layer4.2.bn1.weight 512
backbone.layer4.2.bn1.bias 512
backbone.layer4.2.bn1.running_mean 512
backbone.layer4.2.bn1.running_var 512
backbone.layer4.2.conv2.weight 512,512,3,3
backbone.layer4.2.bn2.weight 512
backbone.layer4.2.bn2.bias 512
backbone.layer4.2.bn2.running_mean 512
backbone.layer4.2.bn2.running_var 512
backbone.layer4.2.conv3.weight 2048,512,1,1
backbone.layer4.2.bn3.weight 2048
backbone.layer4.2.bn3.bias 2048
backbone.layer4.2.bn3.running_mean 2048
backbone.layer4.2.bn3.running_var 2048
classifier.0.weight 512,2048,3,3
classifier.1.weight 512
classifier.1.bias 512
classifier.1.running_mean 512
classifier.1.running_var 512
classifier.4.weight 2,512,1,1
classifier.4.bias 2
"""
