"""Per-epoch logs and final result files of a sweep (host side; see docs/workdir.md)."""

from __future__ import annotations

import csv
import io
import json
import pathlib
import sys

import numpy as np

from cmseg_jax import io_utils, metrics, stats
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


def append_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    """Adds ``rows`` to ``path`` by rewriting it atomically (the old lines and the new).

    A write that fails (a full disk) or is killed leaves the previous file, never a torn line.
    """
    path = pathlib.Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    io_utils.write_text(path, old + "".join(json.dumps(row) + "\n" for row in rows))


def _parse_lines(path: pathlib.Path) -> tuple[list[tuple[str, dict]], int]:
    """(line, row) of every readable row of ``path`` and the number of lines that are not a JSON
    object with an epoch (torn by a write cut short)."""
    out, bad = [], 0
    for line in pathlib.Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            out.append((line, row))
        else:
            bad += 1
    return out, bad


def truncate_jsonl(path: pathlib.Path, last_epoch: int) -> None:
    """Drops rows of epochs after ``last_epoch`` (logged before a crash, not checkpointed).

    Unreadable lines (torn by a full disk or a kill) are dropped too, with a one-line warning
    naming the file, so they never block a resume.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return
    lines, bad = _parse_lines(path)
    if bad:
        print(
            f"warning: {path}: dropped {bad} unreadable line(s) (a write cut short)",
            file=sys.stderr,
            flush=True,
        )
    kept = [line for line, row in lines if row["epoch"] <= last_epoch]
    io_utils.write_text(path, "".join(line + "\n" for line in kept))


def final_table(seeds, confusion, cls_confusion, diverged) -> dict[str, dict[str, np.ndarray]]:
    """split -> metric -> (S,) values; NaN for diverged seeds."""
    table = {}
    for j, split in enumerate(SPLITS):
        rows = [metric_row(confusion[i, j], cls_confusion[i, j]) for i in range(len(seeds))]
        table[split] = {m: np.where(diverged, np.nan, [r[m] for r in rows]) for m in RESULT_METRICS}
    return table


def results_csv(seeds, table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["seed", "split", "metric", "value"])
    for i, seed in enumerate(seeds):
        for split in SPLITS:
            for m in RESULT_METRICS:
                writer.writerow([int(seed), split, m, f"{table[split][m][i]:.6g}"])
    return out.getvalue()


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
    for m in RESULT_METRICS:
        base = m.removeprefix("cls_")
        title = ("Cls-" if m.startswith("cls_") else "") + ROW_TITLES[base]
        cells = []
        for split in SPLITS:
            s = stats.summarize(table[split][m])
            cells.append(stats.format_cell(s["mean"], s["std"], s["median"]))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
