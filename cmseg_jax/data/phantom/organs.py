"""Abdominal organs of the phantom, painted into the body frame of :mod:`.body`.

Bowel, stomach, pancreas, spleen, the liver with its vessels and tumours, gallbladder, kidneys and
the great vessels, painted in the order :func:`cmseg_jax.data.phantom.generate.generate_volume`
calls them; an organ may only displace the tissues its ``over`` argument names.
"""

from __future__ import annotations

import numpy as np

from cmseg_jax.data.phantom.geometry import Canvas, ellipsoid, rot, tube, wobble
from cmseg_jax.data.phantom.tissues import (
    BLOOD,
    BOWEL_FLUID,
    BOWEL_WALL,
    FAT_VISC,
    FECES,
    GALLBLADDER,
    GAS,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    LIVER,
    LIVER_VESSEL,
    MAX_TUMOURS,
    MUSCLE,
    PANCREAS,
    RENAL_SINUS,
    SOFT,
    SPLEEN,
    STOMACH_CONTENT,
    TUMOUR,
)


def bowel(canvas: Canvas, rng, geo, liver_bottom):
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
        box, d = ellipsoid(g, c, radii, angle=rng.uniform(0, np.pi), pad=1.05)
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


def early_organs(canvas: Canvas, rng, geo, v_vb, rv_vb):
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
    box, d = ellipsoid(g, c, radii, angle=rng.uniform(-0.6, 0.6))
    if not box.empty:
        d = d + wobble(rng, box, 0.08, 60)
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
    box, d = ellipsoid(g, c, radii, angle=rng.uniform(-0.3, 0.3))
    if not box.empty:
        d = d + wobble(rng, box, 0.15, 30)
        canvas.paint(box, d < 1, PANCREAS, over=SOFT)

    # Spleen: posterolateral left, along the wall, concave medially.
    ru, rv, rw = rng.uniform(20, 30), rng.uniform(45, 65), rng.uniform(40, 60)
    c = (
        -(a_in - ru * rng.uniform(0.6, 0.9)),
        -rng.uniform(0.15, 0.4) * b_post,
        top - rng.uniform(0.15, 0.35) * span,
    )
    ang = rng.uniform(-0.9, -0.4)
    box, d = ellipsoid(g, c, (ru, rv, rw), angle=ang)
    if not box.empty:
        du, dv = rot(box.u - (c[0] + ru * 1.3), box.v - c[1], ang)
        hollow = np.sqrt((du / ru) ** 2 + (dv / (rv * 0.7)) ** 2 + ((box.w - c[2]) / rw) ** 2)
        canvas.paint(box, (d < 1) & (hollow > 1), SPLEEN, over=SOFT)


def liver(canvas: Canvas, rng, geo, dome):
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
        du, dv = rot(box.u - cu, box.v - cv, ang)
        d = np.sqrt((du / ru_) ** 2 + (dv / rv_) ** 2 + ((box.w - cw) / rw_) ** 2) - 1
        if sdf is None:
            sdf = d
        else:
            h = np.clip(0.5 + 0.5 * (d - sdf) / kk, 0, 1)
            sdf = d * (1 - h) + sdf * h - kk * h * (1 - h)
    sdf += wobble(rng, box, rng.uniform(0.08, 0.15), rng.uniform(60, 120))
    mask = (sdf < 0) & (box.w < dome[box.sl[:2]][:, :, None])
    canvas.paint(box, mask, LIVER, over=SOFT)
    hilum = (
        rng.uniform(0.15, 0.3) * a_in,
        rng.uniform(-0.05, 0.15) * b_ant,
        bottom + rng.uniform(0.3, 0.45) * span,
    )
    return box, hilum


def late_organs(canvas: Canvas, rng, geo, v_vb, rv_vb, hilum):
    """Organs painted after the liver, so they carve their space out of it."""
    g = canvas.grid
    a_in, b_ant = geo["a_in"], geo["b_in_ant"]
    top, bottom = geo["liver_top"], geo["liver_bottom"]
    span = top - bottom
    liverish = (LIVER, LIVER_VESSEL) + tuple(range(TUMOUR, TUMOUR + 2 * MAX_TUMOURS))
    soft = SOFT + liverish

    # Gallbladder under the liver (absent after cholecystectomy).
    if rng.random() < 0.85:
        c = (
            rng.uniform(0.1, 0.3) * a_in,
            rng.uniform(0.1, 0.35) * b_ant,
            bottom + rng.uniform(0.1, 0.3) * span,
        )
        radii = (rng.uniform(13, 20), rng.uniform(13, 20), rng.uniform(25, 45))
        box, d = ellipsoid(g, c, radii, angle=rng.uniform(0, np.pi))
        canvas.paint(box, d < 1, GALLBLADDER, over=soft)

    # Kidneys: cortex, medulla, sinus fat at the hilum; right lower than left.
    w_r = bottom + rng.uniform(-25, 15)
    for side, wc in ((1, w_r), (-1, w_r + rng.uniform(10, 25))):
        radii = (rng.uniform(24, 32), rng.uniform(20, 27), rng.uniform(45, 60))
        c = (side * rng.uniform(55, 75), v_vb + rng.uniform(-5, 15), wc)
        ang = side * rng.uniform(0.4, 0.8)
        box, d = ellipsoid(g, c, radii, angle=ang)
        if box.empty:
            continue
        du, dv = rot(box.u - c[0], box.v - c[1], ang)
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
    box, m = tube(g, start, hilum, rng.uniform(6, 9), 5.0)
    canvas.paint(box, m, BLOOD, over=SOFT)
    return (iu, iv, top - rng.uniform(5, 15))


def liver_interior(canvas: Canvas, rng, geo, liver_box, hilum, ivc_top):
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
        box, m = tube(g, a, b, r0, r1)
        canvas.paint(box, m, LIVER_VESSEL, over=(LIVER,))

    n_tumours = min(1 + rng.poisson(1.5), MAX_TUMOURS)
    for k in range(n_tumours):
        c = liver_point()
        r = float(np.exp(rng.uniform(np.log(4), np.log(28))))
        radii = (r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2))
        box, d = ellipsoid(g, c, radii, angle=rng.uniform(0, np.pi), pad=1.3)
        if box.empty:
            continue
        d = d + wobble(rng, box, 0.12, 2 * r)
        core = rng.uniform(0.3, 0.7) if r > 15 and rng.random() < 0.6 else 0.0
        val = np.where(d < core, np.uint8(TUMOUR + 2 * k + 1), np.uint8(TUMOUR + 2 * k))
        canvas.paint(box, d < 1, val, over=(LIVER, LIVER_VESSEL))
    return n_tumours
