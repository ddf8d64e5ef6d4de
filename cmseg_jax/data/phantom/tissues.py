"""Tissues of the phantom and their CT intensities.

The anatomy is painted as a uint8 map of tissue ids; :func:`render` turns it into Hounsfield units
per volume: a mean per tissue (plain value plus contrast enhancement plus a per-volume jitter,
sometimes steatosis or positive oral contrast), a low-frequency texture (6-12 mm) and a bias field
(80 mm), the scanner's partial-volume blur and Gaussian noise (std 10-18 HU).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Tissue ids of the internal tissue map (uint8). Hounsfield units are looked up per volume.
(
    AIR,
    SKIN,
    FAT_SUBCUT,
    FAT_VISC,
    MUSCLE,
    BONE_CORTEX,
    BONE_MARROW,
    DISC,
    CSF,
    RIB,
    CARTILAGE,
    LIVER,
    LIVER_VESSEL,
    SPLEEN,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    RENAL_SINUS,
    PANCREAS,
    BLOOD,
    MYOCARDIUM,
    LUNG,
    GALLBLADDER,
    BOWEL_WALL,
    BOWEL_FLUID,
    GAS,
    FECES,
    STOMACH_CONTENT,
    TABLE,
) = range(28)
# Tumour k (0 <= k < MAX_TUMOURS) uses ids TUMOUR + 2k (viable rim) and TUMOUR + 2k + 1 (core).
TUMOUR = 100
MAX_TUMOURS = 8

# (plain HU, extra HU at full portal-venous enhancement, texture amplitude, per-volume jitter).
TISSUE_HU = {
    AIR: (-1000.0, 0.0, 0.0, 0.0),
    SKIN: (35.0, 10.0, 4.0, 5.0),
    FAT_SUBCUT: (-105.0, 0.0, 6.0, 6.0),
    FAT_VISC: (-95.0, 5.0, 12.0, 8.0),
    MUSCLE: (48.0, 8.0, 4.0, 5.0),
    BONE_CORTEX: (850.0, 0.0, 120.0, 120.0),
    BONE_MARROW: (220.0, 15.0, 40.0, 50.0),
    DISC: (85.0, 5.0, 8.0, 8.0),
    CSF: (12.0, 0.0, 4.0, 4.0),
    RIB: (450.0, 0.0, 80.0, 100.0),
    CARTILAGE: (140.0, 0.0, 30.0, 30.0),
    LIVER: (58.0, 65.0, 7.0, 6.0),
    LIVER_VESSEL: (42.0, 125.0, 6.0, 5.0),
    SPLEEN: (48.0, 62.0, 6.0, 5.0),
    KIDNEY_CORTEX: (35.0, 140.0, 8.0, 5.0),
    KIDNEY_MEDULLA: (33.0, 95.0, 8.0, 5.0),
    RENAL_SINUS: (-70.0, 0.0, 15.0, 10.0),
    PANCREAS: (42.0, 55.0, 10.0, 6.0),
    BLOOD: (42.0, 130.0, 4.0, 5.0),
    MYOCARDIUM: (45.0, 60.0, 6.0, 5.0),
    LUNG: (-860.0, 0.0, 40.0, 25.0),
    GALLBLADDER: (12.0, 0.0, 4.0, 8.0),
    BOWEL_WALL: (40.0, 40.0, 10.0, 6.0),
    BOWEL_FLUID: (15.0, 0.0, 8.0, 8.0),
    GAS: (-1000.0, 0.0, 10.0, 0.0),
    FECES: (-40.0, 0.0, 80.0, 20.0),
    STOMACH_CONTENT: (25.0, 0.0, 30.0, 15.0),
    TABLE: (180.0, 0.0, 20.0, 40.0),
}

# Tissues a solid organ may displace; bone, lung and air are painted later or never displaced.
SOFT = (FAT_VISC, BOWEL_WALL, BOWEL_FLUID, GAS, FECES, STOMACH_CONTENT, PANCREAS, SPLEEN, MUSCLE)


def blur3(a: np.ndarray, axis: int, side: float) -> np.ndarray:
    """Three-tap blur (side, 1 - 2 side, side) along axis with edge replication.

    Shifted-slice arithmetic; several times faster than ndimage.correlate1d along the slow axis.
    """
    a = np.moveaxis(a, axis, 0)
    s = np.float32(side)
    out = a * np.float32(1 - 2 * side)
    tmp = np.multiply(a[:-1], s)
    out[1:] += tmp
    np.multiply(a[1:], s, out=tmp)
    out[:-1] += tmp
    out[0] += s * a[0]
    out[-1] += s * a[-1]
    return np.moveaxis(out, 0, axis)


def smooth_field(rng, shape, spacing, corr_mm) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~corr_mm, (X, Y, Z) float32.

    Coarse white noise is interpolated with separable Gaussian weights (three small matmuls), each
    row normalised to unit L2 norm so every voxel has unit variance.
    """
    mats = []
    for n, d in zip(shape, spacing, strict=True):
        g = int(np.ceil(n * d / corr_mm)) + 4
        nodes = (np.arange(g, dtype=np.float64) - 2.0) * corr_mm
        pos = (np.arange(n) + 0.5) * d
        wts = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / (0.7 * corr_mm)) ** 2)
        wts /= np.sqrt((wts**2).sum(axis=1, keepdims=True))
        mats.append(wts.astype(np.float32))
    wx, wy, wz = mats
    coarse = rng.standard_normal((wx.shape[1], wy.shape[1], wz.shape[1]), dtype=np.float32)
    f = coarse @ wz.T  # (gx, gy, Z)
    f = wy @ f  # (gx, Y, Z)
    return (wx @ f.reshape(f.shape[0], -1)).reshape(shape)


