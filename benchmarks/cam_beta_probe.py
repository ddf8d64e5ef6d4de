"""Where CAM_β's liver maps fall on the CT phantom, and why: evidence, not tuning.

(One file of ~640 lines on purpose: every measurement of docs/cam_beta.md in one script that
writes one JSON, so that the document's numbers are reproduced by one command.)

    python benchmarks/cam_beta_probe.py --config 'configs/cam_beta.py:cpu,train.epochs=15' \\
        --workdir /tmp/cam_beta_cpu --num_seeds 2 --out docs/reproduction/cam_beta/base.json
    python benchmarks/cam_beta_probe.py --quick --out /tmp/q.json

``--quick`` is ``configs/cam_beta.py:tiny`` with one seed at its initial weights, in memory (the
test runs it: the pipeline, not the finding). Otherwise the sweep in ``--workdir`` is trained
first if it holds no checkpoint (:func:`cmseg_jax.sweep.run`), then restored
(:func:`cmseg_jax.predict.load_sweep`). The JSON has:

``shortcut``
    Can liver and liver-free slices be told apart without looking at the liver? Features of each
    sampled slice (all splits) at the model's grid: the body outline (HU > -500 with the table
    removed, holes filled: area, bounding box, centroid, perimeter), the air inside it (lung
    bases, bowel gas), the bone in the body wall (ribs, costal cartilage) and, for reference, the
    slice's relative height in its volume (not visible to the model). Each set is classified by a
    logistic regression and a depth-3 tree, cross-validated by volume (GroupKFold); MCC of the
    pooled out-of-fold predictions.
``maxima``
    Per seed, over the test slices: where the argmax pixel of each class map (liver, background)
    lies -- inside the liver, in the band of ``band_px`` pixels either side of the body outline,
    inside the body elsewhere, or outside the body (air, table) -- as fractions summing to 1,
    beside the fractions of the image's pixels in each region (chance); the phantom tissue under
    the argmax; the distance from the liver map's argmax to the liver on liver slices (median,
    share within one patch); where the predicted liver pixels (score >= 0.5) lie; the mean liver
    score per region; and the segmentation and classification MCC.
``checkerboard``
    Periodicity of the liver logit map at the patch size: the variance of the map folded onto a
    p × p tile (the least-squares p-periodic component) for p = patch and its neighbours, as a
    ratio to the mean of the neighbours (1 = no periodic structure at the patch size), and the
    fraction of the map's variance the patch-periodic component explains.
``hu_window``
    The phantom's realism check: the best single HU window classifier of liver voxels (MCC),
    pooled over volumes and inside the body (``tests/test_phantom.py``'s ``best_window_mcc``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from cmseg_jax import config_base, predict, sweep, train
from cmseg_jax.data import dataset, phantom, preprocess
from cmseg_jax.data.phantom import tissues
from cmseg_jax.models.heads import LIVER

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Untrained weights: compiling a training step alone takes longer than the rest of the probe on a
# 2-core CPU, and the quick mode checks the pipeline, not the finding.
QUICK_CONFIG = "configs/cam_beta.py:tiny,train.epochs=0"
REGIONS = ("liver", "border", "body", "outside")
BODY_HU = -500.0
BONE_HU = 300.0
WALL_MM = 25.0  # depth of the body wall band whose bone is counted (ribs sit 10-25 mm deep)


# ----------------------------------------------------------------------------------------------
# Slices and their phantom ground truth on the model's grid.


def _to_grid(slices: np.ndarray, size: int) -> np.ndarray:
    """(n, X, Y) canonical integer slices -> (n, size, size) in the model's view, nearest.

    The same display flip and square padding as :func:`cmseg_jax.data.preprocess.images_to_model`.
    """
    view = np.flip(slices, (1, 2)).transpose(0, 2, 1)
    n, h, w = view.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    view = np.pad(view, ((0, 0), (top, side - h - top), (left, side - w - left)))
    if side == size:
        return view
    zoom = (1.0, size / side, size / side)
    return ndimage.zoom(view, zoom, order=0, mode="nearest", grid_mode=True)


def phantom_volume(config, volume_id: int):
    """(hu, labels, tissue, spacing) of phantom volume ``volume_id`` in canonical RAS+ order.

    Regenerated from ``(data.phantom_seed, volume_id)`` exactly as the dataset's files were.
    """
    d = config.data
    rng = np.random.default_rng([d.phantom_seed, int(volume_id)])
    hu, labels, affine, tissue = phantom.generate_volume(
        rng, tuple(d.phantom_shape), return_tissue=True
    )
    hu, labels, tissue = (np.ascontiguousarray(a[::-1, ::-1]) for a in (hu, labels, tissue))
    spacing = tuple(float(s) for s in np.abs(np.diag(affine)[:3]))
    return hu, labels, tissue, spacing


def load_slices(config) -> dict[str, np.ndarray]:
    """Every sampled slice of the config's phantom (all splits), with ground truth.

    Returns:
      {"images" (N, S, S) float32 model input, "masks" (N, S, S) uint8, "labels" (N,),
       "volume_ids" (N,), "z" (N,) relative height in the volume, "split" (N,) str,
       "tissue" (N, S, S) uint8 phantom tissue ids, "pixel_mm" (N,) pixel side at the grid}.
    """
    if config.data.source != "phantom":
        raise ValueError(f"data.source={config.data.source!r}: the probe needs the phantom")
    splits, _ = dataset.load_dataset(config)
    size = int(config.data.image_size)
    out = {k: [] for k in ("images", "masks", "labels", "volume_ids", "z", "split", "tissue")}
    out["pixel_mm"] = []
    for name in dataset.SPLITS:
        s = splits[name]
        for vid in np.unique(s.volume_ids):
            rows = np.nonzero(s.volume_ids == vid)[0]
            z = s.slice_index[rows]
            hu, _, tissue, spacing = phantom_volume(config, vid)
            images = preprocess.images_to_model(
                np.moveaxis(hu[:, :, z], 2, 0), size, config.data.hu_window
            )
            if not np.allclose(images, s.images[rows], atol=1e-3):
                raise RuntimeError(
                    f"phantom volume {vid}: regenerated slices differ from the cache"
                )
            out["images"].append(images)
            out["masks"].append(s.masks[rows])
            out["labels"].append(s.labels[rows])
            out["volume_ids"].append(s.volume_ids[rows])
            out["z"].append((z + 0.5) / hu.shape[2])
            out["split"].append(np.full(len(rows), name))
            out["tissue"].append(_to_grid(np.moveaxis(tissue[:, :, z], 2, 0), size))
            side = max(hu.shape[:2]) * spacing[0] / size
            out["pixel_mm"].append(np.full(len(rows), side))
    return {k: np.concatenate(v) for k, v in out.items()}


def body_masks(tissue: np.ndarray) -> np.ndarray:
    """(N, S, S) bool filled body outline: not air, not the table, holes (lungs, gas) filled."""
    inside = (tissue != tissues.AIR) & (tissue != tissues.TABLE)
    return np.stack([ndimage.binary_fill_holes(m) for m in inside])


def image_body_masks(images: np.ndarray, hu_window) -> np.ndarray:
    """(N, S, S) bool body from the image alone: HU > -500, the table removed, holes filled.

    The table touches the body at coarse grids, so an opening (radius 2 px at 128², scaled with
    the image) cuts its thin plate off before the largest connected component is taken; the body
    is then restored to the unopened mask within that component's reach.
    """
    threshold = preprocess.hu_to_unit(BODY_HU, hu_window)
    disc = ndimage.generate_binary_structure(2, 1)
    radius = max(1, round(2 * images.shape[-1] / 128))
    out = []
    for image in images:
        raw = image > threshold
        opened = ndimage.binary_opening(raw, disc, iterations=radius)
        lab, n = ndimage.label(opened if opened.any() else raw)
        if n == 0:
            out.append(np.zeros_like(raw))
            continue
        big = lab == 1 + int(np.argmax(ndimage.sum(np.ones_like(raw), lab, range(1, n + 1))))
        body = raw & ndimage.binary_dilation(big, disc, iterations=radius)
        out.append(ndimage.binary_fill_holes(body))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# 1. Shortcut classifiers.


def outline_features(body: np.ndarray) -> np.ndarray:
    """(N, 6) area, height, width, centroid row and column, perimeter of filled body masks (px)."""
    feats = []
    for m in body:
        if not m.any():
            feats.append(np.zeros(6))
            continue
        rows, cols = np.nonzero(m)
        edge = m & ~ndimage.binary_erosion(m)
        feats.append(
            [
                m.sum(),
                rows.max() - rows.min() + 1,
                cols.max() - cols.min() + 1,
                rows.mean(),
                cols.mean(),
                edge.sum(),
            ]
        )
    return np.asarray(feats, np.float64)


def internal_air(images: np.ndarray, body: np.ndarray, hu_window) -> np.ndarray:
    """(N, 1) pixels below -500 HU inside the filled body (lung bases, bowel gas)."""
    low = images <= preprocess.hu_to_unit(BODY_HU, hu_window)
    return (low & body).sum(axis=(1, 2))[:, None].astype(np.float64)


def wall_bone(images: np.ndarray, body: np.ndarray, pixel_mm: np.ndarray, hu_window) -> np.ndarray:
    """(N, 1) pixels above 300 HU in the body wall (within 25 mm of the outline): ribs."""
    bone = images > preprocess.hu_to_unit(BONE_HU, hu_window)
    out = []
    for b, m, px in zip(bone, body, pixel_mm, strict=True):
        depth = ndimage.distance_transform_edt(m)
        out.append(np.sum(b & m & (depth <= WALL_MM / px)))
    return np.asarray(out, np.float64)[:, None]


def cv_mcc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Out-of-fold MCC of a logistic regression and a depth-3 tree, folds by volume."""
    folds = GroupKFold(n_splits=min(5, len(np.unique(groups))))
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "tree3": DecisionTreeClassifier(max_depth=3, random_state=0),
    }
    out = {}
    for name, model in models.items():
        pred = cross_val_predict(model, features, labels, groups=groups, cv=folds)
        out[name] = float(matthews_corrcoef(labels, pred))
    return out


