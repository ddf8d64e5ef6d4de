"""The sweep's final result files: evaluations of the finished states, results.csv,
final_stats.npz, the ensemble's results_ensemble.csv and final_stats_ensemble.npz, summary.md,
examples.npz and run.json; for a grid, per point and together."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cmseg_jax import config_base, distributed, methods, results, variants, xla_flags
from cmseg_jax import workdir as workdir_io
from cmseg_jax.data import dataset
from cmseg_jax.sweep import ensemble as ensemble_lib

SPLITS = dataset.SPLITS


def _host(tree):
    return distributed.to_host(tree)


def evaluate(fn, states, data, class_weights, num) -> dict:
    """``fn`` of the seed-stacked states on every split, the first ``num`` rows on the host."""
    evals = {split: fn(states, data[split], class_weights) for split in SPLITS}
    return jax.tree_util.tree_map(lambda x: x[:num], _host(evals))


def _write_final(workdir, variant, seeds, evals, diverged) -> dict:
    """final_stats{suffix}.npz and results{suffix}.csv from final evaluation sums; the table."""
    confusion = np.stack([np.asarray(evals[s]["confusion"], np.int64) for s in SPLITS], axis=1)
    cls_confusion = np.stack(
        [np.asarray(evals[s]["cls_confusion"], np.int64) for s in SPLITS], axis=1
    )
    hists = np.stack([np.asarray(evals[s]["histograms"], np.int64) for s in SPLITS], axis=1)
    workdir_io.write_final_stats(
        workdir, seeds, confusion, cls_confusion, hists[:, :, 0], hists[:, :, 1], variant
    )
    table = results.final_table(seeds, confusion, cls_confusion, diverged)
    workdir_io.write_results_csv(workdir, seeds, table, variant)
    return table


def finish(
    config, workdir, axis, states, data, class_weights, fns, data_description, evals=None
) -> dict:
    """Final result files; ``evals`` = the final evaluation if the last epoch already ran it."""
    seeds = axis.run_seeds
    num = len(seeds)
    diverged = _host(states.diverged)[:num]
    if evals is None:  # a finished workdir re-run: evaluate the restored state
        evals = evaluate(fns.evaluate_final, states, data, class_weights, num)
    finals = {"default": evals}
    for variant, fn in fns.evaluate_variants.items():
        finals[variant] = evaluate(fn, states, data, class_weights, num)
    ensembles = evaluate_ensembles(fns, states, data, diverged)
    states = _host(states)  # every collective before process 0 alone writes
    if not distributed.is_writer():
        return {"seeds": seeds, "diverged": diverged, "table": None, "summary": "", "grid_rows": []}
    evals = {"finals": finals, "ensembles": ensembles}
    if axis.is_grid:
        return _finish_grid(
            config, workdir, axis, states, data, fns, data_description, evals, diverged
        )
    return _write_outputs(
        config, workdir, seeds, states, data, fns, data_description, evals, diverged
    )


def evaluate_ensembles(fns, states, data, diverged) -> dict:
    """variant -> split -> per-row ensemble sums (host, the first ``len(diverged)`` rows) of every
    seed that did not diverge (:mod:`cmseg_jax.sweep.ensemble`); {} without ensemble functions."""
    if not fns.ensemble:
        return {}
    num = len(diverged)
    rows = jax.tree_util.tree_leaves(states)[0].shape[0]
    weights = np.zeros(rows, np.float32)
    weights[:num] = ~np.asarray(diverged, bool)
    weights = distributed.put(weights, fns.layout.replicated)
    states = states.replace(opt_state=None)  # the scores need params and batch statistics only
    splits = {split: data[split] for split in SPLITS}
    out = {variant: fn(states, splits, weights) for variant, fn in fns.ensemble.items()}
    return jax.tree_util.tree_map(lambda x: x[:num], _host(out))


def _finish_grid(config, workdir, axis, states, data, fns, data_description, evals, diverged):
    """Each grid point's own workdir, then grid_results.csv and summary.md of the program."""
    outs, grid_rows = [], []
    for i in range(len(axis.points)):
        rows = axis.rows(i)

        def part(tree, rows=rows):
            return None if tree is None else jax.tree_util.tree_map(lambda x: x[rows], tree)

        # The point's own workdir: what a sweep of the point's config alone would write.
        point_config = config_base.at_point(config, axis.points[i])
        point_dir = axis.point_dir(i)
        workdir_io.write_config(point_dir, point_config, axis.seeds)
        out = _write_outputs(
            point_config,
            point_dir,
            list(axis.seeds),
            part(states),
            data,
            fns,
            data_description,
            part(evals),
            diverged[rows],
        )
        outs.append(f"## {config_base.point_name(axis.point(i))}\n\n{out['summary']}")
        grid_rows.append((axis.point(i), axis.seeds, out["table"]))
    summary = "\n".join(outs)
    workdir_io.write_grid_results(workdir, list(axis.point(0)), grid_rows)
    workdir_io.write_summary(workdir, summary)
    return {
        "seeds": axis.run_seeds,
        "diverged": diverged,
        "summary": summary,
        "grid_rows": grid_rows,
    }


