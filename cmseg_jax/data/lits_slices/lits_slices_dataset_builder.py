"""TFDS builder of the thesis' LiTS slice set (array_record, readable without TensorFlow).

Every example is one axial slice, produced by :func:`cmseg_jax.data.lits.sample_case`, the same
function the plain NIfTI loader (:func:`cmseg_jax.data.lits.load_splits`) uses, so both sources
give identical arrays for the same files and parameters. Splits are by volume; examples are
written in (volume id, slice index) order (``disable_shuffling``), the loader's order.

Build (no TensorFlow needed; the second form is TFDS' own CLI where TensorFlow is installed)::

    python -m cmseg_jax.data.tfds_build --manual_dir /data/LiTS --data_dir ~/tensorflow_datasets \\
        --config s128-l8-b8-seed0
    tfds build cmseg_jax/data/lits_slices --manual_dir /data/LiTS --file_format array_record ...

A config is named after its parameters (``s{image_size}-l{liver}-b{background}-seed{split_seed}``,
plus ``-x{hash}`` when the fractions or the HU window differ from the thesis'); any other
parameter set is a JSON config, e.g. ``--config '{"image_size": 256}'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from cmseg_jax.data import lits, phantom

# Split names in TFDS (``validation`` by its convention) -> the loader's names.
SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}
# The protocol's defaults (the thesis' values) live in cmseg_jax.data.lits.
_THESIS = lits.sampling_params()
THESIS_FRACTIONS = _THESIS["fractions"]
THESIS_WINDOW = _THESIS["hu_window"]
PARAM_FIELDS = (
    "image_size",
    "liver_slices",
    "background_slices",
    "split_seed",
    "fractions",
    "hu_window",
)

_MANUAL = """\
Download LiTS (the Liver Tumor Segmentation Challenge's 131 training volumes, e.g. from the
challenge site or its Kaggle mirror) and place the files in the manual directory, any layout:
`volume-N.nii` and `segmentation-N.nii` (`.nii.gz` too), matched by N. Check them with
`python -m cmseg_jax.data.check DIR` first. Any LiTS-format directory works, including the
embedded phantom (`python -m cmseg_jax.data.phantom OUT_DIR`).
"""


def config_name(
    image_size, liver_slices, background_slices, split_seed, fractions, hu_window
) -> str:
    """The config name of a parameter set (see module docstring)."""
    name = f"s{int(image_size)}-l{int(liver_slices)}-b{int(background_slices)}"
    name += f"-seed{int(split_seed)}"
    fractions = tuple(float(f) for f in fractions)
    hu_window = tuple(float(w) for w in hu_window)
    if fractions != THESIS_FRACTIONS or hu_window != THESIS_WINDOW:
        blob = json.dumps([fractions, hu_window])
        name += "-x" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    return name


@dataclasses.dataclass(eq=False)
class LitsSlicesConfig(tfds.core.BuilderConfig):
    """Sampling parameters of :func:`cmseg_jax.data.lits.load_splits`; ``name`` defaults to
    :func:`config_name` of them."""

    name: str = ""
    image_size: int = _THESIS["image_size"]
    liver_slices: int = _THESIS["liver_slices"]
    background_slices: int = _THESIS["background_slices"]
    split_seed: int = _THESIS["split_seed"]
    fractions: tuple[float, float, float] = THESIS_FRACTIONS
    hu_window: tuple[float, float] = THESIS_WINDOW

    def __post_init__(self):
        self.fractions = tuple(float(f) for f in self.fractions)
        self.hu_window = tuple(float(w) for w in self.hu_window)
        if not self.name:
            self.name = config_name(*(getattr(self, f) for f in PARAM_FIELDS))
        if not self.description:
            self.description = (
                f"{self.image_size}x{self.image_size} slices, {self.liver_slices} liver + "
                f"{self.background_slices} background per volume, split seed {self.split_seed}, "
                f"fractions {self.fractions}, HU window {self.hu_window}"
            )

    def params(self) -> dict:
        """The sampling parameters as JSON-ready values (stored as the dataset's metadata)."""
        return {f: getattr(self, f) for f in PARAM_FIELDS} | {
            "fractions": list(self.fractions),
            "hu_window": list(self.hu_window),
        }


class Builder(tfds.core.GeneratorBasedBuilder):
    """LiTS axial slices following the thesis' protocol (``cmseg_jax.data.lits``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    BUILDER_CONFIGS = [
        LitsSlicesConfig(description="Thesis size (configs/*.py): 512x512, 10 + 10 per volume."),
        LitsSlicesConfig(
            image_size=128,
            liver_slices=8,
            background_slices=8,
            description="The ':cpu' config variant: 128x128, 8 + 8 per volume.",
        ),
        LitsSlicesConfig(
            image_size=32,
            liver_slices=2,
            background_slices=2,
            description="The ':tiny' config variant: 32x32, 2 + 2 per volume.",
        ),
    ]

    def __init__(self, *, file_format=None, **kwargs):
        # array_record (random access, no TensorFlow) unless a format is asked for explicitly.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        size = (cfg.image_size, cfg.image_size)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Axial CT slices of LiTS-format volumes (volume-N / segmentation-N), split by "
                "volume into train / validation / test, with a fixed number of slices with and "
                "without liver drawn per volume; images windowed to [-1, 1] (float16), masks "
                "1 = liver (tumour counted as liver), label = slice contains liver."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=size, dtype=np.float16),
                    "mask": tfds.features.Tensor(shape=size, dtype=np.uint8),
                    "label": tfds.features.Scalar(dtype=np.int32),
                    "volume_id": tfds.features.Scalar(dtype=np.int32),
                    "slice_index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            homepage="https://competitions.codalab.org/competitions/17094",
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(params=cfg.params()),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        manual_dir = pathlib.Path(str(dl_manager.manual_dir)).resolve()
        cases = lits.find_cases(manual_dir)
        split = lits.split_cases([c[0] for c in cases], cfg.fractions, cfg.split_seed)
        by_id = {c[0]: c for c in cases}
        # Provenance, saved in metadata.json next to the parameters.
        self.info.metadata["source_dir"] = str(manual_dir)
        self.info.metadata["synthetic_phantom"] = all(phantom.is_phantom_file(c[1]) for c in cases)
        self.info.metadata["volumes"] = {
            name: [int(i) for i in split[name]] for name in SPLIT_NAMES.values()
        }
        return {
            tfds_name: self._generate_examples([by_id[i] for i in split[name]])
            for tfds_name, name in SPLIT_NAMES.items()
            if split[name]
        }

    def _generate_examples(self, cases):
        cfg = self.builder_config
        for case_id, volume_path, seg_path in cases:
            arrays = lits.sample_case(
                case_id,
                volume_path,
                seg_path,
                image_size=cfg.image_size,
                split_seed=cfg.split_seed,
                liver_slices=cfg.liver_slices,
                background_slices=cfg.background_slices,
                hu_window=cfg.hu_window,
            )
            for i, z in enumerate(arrays["slice_index"]):
                yield (
                    f"{case_id:06d}-{int(z):06d}",
                    {
                        "image": arrays["images"][i].astype(np.float16),
                        "mask": arrays["masks"][i],
                        "label": arrays["labels"][i],
                        "volume_id": arrays["volume_ids"][i],
                        "slice_index": z,
                    },
                )
