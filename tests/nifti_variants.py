"""NIfTI robustness variants of a phantom case, and an oracle score function, for the tests.

Every variant stores the *same* canonical (RAS+) volume in a different way: file format, data type,
scaling, padding, axis order and direction, header form, extra dimension, voxel size, in-plane
shape. The stored arrays and affines are built here with their own index arithmetic (not with
``cmseg_jax.data.nifti``), so a test that reads a variant back through the library checks the
library against an independent construction.

A layout ``(perm, flip)`` means: stored axis i is canonical axis ``perm[i]``, reversed when
``flip[i]``; stored index s holds canonical voxel c with ``c[perm[i]] = s[i]`` (or
``n - 1 - s[i]``), and the affine is ``canonical_affine @ M`` for that index map M.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import pathlib

import nibabel as nib
import numpy as np

from cmseg_jax.data import phantom, preprocess

SHAPE = (64, 64, 24)


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """A canonical case: what every variant must decode to.

    Attributes:
      hu: (X, Y, Z) float32 Hounsfield units, RAS+ order.
      labels: (X, Y, Z) uint8 {0, 1, 2}, RAS+ order.
      affine: (4, 4) voxel -> RAS+ mm of the canonical array.
    """

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def phantom_reference(shape=SHAPE, seed: int = 0, index: int = 0) -> Reference:
    """Phantom volume ``index`` of dataset ``seed``, turned back from its L-P-S storage to RAS+."""
    hu, labels, affine = phantom.generate_volume(np.random.default_rng([seed, index]), shape)
    # The phantom stores canonical voxel (X-1-i, Y-1-j, k) at (i, j, k).
    flip = np.array(
        [[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float
    )
    return Reference(
        hu=np.ascontiguousarray(hu[::-1, ::-1]).astype(np.float32),
        labels=np.ascontiguousarray(labels[::-1, ::-1]),
        affine=affine @ flip,  # flip is its own inverse
    )


def crop_reference(ref: Reference, x=None, y=None) -> Reference:
    """A centred in-plane crop (a non-square slice), affine shifted to keep voxels in place."""
    nx, ny, _ = ref.hu.shape
    x0 = 0 if x is None else (nx - x) // 2
    y0 = 0 if y is None else (ny - y) // 2
    sl = (slice(x0, x0 + (x or nx)), slice(y0, y0 + (y or ny)))
    shift = np.eye(4)
    shift[:3, 3] = (x0, y0, 0)
    return Reference(ref.hu[sl].copy(), ref.labels[sl].copy(), ref.affine @ shift)


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one variant stores the reference.

    Attributes:
      perm: stored axis i is canonical axis perm[i].
      flip: stored axis i runs against its canonical axis.
      ext: '.nii' or '.nii.gz'.
      dtype: stored data type.
      slope, inter: header scaling; stored = (hu - inter) / slope exactly.
      pad: if given, HU outside the inscribed circle of each slice is set to this value.
      singleton_4d: store (X', Y', Z', 1).
      zoom_xy: multiply the canonical x / y voxel sizes (anisotropic in-plane pixels).
      rotate_deg: rotate the affine about the z axis (an oblique scan).
      qform_code, sform_code: header codes (0 = absent).
      crop: (x, y) centred in-plane crop of the reference (None = full).
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (True, True, False)  # L-P-S, as the phantom and LiTS
    ext: str = ".nii.gz"
    dtype: str = "int16"
    slope: float | None = None
    inter: float | None = None
    pad: float | None = None
    singleton_4d: bool = False
    zoom_xy: tuple[float, float] = (1.0, 1.0)
    rotate_deg: float = 0.0
    qform_code: int = 1
    sform_code: int = 1
    crop: tuple[int | None, int | None] | None = None


VARIANTS: dict[str, Spec] = {
    "lps_int16_gz": Spec(),
    "lps_int16_nii": Spec(ext=".nii"),
    "ras_int16": Spec(flip=(False, False, False)),
    "lpi_reversed_slices": Spec(flip=(True, True, True)),
    "transposed_in_plane": Spec(perm=(1, 0, 2), flip=(False, True, False)),
    "axial_first": Spec(perm=(2, 0, 1), flip=(True, False, True), ext=".nii"),
    "coronal_order": Spec(perm=(0, 2, 1), flip=(False, False, True)),
    "uint16_slope_inter": Spec(dtype="uint16", slope=1.0, inter=-1024.0),
    "int16_slope_half": Spec(dtype="int16", slope=0.5, inter=0.0, ext=".nii"),
    "float32": Spec(dtype="float32"),
    "float64_ras": Spec(dtype="float64", flip=(False, False, False)),
    "pad_minus_3024": Spec(pad=-3024.0),
    "pad_minus_2048_uint16": Spec(pad=-2048.0, dtype="uint16", slope=1.0, inter=-2048.0),
    "singleton_4d": Spec(singleton_4d=True),
    "singleton_4d_transposed": Spec(singleton_4d=True, perm=(1, 2, 0), flip=(True, False, False)),
    "anisotropic_in_plane": Spec(zoom_xy=(0.6, 1.0)),
    "qform_only": Spec(sform_code=0),
    "sform_only": Spec(qform_code=0, sform_code=2),
    "oblique_10deg": Spec(rotate_deg=10.0),
    "non_square_64x48": Spec(crop=(None, 48)),
    "non_square_48x64_transposed": Spec(crop=(48, None), perm=(1, 0, 2), flip=(True, True, False)),
    "non_square_anisotropic_4d": Spec(crop=(None, 40), zoom_xy=(0.8, 1.3), singleton_4d=True),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Variant:
    """A written variant.

    Attributes:
      name: key of VARIANTS.
      volume_path: the CT file.
      label_path: its segmentation, stored the same way (uint8).
      reference: the canonical case the files must decode to (HU with padding applied).
      spec: how it was stored.
    """

    name: str
    volume_path: pathlib.Path
    label_path: pathlib.Path
    reference: Reference
    spec: Spec


def stored_layout(canonical: np.ndarray, perm, flip) -> np.ndarray:
    """Canonical (X, Y, Z) array -> stored array of layout (perm, flip)."""
    out = np.transpose(canonical, perm)
    for axis, f in enumerate(flip):
        if f:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def canonical_layout(stored: np.ndarray, perm, flip) -> np.ndarray:
    """Inverse of stored_layout (a trailing singleton 4th axis is dropped)."""
    if stored.ndim == 4:
        stored = stored[..., 0]
    for axis, f in enumerate(flip):
        if f:
            stored = np.flip(stored, axis)
    return np.ascontiguousarray(np.transpose(stored, np.argsort(perm)))


def stored_affine(canonical_affine: np.ndarray, canonical_shape, perm, flip) -> np.ndarray:
    """Affine of the stored array: canonical_affine @ (stored index -> canonical index)."""
    m = np.zeros((4, 4))
    m[3, 3] = 1
    for i, (axis, f) in enumerate(zip(perm, flip, strict=True)):
        m[axis, i] = -1.0 if f else 1.0
        if f:
            m[axis, 3] = canonical_shape[axis] - 1
    return canonical_affine @ m


def _save(path: pathlib.Path, data, affine, spec: Spec, scaled: bool) -> None:
    """Writes data exactly as given (no automatic scaling), with the header the spec asks for."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=spec.qform_code)
    img.set_sform(affine, code=spec.sform_code)
    raw = bytearray(img.to_bytes())
    if scaled and spec.slope is not None:
        # nibabel chooses its own scaling on save; patch the header to the exact slope / intercept.
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
        header.set_slope_inter(spec.slope, spec.inter)
        raw[:348] = header.binaryblock
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    else:
        path.write_bytes(bytes(raw))