def shortcut_report(slices: dict, hu_window) -> dict:
    """The shortcut classifiers' MCC per feature set and the features' z profiles."""
    body = body_masks(slices["tissue"])
    from_image = image_body_masks(slices["images"], hu_window)
    iou = np.sum(body & from_image) / max(1, np.sum(body | from_image))
    outline = outline_features(from_image)
    air = internal_air(slices["images"], from_image, hu_window)
    bone = wall_bone(slices["images"], from_image, slices["pixel_mm"], hu_window)
    labels, groups = slices["labels"], slices["volume_ids"]
    sets = {
        "outline": outline,
        "outline+internal_air": np.hstack([outline, air]),
        "wall_bone": bone,
        "outline+internal_air+wall_bone": np.hstack([outline, air, bone]),
        "z_reference": slices["z"][:, None],
    }
    # Within each volume: liver slices' mean over liver-free slices' mean, per feature.
    ratios = {}
    for name, column in (
        ("area", outline[:, 0]),
        ("internal_air", air[:, 0]),
        ("wall_bone", bone[:, 0]),
    ):
        r = []
        for vid in np.unique(groups):
            sel = groups == vid
            pos, neg = column[sel & (labels == 1)], column[sel & (labels == 0)]
            if len(pos) and len(neg) and neg.mean() > 0:
                r.append(pos.mean() / neg.mean())
        ratios[name] = float(np.median(r)) if r else float("nan")
    # Share of each feature's variance that lies between volumes (the model sees one slice).
    between = {}
    for name, column in (
        ("area", outline[:, 0]),
        ("internal_air", air[:, 0]),
        ("wall_bone", bone[:, 0]),
    ):
        means = np.array([column[groups == v].mean() for v in groups])
        total = column.var()
        between[name] = float(means.var() / total) if total > 0 else float("nan")
    return {
        "slices": int(len(labels)),
        "volumes": int(len(np.unique(groups))),
        "liver_fraction": float(labels.mean()),
        "body_mask_iou_image_vs_phantom": float(iou),
        "mcc": {name: cv_mcc(x, labels, groups) for name, x in sets.items()},
        "median_ratio_liver_over_liverfree_within_volume": ratios,
        "between_volume_variance_share": between,
    }


