"""Procedural abdominal CT phantom, written as LiTS-format NIfTI pairs.

The phantom stands in for LiTS when the real data are not available (quickstart, tests, CI). It is
built to be at least as hard as real CT for an intensity threshold: the liver shares its Hounsfield
range with muscle, spleen, pancreas, collapsed bowel, vessels, kidneys and the heart; its intensity
moves with a per-volume contrast phase (and sometimes steatosis); hypodense tumours and enhancing
vessels inside it are labelled liver; partial volume and noise blur every boundary. The best single
HU window reaches a voxel MCC of about 0.5 pooled over volumes and 0.35-0.7 within one volume
(real abdominal CT: 0.62-0.67), so a segmentation model has to use shape and context.

Anatomy (patient supine; internally ``u`` points to the patient's right, ``v`` anterior, ``w``
superior, in mm from the body centre and the bottom slice):

* air (-1000) around the body and a curved scanner table under it;
* skin, subcutaneous fat (-105), abdominal wall muscle (~50), visceral fat (-95);
* spine (vertebral bodies with cortex, marrow and discs, canal, posterior elements), paraspinal
  muscles, psoas muscles growing towards the bottom, oblique ribs and costal cartilage in the upper
  part of the volume;
* lung bases, mediastinum and heart above a two-domed diaphragm near the top;
* liver (label 1) under the right dome: smoothly merged right, left and caudate lobes with a random
  low-frequency deformation, spanning 42-58 % of the volume's z extent from near its top, so about
  half of the axial slices contain liver; intrahepatic vessels (label 1) and 1-8 hypodense tumours,
  some with a necrotic core (label 2);
* gallbladder, IVC, aorta with its bifurcation, extrahepatic portal vein, spleen, stomach with a gas
  cap, pancreas, kidneys (cortex, medulla, sinus fat; right lower than left, mostly below the
  liver), colon and small-bowel loops holding fluid, gas, faeces or collapsed.

Each volume draws its body size and shape, fat, organ sizes and positions, contrast phase
(``enhancement`` in [0, 1]: 0 = unenhanced, 1 = portal venous), per-tissue HU offsets, Gaussian
noise (std 10-18 HU), a low-frequency texture (6-12 mm) and a bias field (80 mm) from its own
generator; a dataset's volume N depends only on ``(seed, N)`` and the shape.

Geometry and orientation: arrays are *stored* in L-P-S order (axis 0 runs to the patient's left,
axis 1 to the posterior, axis 2 to superior; the affine is ``diag(-sx, -sy, sz)`` plus an offset),
as many LiTS volumes are, so :func:`cmseg_jax.data.lits.load_case` has to canonicalise to RAS+ (flip
axes 0 and 1). Pixels are square with spacing ``fov / X`` for a field of view of 300-500 mm fitted
to the body (0.6-1.0 mm at 512 pixels; proportionally coarser at small test shapes); the slice
spacing is the z extent (230-320 mm) over Z (3.6-5 mm at 64 slices).

Speed: everything is vectorised numpy; organs are implicit functions evaluated on their bounding
boxes only. One 512 x 512 x 64 volume takes 1-3 s on one CPU core, one 128 x 128 x 48 volume ~0.2 s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import uuid

import nibabel as nib
import numpy as np
from scipy import ndimage

from cmseg_jax import io_utils

logger = logging.getLogger(__name__)

# Bump whenever the generator's output changes, so cached datasets are regenerated.
GENERATOR_VERSION = 2  # 2: files carry PHANTOM_DESCRIP
# NIfTI header ``descrip`` of every phantom file, so data built from it stay labelled synthetic.
PHANTOM_DESCRIP = "cmseg_jax synthetic CT phantom"

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
_TISSUE_HU = {
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
_SOFT = (FAT_VISC, BOWEL_WALL, BOWEL_FLUID, GAS, FECES, STOMACH_CONTENT, PANCREAS, SPLEEN, MUSCLE)


# ----------------------------------------------------------------------------------------------
# Geometry helpers. All coordinates are float32 mm; a box is a sub-grid of the volume whose
# coordinate vectors are shaped to broadcast to (nx, ny, nz), so an implicit function costs only
# as much as its bounding box.


@dataclasses.dataclass(frozen=True)
class _Box:
    sl: tuple[slice, slice, slice]
    u: np.ndarray  # (nx, 1, 1)
    v: np.ndarray  # (1, ny, 1)
    w: np.ndarray  # (1, 1, nz)

    @property
    def empty(self) -> bool:
        return min(self.u.size, self.v.size, self.w.size) == 0


@dataclasses.dataclass
class _Grid:
    u: np.ndarray  # (X,) mm, patient's right positive, 0 at the body centre
    v: np.ndarray  # (Y,) mm, anterior positive, 0 at the body centre
    w: np.ndarray  # (Z,) mm above the bottom edge of the volume

    def box(self, lo, hi) -> _Box:
        """Sub-grid of voxel centres with lo <= (u, v, w) <= hi (possibly empty)."""
        sl = []
        for axis, a, b in zip((self.u, self.v, self.w), lo, hi, strict=True):
            i0 = int(np.searchsorted(axis, a, side="left"))
            i1 = int(np.searchsorted(axis, b, side="right"))
            sl.append(slice(i0, max(i0, i1)))
        su, sv, sw = sl
        return _Box(
            sl=(su, sv, sw),
            u=self.u[su][:, None, None],
            v=self.v[sv][None, :, None],
            w=self.w[sw][None, None, :],
        )


def _rot(du, dv, angle):
    """Rotate in-plane offsets by -angle, i.e. into the frame of an organ rotated by +angle."""
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * du + s * dv, -s * du + c * dv


def _wobble(rng, box: _Box, amp: float, wavelength: float, terms: int = 3):
    """Smooth random perturbation (products of cosines, separable so it stays cheap)."""
    out = np.float32(0.0)
    for _ in range(terms):
        k = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, size=3))
        ph = rng.uniform(0, 2 * np.pi, size=3)
        term = (
            np.cos(k[0] * box.u + ph[0])
            * np.cos(k[1] * box.v + ph[1])
            * np.cos(k[2] * box.w + ph[2])
        )
        out = out + np.float32(amp / np.sqrt(terms)) * term.astype(np.float32)
    return out


class _Canvas:
    """Tissue map under construction plus the body geometry every organ is clipped to."""

    def __init__(self, grid: _Grid, tissue: np.ndarray, cavity: np.ndarray):
        self.grid = grid
        self.tissue = tissue  # (X, Y, Z) uint8, canonical RAS+ order
        self.cavity = cavity  # (X, Y, Z) bool, inside the abdominal/thoracic wall

    def paint(self, box: _Box, mask, value, *, over=None, in_cavity=True):
        """Set tissue[box][mask] = value (scalar or array broadcastable to the box).

        Args:
          box: region; ``mask`` and ``value`` broadcast to its shape.
          mask: bool array.
          value: tissue id(s).
          over: if given, only voxels whose current tissue is in this tuple are painted.
          in_cavity: clip to the body cavity.
        """
        if box.empty:
            return
        sub = self.tissue[box.sl]
        mask = np.broadcast_to(mask, sub.shape)
        if in_cavity:
            mask = mask & self.cavity[box.sl]
        if over is not None:
            allowed = np.zeros(256, bool)
            allowed[list(over)] = True
            mask = mask & allowed[sub]
        if np.ndim(value) == 0:
            sub[mask] = value
        else:
            sub[mask] = np.broadcast_to(value, sub.shape)[mask]


def _ellipsoid(grid: _Grid, center, radii, angle=0.0, pad=1.2):
    """Box around an ellipsoid and its normalised radius d (< 1 inside) on that box."""
    cu, cv, cw = center
    ru, rv, rw = radii
    rxy = max(ru, rv) * pad
    box = grid.box((cu - rxy, cv - rxy, cw - rw * pad), (cu + rxy, cv + rxy, cw + rw * pad))
    du, dv = _rot(box.u - cu, box.v - cv, angle)
    d2 = (du / ru) ** 2 + (dv / rv) ** 2 + ((box.w - cw) / rw) ** 2
    return box, np.sqrt(d2, dtype=np.float32)


def _tube(grid: _Grid, a, b, r0, r1):
    """Box around a tapered segment a -> b and a bool mask of the voxels within its radius."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    r = max(r0, r1)
    box = grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
    d = b - a
    dd = float(d @ d) + 1e-6
    pu, pv, pw = box.u - a[0], box.v - a[1], box.w - a[2]
    s = np.clip((pu * d[0] + pv * d[1] + pw * d[2]) / dd, 0.0, 1.0)
    dist2 = (pu - s * d[0]) ** 2 + (pv - s * d[1]) ** 2 + (pw - s * d[2]) ** 2
    rad = r0 + (r1 - r0) * s
    return box, dist2 < rad * rad


