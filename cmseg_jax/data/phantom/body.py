"""Body, skeleton and thorax of the phantom: the frame the organs are placed in.

Coordinates as in :mod:`cmseg_jax.data.phantom.geometry` (``u`` to the patient's right, ``v``
anterior, ``w`` superior, mm). Each function draws from ``rng`` in a fixed order, so a volume is a
deterministic function of its generator's state.
"""

from __future__ import annotations

import numpy as np

from cmseg_jax.data.phantom.geometry import Canvas, Grid, ellipsoid
from cmseg_jax.data.phantom.tissues import (
    AIR,
    BLOOD,
    BONE_CORTEX,
    BONE_MARROW,
    CARTILAGE,
    CSF,
    DISC,
    FAT_SUBCUT,
    FAT_VISC,
    LUNG,
    MUSCLE,
    MYOCARDIUM,
    RIB,
    SKIN,
    TABLE,
)


def torso(rng, shape):
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
    grid = Grid(u, v, w)

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

    canvas = Canvas(grid, tissue, cavity)
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


def table(canvas: Canvas, rng, geo):
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


def spine_params(rng, geo, grid) -> dict:
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


def spine(canvas: Canvas, sp: dict, geo):
    """Vertebral column with psoas and paraspinal muscles."""
    g = canvas.grid
    v_vb, ru, rv, r_canal, v_canal = sp["v_vb"], sp["ru"], sp["rv"], sp["r_canal"], sp["v_canal"]

    # Muscles first, so the bone is painted over them.
    for side in (-1, 1):
        c = (side * sp["ps_u"], v_canal - sp["ps_v"] * 0.6, geo["z_extent"] / 2)
        box, d = ellipsoid(g, c, (sp["ps_ru"], sp["ps_rv"], 1e4), pad=1.1)
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


def ribs(canvas: Canvas, rng, geo, w_floor):
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
    on_rib = np.abs(depth - rib_depth[ii, jj, None]) < half
    on_rib &= (np.mod(level - w_floor, period) < rib_h) & (level > w_floor)
    on_rib &= (phi > 0.12 * np.pi) & (phi < 0.85 * np.pi)
    val = np.where(phi > 0.7 * np.pi, np.uint8(CARTILAGE), np.uint8(RIB))
    sub = canvas.tissue[ii, jj, box.sl[2]]
    sub[on_rib] = np.broadcast_to(val, sub.shape)[on_rib]
    canvas.tissue[ii, jj, box.sl[2]] = sub


def domes(grid: Grid, rng, geo):
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


def thorax(canvas: Canvas, rng, geo, dome, v_vb):
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
    hbox, d = ellipsoid(g, c, radii, angle=rng.uniform(0.3, 0.7))
    if not hbox.empty:
        inner = 1 - rng.uniform(8, 12) / min(radii)
        val = np.where(d < inner, np.uint8(BLOOD), np.uint8(MYOCARDIUM))
        above_d = hbox.w > dome[hbox.sl[:2]][:, :, None] + 4
        canvas.paint(hbox, (d < 1) & above_d, val)