# ----------------------------------------------------------------------------------------------
# 2. Where the maxima fall; 3. the checkerboard.


def region_map(masks: np.ndarray, body: np.ndarray, band_px: int) -> np.ndarray:
    """(N, S, S) int region index into :data:`REGIONS`; liver wins over the border band."""
    out = np.empty(masks.shape, np.int8)
    for i, (liver, b) in enumerate(zip(masks.astype(bool), body, strict=True)):
        inside = ndimage.distance_transform_edt(b)
        outside = ndimage.distance_transform_edt(~b)
        border = (b & (inside <= band_px)) | (~b & (outside <= band_px))
        r = np.where(b, 2, 3)
        r = np.where(border, 1, r)
        out[i] = np.where(liver, 0, r)
    return out


def argmax_fractions(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(len(REGIONS),) fraction of images whose map argmax lies in each region; maps (N, S, S)."""
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    hit = regions.reshape(len(maps), -1)[np.arange(len(maps)), flat]
    return np.bincount(hit, minlength=len(REGIONS)) / max(1, len(maps))


_TISSUES = (
    "AIR SKIN FAT_SUBCUT FAT_VISC MUSCLE BONE_CORTEX BONE_MARROW DISC CSF RIB CARTILAGE LIVER "
    "LIVER_VESSEL SPLEEN KIDNEY_CORTEX KIDNEY_MEDULLA RENAL_SINUS PANCREAS BLOOD MYOCARDIUM LUNG "
    "GALLBLADDER BOWEL_WALL BOWEL_FLUID GAS FECES STOMACH_CONTENT TABLE"
).split()


def _tissue_names() -> dict[int, str]:
    names = {getattr(tissues, name): name.lower() for name in _TISSUES}
    names.update({tissues.TUMOUR + i: "tumour" for i in range(2 * tissues.MAX_TUMOURS)})
    return names


def argmax_tissues(maps: np.ndarray, tissue: np.ndarray) -> dict[str, float]:
    """Fraction of images whose map argmax lies on each phantom tissue (largest first)."""
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    hit = tissue.reshape(len(maps), -1)[np.arange(len(maps)), flat]
    names = _tissue_names()
    counts: dict[str, int] = {}
    for t in hit:
        name = names.get(int(t), str(int(t)))
        counts[name] = counts.get(name, 0) + 1
    return {k: v / len(maps) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def argmax_distance(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) distance in pixels from each map's (N, S, S) argmax to the nearest liver pixel.

    0 inside the liver; images without liver give inf.
    """
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    out = np.full(len(maps), np.inf)
    for i, (idx, liver) in enumerate(zip(flat, masks.astype(bool), strict=True)):
        if liver.any():
            out[i] = ndimage.distance_transform_edt(~liver).ravel()[idx]
    return out


def periodic_energy(maps: np.ndarray, period: int) -> np.ndarray:
    """(N,) variance of each map (N, S, S) folded onto a period × period tile.

    The folded tile is the least-squares ``period``-periodic fit of the map; its variance is the
    power at the fundamental and all harmonics of 1 / period (both axes together).
    """
    n, h, w = maps.shape
    hp, wp = -(-h // period) * period, -(-w // period) * period
    x = maps - maps.mean(axis=(1, 2), keepdims=True)
    pad = np.full((n, hp, wp), np.nan)
    pad[:, :h, :w] = x
    tile = np.nanmean(pad.reshape(n, hp // period, period, wp // period, period), axis=(1, 3))
    return np.var(tile, axis=(1, 2))


def checkerboard(maps: np.ndarray, patch: int) -> dict[str, float]:
    """Patch-periodic energy of maps (N, S, S) relative to the neighbouring periods."""
    e = {p: periodic_energy(maps, p) for p in (patch - 2, patch - 1, patch, patch + 1, patch + 2)}
    near = np.mean([e[p] for p in e if p != patch], axis=0)
    var = maps.var(axis=(1, 2))
    return {
        "ratio_to_neighbour_periods_median": float(np.median(e[patch] / np.maximum(near, 1e-30))),
        "variance_share_median": float(np.median(e[patch] / np.maximum(var, 1e-30))),
        "neighbour_variance_share_median": float(np.median(near / np.maximum(var, 1e-30))),
    }


def map_stats(maps: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """How peaked each class map (N, S, S, K) is and how much of the image is called liver.

    ``*_peak_over_median``: mean over images of (max - median) of the map, in logits: how far
    the pooled maximum stands above the bulk of the map. ``*_peak_width``: mean share of the
    image within 1 logit of the map's maximum. ``pooled_margin``: mean of pooled liver minus
    pooled background (the classifier's logit).
    """
    out = {"predicted_liver_pixel_share": float(pred.mean()) if pred.size else float("nan")}
    for name, k in (("liver", LIVER), ("background", 1 - LIVER)):
        m = maps[..., k].reshape(len(maps), -1)
        peak = m.max(axis=1)
        out[f"{name}_peak_over_median"] = float(np.mean(peak - np.median(m, axis=1)))
        out[f"{name}_peak_width"] = float(np.mean(m >= peak[:, None] - 1.0))
    pooled = maps.max(axis=(1, 2))
    out["pooled_margin"] = float(np.mean(pooled[:, LIVER] - pooled[:, 1 - LIVER]))
    return out


def _mcc(tp, fp, fn, tn) -> float:
    den = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    return float((float(tp) * tn - float(fp) * fn) / np.sqrt(den)) if den > 0 else 0.0


def _confusion(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    pred, target = pred.astype(bool), target.astype(bool)
    return (
        int(np.sum(pred & target)),
        int(np.sum(pred & ~target)),
        int(np.sum(~pred & target)),
        int(np.sum(~pred & ~target)),
    )


def seed_outputs(sweep_, state, images: np.ndarray, smoothing: bool = True):
    """(maps (N, S, S, K), pooled (N, K): the method's pooling) of one seed on float images
    (N, S, S)."""
    model = sweep_.model if smoothing else train.make_model(sweep_.config, smoothing=False)
    apply = jax.jit(lambda s, x: train.apply_model(s, x, model=model, method=sweep_.method))
    maps, pooled = [], []
    for i in range(0, len(images), 32):
        out = apply(state, jnp.asarray(images[i : i + 32]))
        maps.append(np.asarray(out["maps"], np.float32))
        pooled.append(np.asarray(out["pooled"], np.float32))
    return np.concatenate(maps), np.concatenate(pooled)


def maxima_report(sweep_, slices: dict, band_px: int, split: str = "test") -> dict:
    """Per seed: argmax regions and tissues of both maps, masks, scores, MCCs, checkerboard."""
    sel = slices["split"] == split
    images, masks = slices["images"][sel], slices["masks"][sel]
    labels, tissue = slices["labels"][sel], slices["tissue"][sel]
    body = body_masks(tissue)
    regions = region_map(masks, body, band_px)
    area = np.bincount(regions.ravel(), minlength=len(REGIONS)) / regions.size
    patch = int(sweep_.config.model.convmixerseg.patch_size)
    per_seed = []
    for row, seed in enumerate(sweep_.seeds):
        state = jax.tree_util.tree_map(lambda x, r=row: x[r], sweep_.states)
        maps, pooled = seed_outputs(sweep_, state, images)
        logit = maps[..., LIVER] - maps[..., 1 - LIVER]
        scores = jax.nn.softmax(jnp.asarray(maps), axis=-1)[..., LIVER]
        scores = np.asarray(scores)
        pred = scores >= 0.5
        image_pred = np.asarray(jax.nn.softmax(jnp.asarray(pooled), axis=-1)[:, LIVER]) >= 0.5
        entry = {"seed": int(seed)}
        for which, subset in (("liver_slices", labels == 1), ("liverfree_slices", labels == 0)):
            entry[which] = {
                f"{name}_map_argmax": dict(
                    zip(
                        REGIONS,
                        argmax_fractions(maps[subset][..., k], regions[subset]).tolist(),
                        strict=True,
                    )
                )
                for name, k in (("liver", LIVER), ("background", 1 - LIVER))
            }
            entry[which]["liver_map_argmax_tissue"] = argmax_tissues(
                maps[subset][..., LIVER], tissue[subset]
            )
            entry[which]["background_map_argmax_tissue"] = argmax_tissues(
                maps[subset][..., 1 - LIVER], tissue[subset]
            )
            entry[which]["stats"] = map_stats(maps[subset], pred[subset])
        dist = argmax_distance(maps[labels == 1][..., LIVER], masks[labels == 1])
        entry["liver_argmax_to_liver_px"] = {
            "median": float(np.median(dist)) if len(dist) else float("nan"),
            "within_patch": float(np.mean(dist <= patch)) if len(dist) else float("nan"),
        }
        counts = np.bincount(regions[pred], minlength=len(REGIONS))
        entry["predicted_liver_pixels"] = dict(
            zip(REGIONS, (counts / max(1, counts.sum())).tolist(), strict=True)
        )
        entry["predicted_liver_pixel_share"] = float(pred.mean())
        entry["mean_liver_score"] = {
            name: float(scores[regions == i].mean()) if np.any(regions == i) else float("nan")
            for i, name in enumerate(REGIONS)
        }
        entry["test_mcc"] = _mcc(*_confusion(pred, masks))
        entry["test_cls_mcc"] = _mcc(*_confusion(image_pred, labels))
        entry["checkerboard_liver_logit"] = checkerboard(logit, patch)
        if sweep_.config.model.smoothing:
            plain, _ = seed_outputs(sweep_, state, images, smoothing=False)
            entry["checkerboard_liver_logit_unsmoothed"] = checkerboard(
                plain[..., LIVER] - plain[..., 1 - LIVER], patch
            )
        per_seed.append(entry)
    return {
        "split": split,
        "band_px": band_px,
        "images": int(len(images)),
        "region_area_share": dict(zip(REGIONS, area.tolist(), strict=True)),
        "seeds": per_seed,
    }


# ----------------------------------------------------------------------------------------------
# 4. The HU-window realism check.


def _best_window_mcc():
    """The phantom tests' exhaustive window search (``tests/test_phantom.py``), reused as is."""
    spec = importlib.util.spec_from_file_location(
        "phantom_tests", ROOT / "tests" / "test_phantom.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.best_window_mcc


def hu_window_report(config, volumes: int) -> dict:
    """Best single-window MCC of liver voxels over the first ``volumes`` phantom volumes."""
    best_window_mcc = _best_window_mcc()
    hus, livers, inside = [], [], []
    for vid in range(min(volumes, int(config.data.phantom_volumes))):
        hu, labels, tissue, _ = phantom_volume(config, vid)
        hus.append(hu)
        livers.append(labels > 0)
        inside.append(tissue != tissues.AIR)
    mcc, lo, hi = best_window_mcc(hus, livers)
    mcc_body, lo_b, hi_b = best_window_mcc(
        [h[m] for h, m in zip(hus, inside, strict=True)],
        [lv[m] for lv, m in zip(livers, inside, strict=True)],
    )
    per_volume = [best_window_mcc([h], [lv])[0] for h, lv in zip(hus, livers, strict=True)]
    return {
        "volumes": len(hus),
        "shape": list(config.data.phantom_shape),
        "pooled": {"mcc": mcc, "window_hu": [lo, hi]},
        "inside_body": {"mcc": mcc_body, "window_hu": [lo_b, hi_b]},
        "per_volume_range": [float(min(per_volume)), float(max(per_volume))],
    }


# ----------------------------------------------------------------------------------------------


def _holds_checkpoint(workdir: pathlib.Path) -> bool:
    return (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())


def quick_sweep(config, seeds) -> predict.Sweep:
    """``seeds`` of ``config`` trained in memory (no evaluation, no checkpoints) as a Sweep.

    The same per-seed training function as the sweep's (:func:`cmseg_jax.train.make_train`), run
    one seed after another; for the quick mode, where the sweep's evaluation passes and
    checkpoints would cost more than the training.
    """
    config = config_base.resolve(config)
    splits, _ = dataset.load_dataset(config)
    trainer = train.make_train(config, num_train=len(splits["train"].labels))
    split = jax.tree_util.tree_map(jnp.asarray, dataset.device_layout(splits["train"]))
    weights = jnp.asarray(dataset.class_weights(splits["train"].masks, config.model.num_classes))
    steps = trainer.steps_per_epoch
    epoch_fn = jax.jit(
        lambda state, split, weights, epoch: trainer.train_steps(
            state, split, weights, epoch, 0, length=steps
        )
    )
    states = []
    for seed in seeds:
        state = trainer.init(train.seed_key(config.root_seed, seed))
        for epoch in range(1, config.train.epochs + 1):
            state, _ = epoch_fn(state, split, weights, jnp.int32(epoch))
        states.append(state)
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states)
    return predict.Sweep(
        workdir=None,
        config=config,
        seeds=tuple(seeds),
        epoch=int(config.train.epochs),
        model=trainer.model,
        method=trainer.method,
        states=stacked,
        diverged=np.asarray(stacked.diverged, bool),
    )


def probe(config, workdir, num_seeds: int, window_volumes: int) -> dict:
    """Trains the sweep in ``workdir`` if needed, then runs every part of the probe.

    With ``workdir`` None the seeds are trained in memory (:func:`quick_sweep`).
    """
    t0 = time.time()
    seeds = list(range(num_seeds))
    if workdir is None:
        loaded = quick_sweep(config, seeds)
    else:
        workdir = pathlib.Path(workdir)
        if not _holds_checkpoint(workdir):
            sweep.run(config, workdir, seeds, progress=False)
        loaded = predict.load_sweep(workdir)
    trained_s = time.time() - t0
    config = loaded.config
    size = int(config.data.image_size)
    slices = load_slices(config)
    band_px = max(1, round(2 * size / 128))
    sigma, taps = config_base.smoothing(config)
    return {
        "config": {
            "name": config.name,
            "image_size": size,
            "hidden": int(config.model.convmixerseg.hidden),
            "depth": int(config.model.convmixerseg.depth),
            "transition": int(config.model.convmixerseg.transition),
            "patch_size": int(config.model.convmixerseg.patch_size),
            "kernel_size": int(config.model.convmixerseg.kernel_size),
            "smoothing": bool(config.model.smoothing),
            "smoothing_sigma": sigma,
            "smoothing_size": taps,
            "epochs": int(config.train.epochs),
            "phantom_shape": list(config.data.phantom_shape),
            "phantom_volumes": int(config.data.phantom_volumes),
        },
        "workdir": None if workdir is None else str(workdir),
        "seeds": list(loaded.seeds),
        "epoch": loaded.epoch,
        "train_seconds": trained_s,
        "shortcut": shortcut_report(slices, config.data.hu_window),
        "maxima": maxima_report(loaded, slices, band_px),
        "hu_window": hu_window_report(config, window_volumes),
        "device": f"{jax.devices()[0].platform} ({jax.device_count()} device(s))",
        "seconds": time.time() - t0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/cam_beta.py:cpu,train.epochs=15")
    parser.add_argument("--workdir", help="the sweep to probe (trained there if missing)")
    parser.add_argument("--num_seeds", type=int, default=2)
    parser.add_argument("--window_volumes", type=int, default=8)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_CONFIG}, one untrained seed in memory"
    )
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    if not args.quick and not args.workdir:
        parser.error("--workdir is required (or --quick)")
    spec = QUICK_CONFIG if args.quick else args.config
    num_seeds = 1 if args.quick else args.num_seeds
    config = config_base.load_config_file(spec, ROOT)
    config.eval.without_smoothing = False  # the probe looks at the maps itself
    workdir = None if args.quick else args.workdir
    result = probe(config, workdir, num_seeds, 2 if args.quick else args.window_volumes)
    result["config_spec"] = spec
    text = json.dumps(result, indent=1)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
