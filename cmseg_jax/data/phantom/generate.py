"""One phantom CT volume: the anatomy painted in a fixed order, rendered, stored in L-P-S order."""

from __future__ import annotations

import numpy as np

from cmseg_jax.data.phantom import body, organs, tissues

MIN_SIDE = 8  # the smallest volume side generate_volume accepts


def generate_volume(
    rng: np.random.Generator, shape=(512, 512, 64), *, return_tissue: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generates one phantom CT volume.

    Args:
      rng: the volume's generator; the output is a deterministic function of its state and shape.
      shape: (X, Y, Z) voxels; X, Y in-plane, Z axial slices.
      return_tissue: also return the internal (X, Y, Z) uint8 tissue-id map (for diagnostics).

    Returns:
      (hu, labels, affine): hu (X, Y, Z) int16 Hounsfield units; labels (X, Y, Z) uint8 with
      0 background, 1 liver, 2 tumour; affine (4, 4) float64 voxel -> RAS+ mm. Arrays are stored
      in L-P-S order (see :mod:`cmseg_jax.data.phantom`). With return_tissue, a fourth array
      follows.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < MIN_SIDE:
        raise ValueError(f"shape must be 3 sizes >= {MIN_SIDE}, got {shape}")
    # The order of the calls is the order of the draws from rng: changing it changes every volume.
    grid, canvas, geo = body.torso(rng, shape)
    z_extent = geo["z_extent"]
    geo["liver_top"] = rng.uniform(0.86, 0.96) * z_extent
    geo["liver_bottom"] = geo["liver_top"] - rng.uniform(0.42, 0.58) * z_extent

    dome = body.domes(grid, rng, geo)
    body.table(canvas, rng, geo)
    sp = body.spine_params(rng, geo, grid)
    v_vb, rv_vb = sp["v_vb"], sp["rv"]
    organs.bowel(canvas, rng, geo, geo["liver_bottom"])
    organs.early_organs(canvas, rng, geo, v_vb, rv_vb)
    liver_box, hilum = organs.liver(canvas, rng, geo, dome)
    ivc_top = organs.late_organs(canvas, rng, geo, v_vb, rv_vb, hilum)
    n_tumours = organs.liver_interior(canvas, rng, geo, liver_box, hilum, ivc_top)
    body.thorax(canvas, rng, geo, dome, v_vb)
    body.spine(canvas, sp, geo)
    body.ribs(canvas, rng, geo, w_floor=geo["liver_bottom"] + rng.uniform(-0.1, 0.15) * z_extent)

    tissue = canvas.tissue
    spacing = geo["spacing"]
    hu_int, labels = tissues.render(rng, tissue, spacing, n_tumours)

    sx, sy, sz = spacing
    canonical = np.diag([sx, sy, sz, 1.0])
    canonical[:3, 3] = (-(shape[0] - 1) / 2 * sx, -(shape[1] - 1) / 2 * sy, -rng.uniform(100, 600))
    # Stored index (i', j', k) holds canonical voxel (X-1-i', Y-1-j', k): an L-P-S array.
    flip = np.array(
        [[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64
    )
    affine = canonical @ flip
    out = (
        np.ascontiguousarray(hu_int[::-1, ::-1]),
        np.ascontiguousarray(labels[::-1, ::-1]),
        affine,
    )
    if return_tissue:
        out = out + (np.ascontiguousarray(tissue[::-1, ::-1]),)
    return out