def write_variant(ref: Reference, name: str, out_dir, case_id: int = 0) -> Variant:
    """Writes ``volume-<case_id>`` / ``segmentation-<case_id>`` of variant ``name`` into out_dir.

    Args:
      ref: the canonical case (e.g. phantom_reference()).
      name: a key of VARIANTS.
      out_dir: directory (created).
      case_id: N of the LiTS-style file names.

    Returns:
      The :class:`Variant`; its reference includes the variant's crop and padding.
    """
    spec = VARIANTS[name]
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.crop is not None:
        ref = crop_reference(ref, *spec.crop)
    hu = ref.hu.copy()
    if spec.pad is not None:
        nx, ny, _ = hu.shape
        xx, yy = np.meshgrid(
            np.arange(nx) - (nx - 1) / 2, np.arange(ny) - (ny - 1) / 2, indexing="ij"
        )
        outside = np.hypot(xx, yy) > min(nx, ny) / 2
        hu[outside] = spec.pad
    affine = ref.affine.copy()
    affine[:3, 0] *= spec.zoom_xy[0]
    affine[:3, 1] *= spec.zoom_xy[1]
    if spec.rotate_deg:
        t = np.radians(spec.rotate_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        affine = rot @ affine
    ref = Reference(hu, ref.labels, affine)

    if spec.slope is not None:
        raw = np.rint((hu - spec.inter) / spec.slope)
        assert np.array_equal(raw * spec.slope + spec.inter, hu), "scaling must be exact"
    else:
        raw = hu
    raw = raw.astype(spec.dtype)
    assert np.array_equal(raw.astype(np.float64) * (spec.slope or 1) + (spec.inter or 0), hu)
    stored_aff = stored_affine(affine, hu.shape, spec.perm, spec.flip)
    vol = stored_layout(raw, spec.perm, spec.flip)
    seg = stored_layout(ref.labels, spec.perm, spec.flip)
    if spec.singleton_4d:
        vol, seg = vol[..., None], seg[..., None]
    vol_path = out_dir / f"volume-{case_id}{spec.ext}"
    seg_path = out_dir / f"segmentation-{case_id}{spec.ext}"
    _save(vol_path, vol, stored_aff, spec, scaled=True)
    _save(seg_path, seg, stored_aff, spec, scaled=False)
    return Variant(name, vol_path, seg_path, ref, spec)


def model_grid(ref: Reference, image_size: int, hu_window=(-1024.0, 1024.0)):
    """Every canonical axial slice of ref on the model grid, by the training loader's own steps.

    Returns:
      (images (Z, S, S) float32, masks (Z, S, S) uint8).
    """
    hu = np.moveaxis(ref.hu, 2, 0)
    seg = np.moveaxis(ref.labels, 2, 0) > 0
    pp = preprocess
    images = pp.hu_to_unit(pp.pad_square(pp.display(hu), pp.AIR_HU), hu_window)
    images = pp.resize_images(images, int(image_size))
    masks = pp.resize_masks(pp.pad_square(pp.display(seg), False), int(image_size))
    return images.astype(np.float16).astype(np.float32), masks


class Oracle:
    """A score_fn that answers each slice with the resampled ground truth of *that* slice.

    It recognises a slice by its pixels (the model-grid image of every canonical slice of the
    reference, computed independently of cmseg_jax.data.nifti) and fails the test when a slice it is
    shown is not exactly one of them, i.e. when the forward path differs from the training loader's.

    Attributes:
      seen: canonical axial indices answered, in call order.
    """

    def __init__(self, ref: Reference, image_size: int, hu_window=(-1024.0, 1024.0)):
        self.images, self.masks = model_grid(ref, image_size, hu_window)
        self.seen: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        diff = np.abs(batch[:, None] - self.images[None]).max(axis=(2, 3))  # (B, Z)
        best = diff.argmin(axis=1)
        for b, z in enumerate(best):
            assert diff[b, z] == 0.0, f"slice {b} matches no reference slice (off by {diff[b, z]})"
            others = np.delete(diff[b], z)
            assert others.size == 0 or others.min() > 0, "ambiguous slice"
        self.seen.extend(int(z) for z in best)
        return self.masks[best].astype(np.float32)
