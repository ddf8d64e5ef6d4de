"""Geometry of the phantom: coordinate grids, bounding boxes and implicit shapes.

All coordinates are float32 mm: ``u`` points to the patient's right, ``v`` anterior, ``w``
superior, from the body centre and the bottom slice. A box is a sub-grid of the volume whose
coordinate vectors are shaped to broadcast to (nx, ny, nz), so an implicit function costs only as
much as its bounding box. The tissue map under construction is a :class:`Canvas` in canonical RAS+
order.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Box:
    sl: tuple[slice, slice, slice]
    u: np.ndarray  # (nx, 1, 1)
    v: np.ndarray  # (1, ny, 1)
    w: np.ndarray  # (1, 1, nz)

    @property
    def empty(self) -> bool:
        return min(self.u.size, self.v.size, self.w.size) == 0


@dataclasses.dataclass
class Grid:
    u: np.ndarray  # (X,) mm, patient's right positive, 0 at the body centre
    v: np.ndarray  # (Y,) mm, anterior positive, 0 at the body centre
    w: np.ndarray  # (Z,) mm above the bottom edge of the volume

    def box(self, lo, hi) -> Box:
        """Sub-grid of voxel centres with lo <= (u, v, w) <= hi (possibly empty)."""
        sl = []
        for axis, a, b in zip((self.u, self.v, self.w), lo, hi, strict=True):
            i0 = int(np.searchsorted(axis, a, side="left"))
            i1 = int(np.searchsorted(axis, b, side="right"))
            sl.append(slice(i0, max(i0, i1)))
        su, sv, sw = sl
        return Box(
            sl=(su, sv, sw),
            u=self.u[su][:, None, None],
            v=self.v[sv][None, :, None],
            w=self.w[sw][None, None, :],
        )


def rot(du, dv, angle):
    """Rotate in-plane offsets by -angle, i.e. into the frame of an organ rotated by +angle."""
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * du + s * dv, -s * du + c * dv


def wobble(rng, box: Box, amp: float, wavelength: float, terms: int = 3):
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


class Canvas:
    """Tissue map under construction plus the body geometry every organ is clipped to."""

    def __init__(self, grid: Grid, tissue: np.ndarray, cavity: np.ndarray):
        self.grid = grid
        self.tissue = tissue  # (X, Y, Z) uint8, canonical RAS+ order
        self.cavity = cavity  # (X, Y, Z) bool, inside the abdominal/thoracic wall

    def paint(self, box: Box, mask, value, *, over=None, in_cavity=True):
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


def ellipsoid(grid: Grid, center, radii, angle=0.0, pad=1.2):
    """Box around an ellipsoid and its normalised radius d (< 1 inside) on that box."""
    cu, cv, cw = center
    ru, rv, rw = radii
    rxy = max(ru, rv) * pad
    box = grid.box((cu - rxy, cv - rxy, cw - rw * pad), (cu + rxy, cv + rxy, cw + rw * pad))
    du, dv = rot(box.u - cu, box.v - cv, angle)
    d2 = (du / ru) ** 2 + (dv / rv) ** 2 + ((box.w - cw) / rw) ** 2
    return box, np.sqrt(d2, dtype=np.float32)


def tube(grid: Grid, a, b, r0, r1):
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
