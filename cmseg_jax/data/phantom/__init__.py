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
as many LiTS volumes are, so :func:`cmseg_jax.data.nifti.load_case` has to canonicalise to RAS+
(flip axes 0 and 1). Pixels are square with spacing ``fov / X`` for a field of view of 300-500 mm
fitted to the body (0.6-1.0 mm at 512 pixels; proportionally coarser at small test shapes); the
slice spacing is the z extent (230-320 mm) over Z (3.6-5 mm at 64 slices).

Speed: everything is vectorised numpy; organs are implicit functions evaluated on their bounding
boxes only. One 512 x 512 x 64 volume takes 1-3 s on one CPU core, one 128 x 128 x 48 volume ~0.2 s.

Modules: :mod:`.geometry` (grids, boxes, implicit shapes), :mod:`.body` (body wall, skeleton,
thorax), :mod:`.organs` (abdominal organs), :mod:`.tissues` (tissue ids and their CT intensities),
:mod:`.generate` (one volume); this module writes datasets as NIfTI files and caches them.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import nibabel as nib
import numpy as np

from cmseg_jax import io_utils
from cmseg_jax.data.phantom.generate import MIN_SIDE, generate_volume

logger = logging.getLogger(__name__)

# Bump whenever the generator's output changes, so cached datasets are regenerated (and update
# the checksum tests/test_phantom.py keeps for each version).
GENERATOR_VERSION = 2  # 2: files carry PHANTOM_DESCRIP
# NIfTI header ``descrip`` of every phantom file, so data built from it stay labelled synthetic.
PHANTOM_DESCRIP = "cmseg_jax synthetic CT phantom"


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
        for kind, data in (("volume", hu), ("segmentation", labels)):
            with io_utils.atomic_path(out_dir / f"{kind}-{n}.nii.gz") as tmp:
                nib.save(_nifti(data, affine), tmp)
    return out_dir


def cache_dir(cache_root=None) -> pathlib.Path:
    """Where phantom datasets are cached: ``<cache_root>/phantom``.

    Args:
      cache_root: cmseg_jax's cache root; None means :func:`cmseg_jax.io_utils.default_cache_root`
        (``$CMSEG_CACHE`` or ``~/.cache/cmseg_jax``).
    """
    root = io_utils.default_cache_root() if cache_root is None else pathlib.Path(cache_root)
    return root / "phantom"


_MANIFEST = "phantom.json"


def ensure_phantom(
    cache_root=None, num_volumes: int = 20, shape=(512, 512, 64), seed: int = 0
) -> pathlib.Path:
    """Returns a complete phantom dataset directory, generating it on first use.

    The directory is ``<cache_root>/lits-phantom-v<GENERATOR_VERSION>-n<num>-<X>x<Y>x<Z>-s<seed>``.
    A dataset is complete when its manifest exists; it is written into a temporary sibling
    directory and renamed into place, so concurrent callers and interrupted runs never see a
    partial dataset (the loser of a race discards its copy).

    Args:
      cache_root: parent directory; None means :func:`cache_dir`.
      num_volumes: number of volumes.
      shape: (X, Y, Z) voxels per volume.
      seed: dataset seed.

    Returns:
      Path of the dataset directory.
    """
    root = pathlib.Path(cache_root).expanduser() if cache_root is not None else cache_dir()
    shape = tuple(int(s) for s in shape)
    key = f"lits-phantom-v{GENERATOR_VERSION}-n{num_volumes}-{'x'.join(map(str, shape))}-s{seed}"
    final = root / key
    if (final / _MANIFEST).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    io_utils.remove_orphans(root, min_age_s=24 * 3600)  # left by generators killed long ago
    logger.info("Generating %d phantom volumes of shape %s in %s", num_volumes, shape, final)
    manifest = dict(
        generator_version=GENERATOR_VERSION, num_volumes=num_volumes, shape=list(shape), seed=seed
    )
    try:
        with io_utils.atomic_path(final) as tmp:
            write_phantom_dataset(tmp, num_volumes=num_volumes, shape=shape, seed=seed)
            io_utils.write_text(tmp / _MANIFEST, json.dumps(manifest, indent=1) + "\n")
            if final.exists() and not (final / _MANIFEST).is_file():
                shutil.rmtree(final, ignore_errors=True)  # debris without a manifest: not ours
    except OSError:
        # Another process finished first (a directory cannot replace a non-empty one).
        if not (final / _MANIFEST).is_file():
            raise
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
