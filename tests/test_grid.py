"""Traced hyperparameters: a grid point vmapped next to the seeds trains as its own config."""

import itertools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import whole_epoch

from cmseg_jax import config_base
from cmseg_jax import workdir as workdir_io
from cmseg_jax.train import GridTrainState, TrainState, make_train, seed_key
from tests.conftest import ROOT, load_config
from tests.test_train import _random_split


@pytest.fixture(scope="module")
def data():
    config = load_config("configs/cam_beta.py:tiny")
    split = jax.device_put(_random_split(8, config.data.image_size, seed=4))
    return split, jnp.asarray([0.6, 2.5], jnp.float32)


def _epoch(config, keys, split, weights, traced=(), hparams=None):
    trainer = make_train(config, num_train=8, traced=traced)
    if hparams is None:
        states = jax.vmap(trainer.init)(keys)
    else:
        states = jax.vmap(trainer.init)(keys, hparams)
    run = jax.jit(jax.vmap(whole_epoch(trainer), in_axes=(0, None, None, None)))
    states, stats = run(states, split, weights, jnp.int32(0))
    evals = jax.vmap(trainer.evaluate, in_axes=(0, None, None))(states, split, weights)
    return states, stats, evals


@pytest.mark.parametrize(
    "field, values",
    [
        ("model.smoothing_sigma", (0.5, 1.0)),
        # An optimizer hyperparameter's record (tests/test_methods.py) in a whole run: slow run.
        pytest.param("train.learning_rate", (0.01, 0.003), marks=pytest.mark.slow),
    ],
)
def test_a_grid_point_trains_as_its_own_config(data, field, values):
    split, weights = data
    base = load_config("configs/cam_beta.py:tiny")
    points = list(itertools.product(values, (0, 1)))  # (value, seed), value-major
    keys = jnp.stack([seed_key(0, s) for _, s in points])
    hparams = {field: jnp.asarray([v for v, _ in points], jnp.float32)}
    states, stats, evals = _epoch(base, keys, split, weights, (field,), hparams)
    expected_type = GridTrainState if field == "model.smoothing_sigma" else TrainState
    assert type(states) is expected_type
    for i, value in enumerate(values):
        alone = load_config(f"configs/cam_beta.py:tiny,{field}={value}")
        _, s_stats, s_evals = _epoch(alone, keys[2 * i : 2 * i + 2], split, weights)
        np.testing.assert_allclose(
            stats["loss_sum"][2 * i : 2 * i + 2], s_stats["loss_sum"], rtol=1e-5
        )
        np.testing.assert_array_equal(evals["confusion"][2 * i : 2 * i + 2], s_evals["confusion"])
    # The grid points differ from each other.
    assert not np.allclose(stats["loss_sum"][:2], stats["loss_sum"][2:])


def test_untraced_grid_fields_are_refused():
    config = load_config("configs/cam_beta.py:tiny")
    with pytest.raises(ValueError, match="not traced"):
        make_train(config, num_train=8, traced=("model.convmixerseg.hidden",))