def _blur3(a: np.ndarray, axis: int, side: float) -> np.ndarray:
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


def _smooth_field(rng, shape, spacing, corr_mm) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# Anatomy.


def _body(rng, shape):
    """Draws the body and the field of view; returns (grid, canvas, geometry dict)."""
    nx, ny, nz = shape
    a = rng.uniform(130, 185)  # half width, mm
    b_ant = a * rng.uniform(0.62, 0.8)
    b_post = b_ant * rng.uniform(0.9, 1.05)
    z_extent = rng.uniform(230, 320)
    g1, g2 = rng.uniform(-0.08, 0.08), rng.uniform(0.0, 0.04)
    zf, zph = rng.uniform(0.5, 1.2), rng.uniform(0, 2 * np.pi)
    smax = 1 + abs(g1) / 2 + g2
    harm = [(k, rng.uniform(-0.03, 0.03), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
    hmax = 1 + sum(abs(c) for _, c, _ in harm)

    # Square pixels; the field of view is fitted to the body's width (its edge may clip the body
    # slightly, as in real scans) and holds the table under it.
    fov = max(2 * a * rng.uniform(1.04, 1.18), (b_ant + b_post) * smax * hmax + 50)
    fov = min(max(fov, 300.0), 500.0)
    sx = sy = fov / max(nx, ny)
    sz = z_extent / nz
    # Body centre in field-of-view coordinates: posterior surface ~25 mm above the bottom edge.
    cu = rng.uniform(-10, 10)
    cv = -fov / 2 + 0.04 * fov + 18 + b_post * smax * hmax
    cv = min(cv, fov / 2 - b_ant * smax * hmax - 5)
    u = ((np.arange(nx) - (nx - 1) / 2) * sx - cu).astype(np.float32)
    v = ((np.arange(ny) - (ny - 1) / 2) * sy - cv).astype(np.float32)
    w = ((np.arange(nz) + 0.5) * sz).astype(np.float32)
    grid = _Grid(u, v, w)

    theta = np.arctan2(v[None, :], u[:, None])  # (X, Y)
    rho = np.hypot(v[None, :], u[:, None]).astype(np.float32)
    b_side = np.where(np.sin(theta) >= 0, b_ant, b_post)
    radius = a * b_side / np.sqrt((b_side * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    radius *= 1 + sum(c * np.cos(k * theta + p) for k, c, p in harm)
    t = w / z_extent
    scale = 1 + g1 * (t - 0.5) + g2 * np.sin(2 * np.pi * zf * t + zph)
    depth = radius.astype(np.float32)[:, :, None] * scale.astype(np.float32)[None, None, :]
    depth -= rho[:, :, None]  # mm inside the skin along the ray from the body centre

    # Subcutaneous fat is thicker anterolaterally; the muscle wall is thicker laterally.
    fat0 = rng.uniform(5, 14) + rng.uniform(0, 22) * (a - 130) / 55
    fat_t = fat0 * (1 + 0.45 * np.clip(np.sin(theta), 0, None) + 0.25 * np.cos(theta) ** 2)
    fat_t = np.maximum(fat_t, 3.0).astype(np.float32)
    m0 = rng.uniform(6, 15)
    wall = (fat_t + m0 * (1 + 0.5 * np.abs(np.cos(theta)))).astype(np.float32)

    layer = (depth > 0).astype(np.uint8)
    layer += depth > 2.0
    layer += depth > fat_t[:, :, None]
    cavity = depth > wall[:, :, None]
    layer += cavity
    tissue = np.array([AIR, SKIN, FAT_SUBCUT, MUSCLE, FAT_VISC], np.uint8)[layer]

    canvas = _Canvas(grid, tissue, cavity)
    geo = dict(
        a=a,
        b_ant=b_ant,
        b_post=b_post,
        z_extent=z_extent,
        fat0=fat0,
        m0=m0,
        a_in=a - fat0 * 1.25 - m0 * 1.5,
        b_in_ant=b_ant - fat0 * 1.45 - m0,
        b_in_post=b_post - fat0 - m0,
        theta=theta,
        depth=depth,
        fat_t=fat_t,
        wall=wall,
        spacing=(sx, sy, sz),
        fov_origin=(cu, cv),
        post_surface=-b_post * scale.min(),
        radius=radius.astype(np.float32),
        rho=rho,
        scale=scale.astype(np.float32),
    )
    return grid, canvas, geo


def _table(canvas: _Canvas, rng, geo):
    """Curved carbon-fibre table plate under the patient (not in the body cavity)."""
    g = canvas.grid
    v_top = geo["post_surface"] * 1.02 - rng.uniform(2, 8)
    curv = rng.uniform(0.0002, 0.0008)
    plate = v_top + curv * g.u[:, None] ** 2  # (X, 1) top surface
    m = (g.v[None, :] <= plate) & (g.v[None, :] > plate - rng.uniform(4, 8))
    m &= np.abs(g.u[:, None]) < 210
    sub = canvas.tissue
    sel = m[:, :, None] & (sub == AIR)
    sub[sel] = TABLE


def _spine_params(rng, geo, grid) -> dict:
    """Vertebral column geometry, drawn before the organs that are placed relative to it."""
    post_fat = float(geo["fat_t"][np.argmin(np.abs(grid.u)), np.argmin(grid.v)])
    depth_ap = geo["b_ant"] + geo["b_post"]
    v_vb = geo["post_surface"] + max(rng.uniform(0.33, 0.39) * depth_ap, post_fat + 55)
    sp = dict(
        v_vb=v_vb,
        ru=rng.uniform(19, 25),
        rv=rng.uniform(14, 18),
        r_canal=rng.uniform(7, 9.5),
        period=rng.uniform(27, 33),
        disc_h=rng.uniform(6, 9),
        spinous=rng.uniform(22, 32),
        transverse=rng.uniform(38, 48),
        ps_u=rng.uniform(30, 40),
        ps_v=rng.uniform(28, 34),
        ps_ru=rng.uniform(25, 32),
        ps_rv=rng.uniform(20, 26),
        psoas_top=rng.uniform(0.45, 0.6) * geo["z_extent"],
        psoas_r=rng.uniform(16, 27),
    )
    sp["w0"] = rng.uniform(0, sp["period"])
    sp["v_canal"] = sp["v_vb"] - sp["rv"] - sp["r_canal"] - 3
    return sp


def _spine(canvas: _Canvas, sp: dict, geo):
    """Vertebral column with psoas and paraspinal muscles."""
    g = canvas.grid
    v_vb, ru, rv, r_canal, v_canal = sp["v_vb"], sp["ru"], sp["rv"], sp["r_canal"], sp["v_canal"]

    # Muscles first, so the bone is painted over them.
    for side in (-1, 1):
        c = (side * sp["ps_u"], v_canal - sp["ps_v"] * 0.6, geo["z_extent"] / 2)
        box, d = _ellipsoid(g, c, (sp["ps_ru"], sp["ps_rv"], 1e4), pad=1.1)
        inside_skin = geo["depth"][box.sl] > geo["fat_t"][box.sl[:2]][:, :, None]
        canvas.paint(box, (d < 1) & inside_skin, MUSCLE, in_cavity=False)

    psoas_top = sp["psoas_top"]
    box = g.box((-ru - 70, v_vb - 45, 0), (ru + 70, v_vb + 45, psoas_top))
    if not box.empty:
        frac = np.clip((psoas_top - box.w) / (psoas_top * 0.8), 0, 1) ** 0.7
        r = np.maximum(sp["psoas_r"] * frac, 1e-3)
        for side in (-1, 1):
            d2 = ((box.u - side * (ru + 6 + r)) / r) ** 2 + ((box.v - v_vb + 2) / (0.85 * r)) ** 2
            canvas.paint(box, d2 < 1, MUSCLE)

    box = g.box((-60, v_canal - r_canal - 45, -1e9), (60, v_vb + rv + 3, 1e9))
    phase = np.mod(box.w - sp["w0"], sp["period"])
    is_disc = phase < sp["disc_h"]
    has_arch = (phase > sp["disc_h"]) & (
        phase < sp["disc_h"] + 0.65 * (sp["period"] - sp["disc_h"])
    )
    d_vb = np.sqrt((box.u / ru) ** 2 + ((box.v - v_vb) / rv) ** 2)  # (nx, ny, 1)
    body_val = np.where(d_vb > 1 - 2.5 / rv, BONE_CORTEX, BONE_MARROW).astype(np.uint8)
    body_val = np.where(is_disc, np.uint8(DISC), body_val)
    canvas.paint(box, d_vb < 1, body_val, in_cavity=False)
    r_c = np.hypot(box.u, box.v - v_canal)
    arch = (r_c >= r_canal) & (r_c < r_canal + 5.5) & (box.v < v_canal + r_canal * 0.6)
    spinous = (np.abs(box.u) < 4.5) & (box.v < v_canal - r_canal)
    spinous &= box.v > v_canal - r_canal - sp["spinous"]
    # Transverse processes are thin plates, so they show in only a few millimetres of each level.
    tp_level = np.abs(phase - sp["disc_h"] - 0.35 * (sp["period"] - sp["disc_h"])) < 4.0
    transverse = (np.abs(box.u) < sp["transverse"]) & (np.abs(box.v - v_canal - 4) < 3.5)
    canvas.paint(
        box, ((arch | spinous) & has_arch) | (transverse & tp_level), BONE_CORTEX, in_cavity=False
    )
    canvas.paint(box, r_c < r_canal, CSF, in_cavity=False)


def _ribs(canvas: _Canvas, rng, geo, w_floor):
    """Oblique ribs in the body wall above w_floor (posterior end height of the lowest rib)."""
    g = canvas.grid
    drop = rng.uniform(100, 160)  # ribs descend this much from back to front
    box = g.box((-1e9, -1e9, w_floor - drop), (1e9, 1e9, 1e9))
    if box.empty:
        return
    half = rng.uniform(3.5, 5.5)
    period, rib_h = rng.uniform(26, 34), rng.uniform(7, 9)
    rib_depth = geo["fat_t"] + geo["m0"] * rng.uniform(0.6, 1.0)
    # Work on the thin ring of (u, v) columns the band can reach at some z: ~10x fewer voxels.
    scale = geo["scale"][box.sl[2]]
    radius, rho = geo["radius"], geo["rho"]
    ring = (radius * scale.max() - rho > rib_depth - half) & (
        radius * scale.min() - rho < rib_depth + half
    )
    ii, jj = np.nonzero(ring)
    phi = np.abs(np.angle(np.exp(1j * (geo["theta"][ii, jj] + np.pi / 2))))  # 0 at the spine
    phi = phi.astype(np.float32)[:, None]
    depth = radius[ii, jj, None] * scale[None, :] - rho[ii, jj, None]  # (n, nz)
    level = box.w[0] + (drop / np.pi) * phi  # height of the rib's posterior end
    ribs = np.abs(depth - rib_depth[ii, jj, None]) < half
    ribs &= (np.mod(level - w_floor, period) < rib_h) & (level > w_floor)
    ribs &= (phi > 0.12 * np.pi) & (phi < 0.85 * np.pi)
    val = np.where(phi > 0.7 * np.pi, np.uint8(CARTILAGE), np.uint8(RIB))
    sub = canvas.tissue[ii, jj, box.sl[2]]
    sub[ribs] = np.broadcast_to(val, sub.shape)[ribs]
    canvas.tissue[ii, jj, box.sl[2]] = sub


def _domes(grid: _Grid, rng, geo):
    """Diaphragm height dome(u, v) (X, Y) as the max of a right and a lower left dome."""
    a_in = geo["a_in"]
    top = geo["liver_top"]
    k = rng.uniform(70, 100) / 90.0**2
    u_r, v_r = rng.uniform(0.3, 0.45) * a_in, rng.uniform(-20, 5)
    u_l, v_l = -rng.uniform(0.3, 0.45) * a_in, rng.uniform(-20, 5)
    drop_l = rng.uniform(5, 20)
    # The costophrenic recesses reach down behind the liver, but not below its lower part.
    floor = top - rng.uniform(0.6, 0.85) * (top - geo["liver_bottom"])
    uu, vv = grid.u[:, None], grid.v[None, :]
    right = top - k * ((uu - u_r) ** 2 + 0.8 * (vv - v_r) ** 2)
    left = top - drop_l - k * ((uu - u_l) ** 2 + 0.8 * (vv - v_l) ** 2)
    return np.maximum(np.maximum(right, left), floor).astype(np.float32)


def _bowel(canvas: _Canvas, rng, geo, liver_bottom):
    """Colon frame and small-bowel loops with fluid, gas, faeces or collapsed."""
    g = canvas.grid
    a_in, b_ant = geo["a_in"], geo["b_in_ant"]
    over = (FAT_VISC, BOWEL_WALL, BOWEL_FLUID, GAS, FECES)

    def fill(box, d, wall_frac, content, gas_level=None, v_c=0.0):
        """Wall where 1 - wall_frac <= d < 1, content inside (gas above gas_level if any)."""
        if box.empty:
            return
        val = np.where(d >= 1 - wall_frac, np.uint8(BOWEL_WALL), np.uint8(content))
        if gas_level is not None:
            val = np.where((d < 1 - wall_frac) & (box.v > v_c + gas_level), np.uint8(GAS), val)
        canvas.paint(box, d < 1, val, over=over)

    # Ascending and descending colon: vertical haustrated tubes.
    flex_r = liver_bottom + rng.uniform(-10, 25)
    flex_l = geo["liver_top"] - rng.uniform(60, 90)
    for side, top in ((1, flex_r), (-1, flex_l)):
        r = rng.uniform(18, 26)
        cu = side * (a_in - r - rng.uniform(5, 20))
        cv = rng.uniform(-0.25, 0.1) * b_ant
        box = g.box((cu - 1.2 * r, cv - 1.2 * r, -1e9), (cu + 1.2 * r, cv + 1.2 * r, top))
        if box.empty:
            continue
        hr = r * (1 + 0.12 * np.sin(2 * np.pi * box.w / rng.uniform(20, 30)))
        d = np.hypot(box.u - cu, box.v - cv) / hr
        content = FECES if rng.random() < 0.7 else BOWEL_FLUID
        fill(box, d, 2.5 / r, content, gas_level=rng.uniform(-0.2, 0.8) * r, v_c=cv)

    # Transverse colon: anterior tube hanging between the flexures.
    r = rng.uniform(17, 24)
    cv = rng.uniform(0.35, 0.6) * b_ant
    sag = rng.uniform(10, 60)
    w_hi = max(flex_r, flex_l) + r
    box = g.box(
        (-a_in, cv - 1.2 * r, min(flex_r, flex_l) - sag - 1.2 * r), (a_in, cv + 1.2 * r, w_hi)
    )
    if not box.empty:
        frac = np.clip((box.u + a_in) / (2 * a_in), 0, 1)
        wc = flex_l + (flex_r - flex_l) * frac - sag * (1 - ((box.u / a_in) ** 2))
        d = np.sqrt((box.v - cv) ** 2 + (box.w - wc) ** 2) / r
        fill(box, d, 2.5 / r, FECES, gas_level=rng.uniform(-0.3, 0.7) * r, v_c=cv)

    # Small-bowel loops, densest in the lower abdomen.
    for _ in range(rng.integers(45, 80)):
        c = (
            rng.uniform(-0.75, 0.75) * a_in,
            rng.uniform(-0.2, 0.85) * b_ant,
            rng.uniform(0.0, liver_bottom + 0.25 * (geo["liver_top"] - liver_bottom)),
        )
        radii = (rng.uniform(11, 22), rng.uniform(11, 22), rng.uniform(20, 50))
        box, d = _ellipsoid(g, c, radii, angle=rng.uniform(0, np.pi), pad=1.05)
        if box.empty:
            continue
        kind = rng.choice(4, p=[0.5, 0.2, 0.12, 0.18])
        wall = 2.5 / min(radii[:2])
        if kind == 0:
            fill(box, d, wall, BOWEL_FLUID)
        elif kind == 1:  # collapsed: all wall, soft-tissue density like the liver
            fill(box, d, 1.0, BOWEL_WALL)
        elif kind == 2:
            fill(box, d, wall, GAS)
        else:
            fill(box, d, wall, BOWEL_FLUID, gas_level=rng.uniform(-0.3, 0.6) * radii[1], v_c=c[1])


def _liver(canvas: _Canvas, rng, geo, dome):
    """Liver lobes under the right dome; returns (box, hilum point)."""
    g = canvas.grid
    a_in, b_ant = geo["a_in"], geo["b_in_ant"]
    top, bottom = geo["liver_top"], geo["liver_bottom"]
    span = top - bottom
    lobes = []
    # Right lobe: reaches the lateral wall, its tip sets the bottom of the liver.
    ru = rng.uniform(0.55, 0.7) * a_in
    rw = (top + 0.25 * span - bottom) / 2
    lobes.append(
        (
            (a_in - 0.8 * ru, rng.uniform(-20, 10), bottom + rw),
            (ru, rng.uniform(0.9, 1.05) * (b_ant + geo["b_in_post"]) / 2, rw),
            rng.uniform(-0.3, 0.3),
        )
    )
    # Left lateral lobe: anterior, crossing the midline; upper part of the liver.
    lobes.append(
        (
            (
                rng.uniform(-0.25, 0.05) * a_in,
                rng.uniform(0.3, 0.5) * b_ant,
                top - rng.uniform(0.15, 0.3) * span,
            ),
            (
                rng.uniform(0.4, 0.6) * a_in,
                rng.uniform(0.3, 0.45) * b_ant,
                rng.uniform(0.22, 0.35) * span,
            ),
            rng.uniform(-0.3, 0.2),
        )
    )
    # Caudate / medial segment bridging the two.
    lobes.append(
        (
            (
                rng.uniform(0.05, 0.2) * a_in,
                rng.uniform(-0.05, 0.2) * b_ant,
                top - rng.uniform(0.25, 0.4) * span,
            ),
            (rng.uniform(35, 50), rng.uniform(35, 50), rng.uniform(0.2, 0.3) * span),
            0.0,
        )
    )

    box = g.box(
        (-a_in, -geo["b_in_post"] - 10, bottom - 0.05 * span), (a_in + 10, b_ant + 10, top + 5)
    )
    sdf = None
    kk = 0.25  # smooth-min radius in normalised units, merges lobes without creases
    for (cu, cv, cw), (ru_, rv_, rw_), ang in lobes:
        du, dv = _rot(box.u - cu, box.v - cv, ang)
        d = np.sqrt((du / ru_) ** 2 + (dv / rv_) ** 2 + ((box.w - cw) / rw_) ** 2) - 1
        if sdf is None:
            sdf = d
        else:
            h = np.clip(0.5 + 0.5 * (d - sdf) / kk, 0, 1)
            sdf = d * (1 - h) + sdf * h - kk * h * (1 - h)
    sdf += _wobble(rng, box, rng.uniform(0.08, 0.15), rng.uniform(60, 120))
    mask = (sdf < 0) & (box.w < dome[box.sl[:2]][:, :, None])
    canvas.paint(box, mask, LIVER, over=_SOFT)
    hilum = (
        rng.uniform(0.15, 0.3) * a_in,
        rng.uniform(-0.05, 0.15) * b_ant,
        bottom + rng.uniform(0.3, 0.45) * span,
    )
    return box, hilum


def _liver_interior(canvas: _Canvas, rng, geo, liver_box, hilum, ivc_top):
    """Intrahepatic vessels (label 1) and tumours (label 2)."""
    g = canvas.grid
    sub = canvas.tissue[liver_box.sl]
    idx = np.argwhere(sub == LIVER)
    if len(idx) == 0:
        return 0

    def liver_point():
        i, j, k = idx[rng.integers(len(idx))]
        return (
            float(liver_box.u[i, 0, 0]),
            float(liver_box.v[0, j, 0]),
            float(liver_box.w[0, 0, k]),
        )

    # Portal branches from the hilum and hepatic veins towards the IVC near the top.
    segments = [(hilum, liver_point(), rng.uniform(4, 7), 1.5) for _ in range(rng.integers(5, 9))]
    segments += [(ivc_top, liver_point(), rng.uniform(4, 7), 1.5) for _ in range(3)]
    for a, b, r0, r1 in segments:
        box, m = _tube(g, a, b, r0, r1)
        canvas.paint(box, m, LIVER_VESSEL, over=(LIVER,))

    n_tumours = min(1 + rng.poisson(1.5), MAX_TUMOURS)
    for k in range(n_tumours):
        c = liver_point()
        r = float(np.exp(rng.uniform(np.log(4), np.log(28))))
        radii = (r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2))
        box, d = _ellipsoid(g, c, radii, angle=rng.uniform(0, np.pi), pad=1.3)
        if box.empty:
            continue
        d = d + _wobble(rng, box, 0.12, 2 * r)
        core = rng.uniform(0.3, 0.7) if r > 15 and rng.random() < 0.6 else 0.0
        val = np.where(d < core, np.uint8(TUMOUR + 2 * k + 1), np.uint8(TUMOUR + 2 * k))
        canvas.paint(box, d < 1, val, over=(LIVER, LIVER_VESSEL))
    return n_tumours


def _organs(canvas: _Canvas, rng, geo, v_vb, rv_vb):
    """Stomach, pancreas and spleen, painted before the liver."""
    g = canvas.grid
    a_in, b_ant, b_post = geo["a_in"], geo["b_in_ant"], geo["b_in_post"]
    top, bottom = geo["liver_top"], geo["liver_bottom"]
    span = top - bottom

    # Stomach (left upper quadrant) with rugal wall and a gas cap; sometimes collapsed.
    c = (
        -rng.uniform(0.3, 0.5) * a_in,
        rng.uniform(0.0, 0.35) * b_ant,
        top - rng.uniform(0.2, 0.35) * span,
    )
    radii = (rng.uniform(40, 60), rng.uniform(30, 50), rng.uniform(45, 70))
    box, d = _ellipsoid(g, c, radii, angle=rng.uniform(-0.6, 0.6))
    if not box.empty:
        d = d + _wobble(rng, box, 0.08, 60)
        if rng.random() < 0.25:
            val = np.uint8(BOWEL_WALL)
        else:
            wall = 4.0 / min(radii)
            gas = (box.v > c[1] + rng.uniform(0.0, 0.7) * radii[1]) | (
                box.w > c[2] + rng.uniform(0.55, 0.8) * radii[2]
            )
            val = np.where(
                d >= 1 - wall,
                np.uint8(BOWEL_WALL),
                np.where(gas, np.uint8(GAS), np.uint8(STOMACH_CONTENT)),
            )
        canvas.paint(box, d < 1, val)

    # Pancreas: elongated across the midline in front of the aorta, tail rising to the spleen.
    c = (
        rng.uniform(-30, 0),
        v_vb + rv_vb + rng.uniform(30, 45),
        bottom + rng.uniform(0.1, 0.3) * span,
    )
    radii = (rng.uniform(55, 75), rng.uniform(9, 15), rng.uniform(12, 18))
    box, d = _ellipsoid(g, c, radii, angle=rng.uniform(-0.3, 0.3))
    if not box.empty:
        d = d + _wobble(rng, box, 0.15, 30)
        canvas.paint(box, d < 1, PANCREAS, over=_SOFT)

    # Spleen: posterolateral left, along the wall, concave medially.
    ru, rv, rw = rng.uniform(20, 30), rng.uniform(45, 65), rng.uniform(40, 60)
    c = (
        -(a_in - ru * rng.uniform(0.6, 0.9)),
        -rng.uniform(0.15, 0.4) * b_post,
        top - rng.uniform(0.15, 0.35) * span,
    )
    ang = rng.uniform(-0.9, -0.4)
    box, d = _ellipsoid(g, c, (ru, rv, rw), angle=ang)
    if not box.empty:
        du, dv = _rot(box.u - (c[0] + ru * 1.3), box.v - c[1], ang)
        hollow = np.sqrt((du / ru) ** 2 + (dv / (rv * 0.7)) ** 2 + ((box.w - c[2]) / rw) ** 2)
        canvas.paint(box, (d < 1) & (hollow > 1), SPLEEN, over=_SOFT)


def _late_organs(canvas: _Canvas, rng, geo, v_vb, rv_vb, hilum):
    """Organs painted after the liver, so they carve their space out of it."""
    g = canvas.grid
    a_in, b_ant = geo["a_in"], geo["b_in_ant"]
    top, bottom = geo["liver_top"], geo["liver_bottom"]
    span = top - bottom
    liverish = (LIVER, LIVER_VESSEL) + tuple(range(TUMOUR, TUMOUR + 2 * MAX_TUMOURS))
    soft = _SOFT + liverish

    # Gallbladder under the liver (absent after cholecystectomy).
    if rng.random() < 0.85:
        c = (
            rng.uniform(0.1, 0.3) * a_in,
            rng.uniform(0.1, 0.35) * b_ant,
            bottom + rng.uniform(0.1, 0.3) * span,
        )
        radii = (rng.uniform(13, 20), rng.uniform(13, 20), rng.uniform(25, 45))
        box, d = _ellipsoid(g, c, radii, angle=rng.uniform(0, np.pi))
        canvas.paint(box, d < 1, GALLBLADDER, over=soft)

    # Kidneys: cortex, medulla, sinus fat at the hilum; right lower than left.
    w_r = bottom + rng.uniform(-25, 15)
    for side, wc in ((1, w_r), (-1, w_r + rng.uniform(10, 25))):
        radii = (rng.uniform(24, 32), rng.uniform(20, 27), rng.uniform(45, 60))
        c = (side * rng.uniform(55, 75), v_vb + rng.uniform(-5, 15), wc)
        ang = side * rng.uniform(0.4, 0.8)
        box, d = _ellipsoid(g, c, radii, angle=ang)
        if box.empty:
            continue
        du, dv = _rot(box.u - c[0], box.v - c[1], ang)
        sinus = ((du + side * radii[0] * 0.7) / (radii[0] * 0.55)) ** 2 + (
            dv / (radii[1] * 0.4)
        ) ** 2
        sinus = sinus + ((box.w - c[2]) / (radii[2] * 0.45)) ** 2 < 1
        cortex_in = 1 - rng.uniform(6, 8) / min(radii)
        val = np.where(d >= cortex_in, np.uint8(KIDNEY_CORTEX), np.uint8(KIDNEY_MEDULLA))
        val = np.where(sinus, np.uint8(RENAL_SINUS), val)
        canvas.paint(box, d < 1, val, over=soft + (MUSCLE,))

    # Great vessels: aorta (bifurcating low down), IVC (intrahepatic at the top), portal vein.
    ra = rng.uniform(9, 13)
    au = -rng.uniform(10, 22)
    av = v_vb + rv_vb + ra + rng.uniform(0, 6)
    w_bif = rng.uniform(0.05, 0.2) * geo["z_extent"]
    box = g.box((au - 80, av - 2 * ra, -1e9), (au + 80, av + 2 * ra, 1e9))
    spread = np.clip(w_bif - box.w, 0, None) * 0.6
    r_here = np.where(box.w < w_bif, 0.75 * ra, ra)
    d_l = np.hypot(box.u - au + spread, box.v - av)
    d_r = np.hypot(box.u - au - spread, box.v - av)
    canvas.paint(box, np.minimum(d_l, d_r) < r_here, BLOOD, over=soft + (MUSCLE,))

    iu, iv = rng.uniform(18, 32), v_vb + rng.uniform(12, 25)
    iru, irv = rng.uniform(10, 15), rng.uniform(7, 11)
    box = g.box((iu - iru, iv - irv, -1e9), (iu + iru, iv + irv, 1e9))
    canvas.paint(box, ((box.u - iu) / iru) ** 2 + ((box.v - iv) / irv) ** 2 < 1, BLOOD, over=soft)
    start = (rng.uniform(-10, 10), av + ra + rng.uniform(15, 30), bottom + 0.1 * span)
    box, m = _tube(g, start, hilum, rng.uniform(6, 9), 5.0)
    canvas.paint(box, m, BLOOD, over=_SOFT)
    return (iu, iv, top - rng.uniform(5, 15))


def _thorax(canvas: _Canvas, rng, geo, dome, v_vb):
    """Diaphragm, lung bases and heart above the domes."""
    g = canvas.grid
    low = float(dome.min())
    box = g.box((-1e9, -1e9, low), (1e9, 1e9, 1e9))
    if box.empty:
        return
    dm = dome[:, :, None]
    above = box.w - dm
    med_u, med_w = -rng.uniform(0, 20), rng.uniform(22, 35)
    mediastinum = (np.abs(box.u - med_u) < med_w) & (box.v > v_vb - 10) & (box.v < v_vb + 60)
    # Organs stop at the diaphragm: lung replaces whatever reached above it, except the great
    # vessels, which run on into the chest (bone is painted afterwards).
    not_blood = tuple(t for t in range(256) if t != BLOOD)
    canvas.paint(box, (above > 4) & ~mediastinum, LUNG, over=not_blood)
    canvas.paint(box, (above > 0) & (above <= 4), MUSCLE, over=not_blood)
    canvas.paint(box, (above > 4) & mediastinum, FAT_VISC, over=not_blood)

    c = (
        -rng.uniform(10, 30),
        rng.uniform(0.1, 0.3) * geo["b_in_ant"],
        geo["liver_top"] + rng.uniform(0, 30),
    )
    radii = (rng.uniform(55, 70), rng.uniform(45, 55), rng.uniform(50, 60))
    hbox, d = _ellipsoid(g, c, radii, angle=rng.uniform(0.3, 0.7))
    if not hbox.empty:
        inner = 1 - rng.uniform(8, 12) / min(radii)
        val = np.where(d < inner, np.uint8(BLOOD), np.uint8(MYOCARDIUM))
        above_d = hbox.w > dome[hbox.sl[:2]][:, :, None] + 4
        canvas.paint(hbox, (d < 1) & above_d, val)


def _tissue_hu(rng, n_tumours):
    """Per-volume lookup tables (256,) of mean HU, texture amplitude, bias amplitude and label."""
    enh = rng.uniform(0.0, 0.1) if rng.random() < 0.08 else rng.uniform(0.75, 1.0)
    mean = np.zeros(256, np.float32)
    tex = np.zeros(256, np.float32)
    for tid, (plain, boost, tamp, jitter) in _TISSUE_HU.items():
        mean[tid] = plain + enh * boost + rng.normal(0, jitter)
        tex[tid] = tamp * rng.uniform(0.7, 1.3)
    if rng.random() < 0.1:  # steatosis: the liver drops below the spleen and muscle
        mean[LIVER] = rng.uniform(20, 45) + enh * _TISSUE_HU[LIVER][1]
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
      in L-P-S order (see the module docstring). With return_tissue, a fourth array follows.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {shape}")
    grid, canvas, geo = _body(rng, shape)
    z_extent = geo["z_extent"]
    geo["liver_top"] = rng.uniform(0.86, 0.96) * z_extent
    geo["liver_bottom"] = geo["liver_top"] - rng.uniform(0.42, 0.58) * z_extent

    dome = _domes(grid, rng, geo)
    _table(canvas, rng, geo)
    sp = _spine_params(rng, geo, grid)
    v_vb, rv_vb = sp["v_vb"], sp["rv"]
    _bowel(canvas, rng, geo, geo["liver_bottom"])
    _organs(canvas, rng, geo, v_vb, rv_vb)
    liver_box, hilum = _liver(canvas, rng, geo, dome)
    ivc_top = _late_organs(canvas, rng, geo, v_vb, rv_vb, hilum)
    n_tumours = _liver_interior(canvas, rng, geo, liver_box, hilum, ivc_top)
    _thorax(canvas, rng, geo, dome, v_vb)
    _spine(canvas, sp, geo)
    _ribs(canvas, rng, geo, w_floor=geo["liver_bottom"] + rng.uniform(-0.1, 0.15) * z_extent)

    tissue = canvas.tissue
    mean, tex_amp, bias_amp, label_lut = _tissue_hu(rng, n_tumours)
    spacing = geo["spacing"]
    hu = mean[tissue]
    hu += tex_amp[tissue] * _smooth_field(rng, shape, spacing, rng.uniform(6, 12))
    hu += (bias_amp[tissue] * rng.uniform(3, 8)) * _smooth_field(rng, shape, spacing, 80.0)
    # Partial volume: the scanner's point spread mixes neighbouring tissues at every boundary.
    hu = _blur3(_blur3(hu, 0, 0.25), 1, 0.25)
    hu = ndimage.correlate1d(hu, (0.15, 0.7, 0.15), axis=2, mode="nearest")
    hu += rng.uniform(10, 18) * rng.standard_normal(shape, dtype=np.float32)
    hu_int = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    labels = label_lut[tissue]

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


# ----------------------------------------------------------------------------------------------
# Writing datasets.


def _save_nifti_atomic(img: nib.Nifti1Image, path: pathlib.Path) -> None:
    """Saves next to path under a hidden temporary name, then renames (atomic on POSIX)."""
    with io_utils.atomic_path(path) as tmp:
        nib.save(img, tmp)


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)  # scanner coordinates, as LiTS files declare
    img.set_sform(affine, code=1)
    img.header["descrip"] = PHANTOM_DESCRIP.encode()
    return img


def is_phantom_file(path) -> bool:
    """Whether a NIfTI file was written by this phantom (its header's ``descrip``)."""
    try:
        descrip = nib.load(path).header.get("descrip")
    except Exception:  # unreadable files are reported by the loaders, not here
        return False
    if descrip is None:
        return False
    return np.asarray(descrip).item().rstrip(b"\0") == PHANTOM_DESCRIP.encode()


def write_phantom_dataset(
    out_dir, num_volumes: int = 20, shape=(512, 512, 64), seed: int = 0
) -> pathlib.Path:
    """Writes ``volume-N.nii.gz`` (int16 HU) and ``segmentation-N.nii.gz`` (uint8), N < num_volumes.

    Volume N is generated from ``np.random.default_rng([seed, N])``, so it does not depend on
    num_volumes. Each file is written atomically; existing files are overwritten.

    Args:
      out_dir: directory to write into (created if missing).
      num_volumes: number of volume/segmentation pairs.
      shape: (X, Y, Z) voxels per volume.
      seed: dataset seed.

    Returns:
      out_dir as a Path.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(num_volumes):
        hu, labels, affine = generate_volume(np.random.default_rng([seed, n]), shape)
        _save_nifti_atomic(_nifti(hu, affine), out_dir / f"volume-{n}.nii.gz")
        _save_nifti_atomic(_nifti(labels, affine), out_dir / f"segmentation-{n}.nii.gz")
    return out_dir


def default_cache_root() -> pathlib.Path:
    """``$CMSEG_CACHE/phantom`` if CMSEG_CACHE is set, else ``~/.cache/cmseg_jax/phantom``."""
    base = os.environ.get("CMSEG_CACHE")
    if base:
        return pathlib.Path(base).expanduser() / "phantom"
    return pathlib.Path.home() / ".cache" / "cmseg_jax" / "phantom"


_MANIFEST = "phantom.json"
MIN_SIDE = 8  # the smallest volume side generate_volume accepts


def ensure_phantom(
    cache_root=None, num_volumes: int = 20, shape=(512, 512, 64), seed: int = 0
) -> pathlib.Path:
    """Returns a complete phantom dataset directory, generating it on first use.

    The directory is ``<cache_root>/lits-phantom-v<GENERATOR_VERSION>-n<num>-<X>x<Y>x<Z>-s<seed>``.
    A dataset is complete when its manifest exists; it is written into a temporary sibling
    directory and renamed into place, so concurrent callers and interrupted runs never see a
    partial dataset (the loser of a race discards its copy).

    Args:
      cache_root: parent directory; None means :func:`default_cache_root`.
      num_volumes: number of volumes.
      shape: (X, Y, Z) voxels per volume.
      seed: dataset seed.

    Returns:
      Path of the dataset directory.
    """
    root = pathlib.Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    shape = tuple(int(s) for s in shape)
    key = f"lits-phantom-v{GENERATOR_VERSION}-n{num_volumes}-{'x'.join(map(str, shape))}-s{seed}"
    final = root / key
    if (final / _MANIFEST).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    io_utils.remove_orphans(root, min_age_s=24 * 3600)  # left by generators killed long ago
    tmp = root / f".{key}.{uuid.uuid4().hex}.tmp"
    logger.info("Generating %d phantom volumes of shape %s in %s", num_volumes, shape, final)
    try:
        write_phantom_dataset(tmp, num_volumes=num_volumes, shape=shape, seed=seed)
        manifest = dict(
            generator_version=GENERATOR_VERSION,
            num_volumes=num_volumes,
            shape=list(shape),
            seed=seed,
        )
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if final.exists() and not (final / _MANIFEST).is_file():
            shutil.rmtree(final, ignore_errors=True)  # debris without a manifest: not ours
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (rename onto a non-empty directory fails).
            if not (final / _MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv=None) -> int:
    """``python -m cmseg_jax.data.phantom OUT_DIR [--num_volumes N] [--shape X Y Z] [--seed S]``.

    Writes a LiTS-format phantom directory (e.g. a manual directory for the TFDS builder).
    Returns the exit status (2 for a bad argument, 1 when the directory cannot be written).
    """
    from cmseg_jax import errors

    parser = errors.ArgumentParser(
        prog="python -m cmseg_jax.data.phantom",
        description="Write the CT phantom as LiTS-format volume-N / segmentation-N NIfTI files.",
    )
    parser.add_argument("out_dir")
    parser.add_argument("--num_volumes", type=int, default=20)
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(512, 512, 64), metavar=("X", "Y", "Z")
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_volumes < 1:
        parser.error(f"--num_volumes {args.num_volumes}: must be >= 1")
    if min(args.shape) < MIN_SIDE:
        parser.error(f"--shape {' '.join(map(str, args.shape))}: every side must be >= {MIN_SIDE}")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be >= 0")

    def body(args) -> int:
        out = write_phantom_dataset(args.out_dir, args.num_volumes, tuple(args.shape), args.seed)
        print(f"wrote {args.num_volumes} phantom volumes {tuple(args.shape)} to {out}")
        return 0

    return errors.run_main(body, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