def tissue_hu(rng, n_tumours):
    """Per-volume lookup tables (256,) of mean HU, texture amplitude, bias amplitude and label."""
    enh = rng.uniform(0.0, 0.1) if rng.random() < 0.08 else rng.uniform(0.75, 1.0)
    mean = np.zeros(256, np.float32)
    tex = np.zeros(256, np.float32)
    for tid, (plain, boost, tamp, jitter) in TISSUE_HU.items():
        mean[tid] = plain + enh * boost + rng.normal(0, jitter)
        tex[tid] = tamp * rng.uniform(0.7, 1.3)
    if rng.random() < 0.1:  # steatosis: the liver drops below the spleen and muscle
        mean[LIVER] = rng.uniform(20, 45) + enh * TISSUE_HU[LIVER][1]
    if rng.random() < 0.15:  # positive oral contrast in the bowel
        mean[BOWEL_FLUID] = rng.uniform(150, 350)
    tex[LIVER] = rng.uniform(3, 8)
    mean[GAS] = min(mean[GAS], -990.0)
    liver = mean[LIVER]
    for k in range(n_tumours):
        rim = liver - rng.uniform(15, 55)
        mean[TUMOUR + 2 * k] = rim
        mean[TUMOUR + 2 * k + 1] = min(rim, rng.uniform(5, 30))
        tex[TUMOUR + 2 * k] = rng.uniform(5, 12)
        tex[TUMOUR + 2 * k + 1] = 5.0
    bias = np.where(mean > -500, 1.0, 0.3).astype(np.float32)
    bias[AIR] = 0.0
    label = np.zeros(256, np.uint8)
    label[[LIVER, LIVER_VESSEL]] = 1
    label[TUMOUR : TUMOUR + 2 * MAX_TUMOURS] = 2
    return mean, tex, bias, label


def render(rng, tissue: np.ndarray, spacing, n_tumours: int) -> tuple[np.ndarray, np.ndarray]:
    """Hounsfield units and labels of a finished tissue map.

    Args:
      rng: the volume's generator (drawn from after the anatomy).
      tissue: (X, Y, Z) uint8 tissue ids.
      spacing: (sx, sy, sz) voxel sizes in mm.
      n_tumours: tumours painted (their ids get intensities).

    Returns:
      (hu, labels): (X, Y, Z) int16 HU clipped to [-1024, 3071]; (X, Y, Z) uint8 labels with
      0 background, 1 liver, 2 tumour.
    """
    shape = tissue.shape
    mean, tex_amp, bias_amp, label_lut = tissue_hu(rng, n_tumours)
    hu = mean[tissue]
    hu += tex_amp[tissue] * smooth_field(rng, shape, spacing, rng.uniform(6, 12))
    hu += (bias_amp[tissue] * rng.uniform(3, 8)) * smooth_field(rng, shape, spacing, 80.0)
    # Partial volume: the scanner's point spread mixes neighbouring tissues at every boundary.
    hu = blur3(blur3(hu, 0, 0.25), 1, 0.25)
    hu = ndimage.correlate1d(hu, (0.15, 0.7, 0.15), axis=2, mode="nearest")
    hu += rng.uniform(10, 18) * rng.standard_normal(shape, dtype=np.float32)
    hu_int = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return hu_int, label_lut[tissue]
