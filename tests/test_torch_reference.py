"""The PyTorch ConvMixerSeg of benchmarks/torch_reference.py against the JAX model (needs torch)."""

import copy
import importlib.util
import pathlib

import pytest

torch = pytest.importorskip("torch")

from conftest import load_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location(
        "torch_reference", ROOT / "benchmarks" / "torch_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_count_at_the_cpu_variant(ref):
    config = load_config("configs/cam_beta.py:cpu")
    assert ref.count_params(ref.torch_model(config)) == 92_242
    assert ref.assert_same_param_count(config) == 92_242


@pytest.mark.parametrize(
    "spec, smoothing_impl",
    [
        ("configs/cam_beta.py:tiny", "matmul"),
        ("configs/cam_beta.py:tiny", "conv"),
        ("configs/full_ce.py:tiny", "matmul"),
        ("configs/cam_alpha.py:tiny", "matmul"),
        ("configs/ablation_no_gs_bilinear.py:tiny", "matmul"),
        ("configs/ablation_no_res.py:tiny", "matmul"),
        # 128² with an even (12-tap) Gaussian and a 2-pixel pad to 133 = 19·7.
        ("configs/cam_beta.py:cpu", "matmul"),
        ("configs/cam_beta.py:cpu", "conv"),
    ],
)
def test_same_loss_and_gradient_as_jax(ref, spec, smoothing_impl):
    result = ref.cross_check(load_config(spec), smoothing_impl=smoothing_impl)
    assert result["loss_rel"] < 1e-4, result
    assert result["grad_norm_rel"] < 1e-4, result
    assert result["grad_diff_rel"] < 1e-4, result
    assert result["running_mean_max_abs"] < 1e-5, result
    # PyTorch's running variance (unbiased batch variance), to float32 rounding.
    assert result["running_var_max_rel"] < 1e-5, result


def _small_models(ref, n):
    torch.manual_seed(0)
    return [
        ref.TorchConvMixerSeg(
            hidden=4, depth=1, transition=3, smoothing_size=3, smoothing_sigma=1.0
        )
        for _ in range(n)
    ]


def test_batchnorm_running_stats_update_per_model_under_vmap(ref):
    from torch.func import functional_call, stack_module_state

    models = _small_models(ref, 3)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.rand(3, 2, 14, 14) * 2 - 1

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))[0]

    torch.vmap(forward)(params, buffers, x).sum().backward()
    for i, model in enumerate(models):
        model(x[i])
        for name, value in model.named_buffers():
            torch.testing.assert_close(buffers[name][i], value, rtol=1e-5, atol=1e-6, msg=name)
    assert buffers["embed_bn.num_batches_tracked"].tolist() == [1, 1, 1]

    # Eval mode uses each model's own running statistics.
    base.eval()
    out = torch.vmap(forward)(params, buffers, x)
    for i, model in enumerate(models):
        torch.testing.assert_close(out[i], model.eval()(x[i])[0])

    # Running statistics shared by the models (not vmapped) cannot be updated in place.
    base.train()
    shared = {k: v[0].clone() for k, v in buffers.items()}
    with pytest.raises(RuntimeError, match="running_mean or running_var"):
        torch.vmap(forward, in_dims=(0, None, 0))(params, shared, x)


def test_replace_all_batch_norm_modules_drops_running_stats(ref):
    from torch.func import replace_all_batch_norm_modules_

    (model,) = _small_models(ref, 1)
    replace_all_batch_norm_modules_(model)
    assert model.embed_bn.running_mean is None
    assert not model.embed_bn.track_running_stats


def test_every_mode_trains_the_same_models(ref):
    config = load_config("configs/cam_beta.py:tiny")
    data = ref.random_data(config, 2)
    finals = {}
    for mode in ("eager", "eager_cl", "vmap"):
        run, reset, states = ref._trial(config, data, mode, 2, 2)
        reset()
        run()
        finals[mode] = states()
    initial = ref._trial(config, data, "eager", 2, 2)[2]()
    for mode in ("eager_cl", "vmap"):
        for got, want, start in zip(finals[mode], finals["eager"], initial, strict=True):
            assert set(got) == set(want)
            for name in want:
                if name.endswith("num_batches_tracked"):
                    assert got[name] == want[name] == 2
                    continue
                assert not torch.equal(want[name], start[name]), name  # it did train
                torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_measure_rows(ref):
    rows = ref.measure(
        "configs/cam_beta.py:tiny",
        seeds=[1, 2],
        steps=1,
        repeats=1,
        threads=1,
        modes=["eager", "vmap"],
        ftz=False,
    )
    assert [r["num_seeds"] for r in rows] == [1, 2]
    for row in rows:
        assert row["torch_eager"] > 0 and row["torch_vmap"] > 0
        assert row["torch_threads"] == 1 and row["torch_ftz"] is False