def _write_outputs(config, workdir, seeds, states, data, fns, data_description, evals, diverged):
    """results.csv, final_stats.npz, the ensemble's files, summary.md, examples.npz and run.json
    of host results (``evals``: {"finals": evaluation variant -> its final evaluation,
    "ensembles": evaluation variant -> its ensemble}), a table of each variant in summary.md."""
    threshold = methods.of(config).threshold(config)
    ensembles = evals["ensembles"]
    parts = []
    for variant, final in evals["finals"].items():
        variant_table = _write_final(workdir, variant, seeds, final, diverged)
        if variant == "default":
            table, title = variant_table, config.name
        else:
            title = f"{config.name}, {variants.VARIANTS[variant].title}"
        text = results.summary_markdown(title, seeds, variant_table, diverged, data_description)
        if variant in ensembles:
            text += _write_ensemble(
                workdir, variant, seeds, ensembles[variant], diverged, threshold
            )
        parts.append(text)
    summary = "\n".join(parts)
    workdir_io.write_summary(workdir, summary)
    _write_examples(config, workdir, seeds, states, data, fns, table, diverged)
    device = jax.devices()[0]
    workdir_io.write_run_info(
        workdir,
        seeds=seeds,
        diverged=[s for s, d in zip(seeds, diverged, strict=True) if d],
        epochs_completed=config.train.epochs,
        num_epochs=config.train.epochs,
        data=data_description,
        device=f"{device.platform}:{device.device_kind}",
        xla=xla_flags.record(),
    )
    return {
        "seeds": seeds,
        "diverged": diverged,
        "table": table,
        "summary": summary,
        "grid_rows": [],
    }


def _write_ensemble(workdir, variant, seeds, per_row, diverged, threshold) -> str:
    """results_ensemble{suffix}.csv and final_stats_ensemble{suffix}.npz; the summary's table."""
    weights = (~np.asarray(diverged, bool)).astype(np.float32)
    if not weights.any():
        return ""
    sizes = ensemble_lib.by_size(per_row, weights)
    joined = [int(s) for s, w in zip(seeds, weights, strict=True) if w > 0]

    def stacked(key):
        return np.stack([np.asarray(sizes[s][key], np.int64) for s in SPLITS], axis=1)

    hists = stacked("histograms")
    table = workdir_io.write_ensemble(
        workdir,
        joined,
        stacked("confusion"),
        stacked("cls_confusion"),
        hists[:, :, 0],
        hists[:, :, 1],
        variant,
    )
    return results.ensemble_markdown(table, len(joined), threshold, len(seeds) - len(joined))


def _write_examples(config, workdir, seeds, states, data, fns, table, diverged) -> None:
    """Test slices with the liver score of the best / median / worst seed by validation MCC."""
    val_mcc = np.where(diverged, np.nan, table["val"]["mcc"])
    finite = np.flatnonzero(np.isfinite(val_mcc))
    if finite.size == 0:
        return
    order = finite[np.argsort(val_mcc[finite], kind="stable")]
    picks = [order[-1], order[len(order) // 2], order[0]]
    test = jax.tree_util.tree_map(np.asarray, data["test"])
    valid = np.flatnonzero(test["valid"])
    liver = [i for i in valid if test["labels"][i] == 1]
    background = [i for i in valid if test["labels"][i] == 0]
    half = config.eval.num_examples // 2
    chosen = np.asarray(
        (liver[:half] + background[: config.eval.num_examples - half])[: config.eval.num_examples]
    )
    images = dataset.decode_images(test["images"][chosen])
    scores = []
    for row in picks:
        state = jax.tree_util.tree_map(lambda x, r=row: x[r], states)
        scores.append(np.asarray(fns.predict(state, jnp.asarray(images)), np.float16))
    workdir_io.write_examples(
        workdir,
        images=images,
        masks=test["masks"][chosen],
        seeds=[seeds[r] for r in picks],
        scores=np.stack(scores),
        threshold=methods.of(config).threshold(config),
    )
