"""What a sweep records, as values and text (host side): the per-epoch rows of ``metrics.jsonl``,
the final per-seed table of ``results.csv`` and the thesis table of ``summary.md`` and the report.

The files themselves are written and read by :mod:`cmseg_jax.workdir`.
"""

from __future__ import annotations

import numpy as np

from cmseg_jax import metrics, stats
from cmseg_jax.data.dataset import SPLITS

SPLIT_TITLES = {"train": "Training", "val": "Validation", "test": "Testing"}
RESULT_METRICS = metrics.METRIC_NAMES + tuple(f"cls_{m}" for m in metrics.METRIC_NAMES)
ROW_TITLES = {
    "acc": "Acc",
    "mcc": "MCC",
    "iou": "IoU",
    "dice": "Dice",
    "precision": "Prec",
    "recall": "Rec",
}


def metric_title(metric: str) -> str:
    """``"cls_mcc" -> "Cls-MCC"``, ``"precision" -> "Prec"``, ``"loss" -> "Loss"``."""
    base = metric.removeprefix("cls_")
    title = ROW_TITLES.get(base, base.capitalize())
    return f"Cls-{title}" if metric.startswith("cls_") else title


def metric_row(confusion, cls_confusion) -> dict[str, float]:
    """All result metrics of one seed and split from its pixel and image confusion counts (4,)."""
    row = {k: float(v) for k, v in metrics.metrics_from_confusion(confusion).items()}
    cls = metrics.metrics_from_confusion(cls_confusion)
    row.update({f"cls_{k}": float(v) for k, v in cls.items()})
    return row


def epoch_records(epoch, seeds, train_loss, evals, diverged) -> list[dict]:
    """The ``metrics.jsonl`` rows of one epoch.

    Args:
      epoch: 1-based epoch.
      seeds: (S,) seed ids.
      train_loss: (S,) mean training loss of the epoch.
      evals: split -> {"loss_num": (S,), "loss_den": (S,), "confusion": (S, 4),
        "cls_confusion": (S, 4)} host arrays.
      diverged: (S,) bool.
    """
    rows = []
    for i, seed in enumerate(seeds):
        for split in SPLITS:
            e = evals[split]
            conf = np.asarray(e["confusion"][i], np.int64)
            cls_conf = np.asarray(e["cls_confusion"][i], np.int64)
            den = float(e["loss_den"][i])
            row = {
                "epoch": int(epoch),
                "seed": int(seed),
                "split": split,
                "train_loss": float(train_loss[i]),
                "loss": float(e["loss_num"][i]) / den if den else float("nan"),
                "diverged": bool(diverged[i]),
            }
            row.update(dict(zip(("tp", "fp", "fn", "tn"), map(int, conf), strict=True)))
            row.update(
                dict(zip(("cls_tp", "cls_fp", "cls_fn", "cls_tn"), map(int, cls_conf), strict=True))
            )
            row.update(metric_row(conf, cls_conf))
            rows.append(row)
    return rows


def final_table(seeds, confusion, cls_confusion, diverged) -> dict[str, dict[str, np.ndarray]]:
    """split -> metric -> (S,) values; NaN for diverged seeds."""
    table = {}
    for j, split in enumerate(SPLITS):
        rows = [metric_row(confusion[i, j], cls_confusion[i, j]) for i in range(len(seeds))]
        table[split] = {m: np.where(diverged, np.nan, [r[m] for r in rows]) for m in RESULT_METRICS}
    return table


def ensemble_table(confusion, cls_confusion, hist_liver, hist_background) -> dict:
    """split -> metric -> (M,) values of ensembles of sizes 1 … M: :data:`RESULT_METRICS` and
    ``pxap``, from (M, 3, 4) confusion counts and (M, 3, B) score histograms."""
    table = {}
    for j, split in enumerate(SPLITS):
        rows = [metric_row(confusion[k, j], cls_confusion[k, j]) for k in range(len(confusion))]
        table[split] = {m: np.asarray([r[m] for r in rows], np.float64) for m in RESULT_METRICS}
        table[split]["pxap"] = np.asarray(
            metrics.pxap(hist_liver[:, j], hist_background[:, j]), np.float64
        )
    return table


def ensemble_markdown(table: dict, num_seeds: int, threshold: float, left_out: int = 0) -> str:
    """The table of the whole ensemble (its last size) that goes under the seeds' table."""
    out = f"; {left_out} diverged seed(s) left out" if left_out else ""
    lines = [
        "",
        f"Ensemble of {num_seeds} seeds{out}: the mean of their liver scores, thresholded at "
        f"{threshold:g} as one seed's (one value, not a spread; comparisons across runs use the "
        "seeds above).",
        "",
        "| ensemble of " + f"{num_seeds} | " + " | ".join(SPLIT_TITLES[s] for s in SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
    ]
    for m in (m for m in RESULT_METRICS + ("pxap",) if m in table[SPLITS[0]]):
        title = "PxAP" if m == "pxap" else metric_title(m)
        cells = [f"{float(table[s][m][-1]):.3f}" for s in SPLITS]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(name, seeds, table, diverged, data_description) -> str:
    """The thesis-style table: rows metrics, columns splits, cells ``mean ± std (median)``."""
    ok = [int(s) for s, d in zip(seeds, diverged, strict=True) if not d]
    bad = [int(s) for s, d in zip(seeds, diverged, strict=True) if d]
    lines = [
        f"# {name}",
        "",
        f"Seeds: {len(ok)} of {len(seeds)} trained to the end"
        + (f"; diverged (excluded below): {bad}" if bad else "; none diverged")
        + ".",
        f"Data: {data_description}",
        "",
        "Cells: mean ± std (median) over seeds; std with ddof = 1. Segmentation metrics from one",
        "confusion matrix over every pixel of the split; Cls-* from the image labels.",
        "",
        "| | " + " | ".join(SPLIT_TITLES[s] for s in SPLITS) + " |",
        "|---|" + "---|" * len(SPLITS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in thesis_table_rows(table)]
    return "\n".join(lines) + "\n"


def thesis_table_rows(
    values: dict[str, dict[str, np.ndarray]], num_ok: int | None = None
) -> list[list[str]]:
    """The body of the thesis' results table (tables 8.1-8.6), as cells.

    One row per metric of :data:`RESULT_METRICS` that ``values`` has: its title, then per split
    (Training, Validation, Testing) ``mean ± std (median)`` over seeds, std with ``ddof = 1``,
    NaN (diverged) values left out.

    Args:
        values: split -> metric -> ``(S,)`` per-seed values.
        num_ok: the run's number of seeds that did not diverge; a cell over another number of
            seeds says ``[n=..]``. None: no such marks.
    """
    rows = []
    for m in (m for m in RESULT_METRICS if m in values[SPLITS[0]]):
        cells = [metric_title(m)]
        for split in SPLITS:
            s = stats.summarize(values[split][m])
            cell = stats.format_cell(s["mean"], s["std"], s["median"])
            cells.append(cell if num_ok is None or s["n"] == num_ok else f"{cell} [n={s['n']}]")
        rows.append(cells)
    return rows