def _sweep(cli_env, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "cmseg_jax.sweep", *args, "--progress=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SIGMAS = ("0.25", "0.5")


@pytest.fixture(scope="module")
def sigma_grid(tmp_path_factory, cli_env):
    """A 2 σ × 2 seed grid sweep (one program) through the CLI."""
    workdir = tmp_path_factory.mktemp("grid") / "sigma"
    _sweep(
        cli_env,
        "--config=configs/grids/sigma_study.py:tiny",
        f"--config.sweep.grid=model.smoothing_sigma={','.join(SIGMAS)}",
        "--config.train.epochs=1",
        "--num_seeds=2",
        f"--workdir={workdir}",
    )
    return workdir


def test_a_grid_sweep_equals_its_runs_done_separately(sigma_grid, tmp_path, cli_env):
    rows = workdir_io.read_grid_results(sigma_grid)
    for sigma in SIGMAS:
        point = sigma_grid / "grid" / f"model.smoothing_sigma={sigma}"
        for seed in (0, 1):
            alone = tmp_path / f"s{sigma}_{seed}"
            _sweep(
                cli_env,
                "--config=configs/grids/sigma_study.py:tiny",
                "--config.sweep.grid=",
                f"--config.model.smoothing_sigma={sigma}",
                "--config.train.epochs=1",
                f"--seeds={seed}",
                f"--workdir={alone}",
            )
            got = workdir_io.read_results_csv(point)[seed]
            assert got == workdir_io.read_results_csv(alone)[seed]
            if seed == 0:  # each point is its own ensemble: its first seed is seed 0 alone
                ensemble = workdir_io.read_ensemble_results(point)
                assert sorted(ensemble) == [1, 2]
                assert ensemble[1] == workdir_io.read_ensemble_results(alone)[1]
            # grid_results.csv carries the same values with the grid column.
            mine = [
                r for r in rows if (r["seed"], r["model.smoothing_sigma"]) == (seed, float(sigma))
            ]
            assert len(mine) == sum(len(m) for m in got.values())
            for r in mine:
                assert r["value"] == pytest.approx(got[r["split"]][r["metric"]], rel=1e-5)
    # metrics.jsonl of the grid's workdir carries the grid field on every row.
    top, _ = workdir_io.read_metrics(sigma_grid)
    assert {r["model.smoothing_sigma"] for r in top} == {float(s) for s in SIGMAS}


def test_the_report_of_a_grid_compares_its_points(sigma_grid, tmp_path):
    from cmseg_jax import report

    out = report.build_report([sigma_grid], tmp_path / "report")
    assert list(out["runs"]) == [f"model.smoothing_sigma={s}" for s in SIGMAS]
    assert out["baseline"] == "model.smoothing_sigma=0.25"
    assert out["comparisons"], "the second point is tested against the first"
    assert (tmp_path / "report" / "grid_model.smoothing_sigma.png").is_file()


def test_an_untraced_grid_field_compiles_one_program_per_value(tmp_path, cli_env):
    workdir = tmp_path / "mixed"
    _sweep(
        cli_env,
        "--config=configs/grids/sigma_study.py:tiny",
        "--config.sweep.grid=model.convmixerseg.hidden=4,8; train.learning_rate=0.01,0.003",
        "--config.train.epochs=1",
        "--config.eval.without_smoothing=false",
        "--seeds=0",
        f"--workdir={workdir}",
    )
    assert sorted(p.name for p in (workdir / "programs").iterdir()) == [
        "model.convmixerseg.hidden=4",
        "model.convmixerseg.hidden=8",
    ]
    points = sorted(p.name for p in (workdir / "grid").iterdir())
    assert points == sorted(
        f"model.convmixerseg.hidden={h},train.learning_rate={lr}"
        for h in (4, 8)
        for lr in (0.01, 0.003)
    )
    rows = workdir_io.read_grid_results(workdir)
    assert {(r["model.convmixerseg.hidden"], r["train.learning_rate"]) for r in rows} == {
        (h, lr) for h in (4.0, 8.0) for lr in (0.01, 0.003)
    }
    config, _ = workdir_io.read_config(workdir / "grid" / points[0])
    assert config.model.convmixerseg.hidden == 4 and config.train.learning_rate == 0.003
    assert "sweep" not in config


@pytest.mark.parametrize(
    "spec, message",
    [
        ("model.hiden=1,2", "sweep.grid: 'model.hiden': no such field"),
        ("model.convmixerseg.hidden=4,four", "expected a int"),
        (
            "model.convmixerseg.hidden=4,4",
            "sweep.grid: model.convmixerseg.hidden repeats a value",
        ),
        ("model.convmixerseg.hidden", "is not field=value,value"),
    ],
)
def test_bad_grids_are_one_line_errors(spec, message):
    config = load_config("configs/grids/sigma_study.py:tiny")
    config.sweep.grid = spec
    with pytest.raises(ValueError, match=message):
        config_base.parse_grid(config)
