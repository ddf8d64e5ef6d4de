"""``data.source='msd'``: the Medical Segmentation Decathlon's ``Task03_Liver`` and nnU-Net's raw
dataset layout, read with LiTS' protocol.

Two layouts of one directory (``data.dir``), told apart by its ``dataset.json``:

* **MSD** (``Task03_Liver/``; the task is LiTS' 131 training volumes, ``liver_N`` = LiTS'
  ``volume-N``): ``imagesTr/liver_N.nii.gz``, ``labelsTr/liver_N.nii.gz`` and a ``dataset.json``
  with ``modality`` ({"0": "CT"}) and ``labels`` ({"0": "background", "1": "liver", "2":
  "cancer"}). The archive's macOS debris (``imagesTr/._liver_0.nii.gz``) is skipped, as every
  hidden file is.
* **nnU-Net raw** (``DatasetXXX_Liver/``, what ``nnUNetv2_convert_MSD_dataset`` writes):
  ``imagesTr/<case>_0000<file_ending>``, ``labelsTr/<case><file_ending>`` and a ``dataset.json``
  with ``channel_names`` ({"0": "CT"}), ``labels`` ({"background": 0, "liver": 1, "tumor": 2}) and
  ``file_ending`` (``.nii.gz`` or ``.nii``).

A case is split and sampled by the number its name ends with (``liver_17`` and ``liver_17_0000``
are case 17), so the split by volume, the slices drawn from each volume and therefore the arrays
are those LiTS' ``volume-N`` files give (tested on the phantom written in all three layouts). One
CT channel is read; labels must be background 0, liver 1 and optionally tumour 2 (tumour counts as
liver, as for LiTS); anything else is refused in one line naming ``dataset.json``.

``predict`` on ``imagesTs/`` (a directory beside ``dataset.json``) follows nnU-Net's output
naming: ``case_0000.nii.gz`` is written as ``case.nii.gz`` and matched with the label
``labelsTr/case.nii.gz``.
``python -m cmseg_jax.data.check`` checks either layout, and

    python -m cmseg_jax.data.msd LITS_DIR OUT_DIR [--layout msd|nnunet]

writes a LiTS-format directory (LiTS itself, or ``python -m cmseg_jax.data.phantom``'s output) in
either layout (hard links where the file system allows, else copies).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import sys

from cmseg_jax import io_utils
from cmseg_jax.data import lits, nifti, sources
from cmseg_jax.data.lits import Layout
from cmseg_jax.data.nifti import data_error

DATASET_JSON = "dataset.json"
ENDINGS = (".nii.gz", ".nii")
LIVER_LABELS = {0: "background", 1: "liver", 2: "tumour"}
_NUMBER = re.compile(r"(\d+)$")
_CHANNEL = re.compile(r"_(\d{4})$")


def _description(data_dir: pathlib.Path) -> tuple[dict | None, str | None]:
    """(dataset.json's content, None) or (None, the one-line problem)."""
    path = data_dir / DATASET_JSON
    try:
        content = json.loads(path.read_text())
    except OSError as e:
        return None, str(data_error(path, e.strerror or "unreadable"))
    except ValueError as e:
        return None, str(data_error(path, f"not valid JSON ({e})"))
    if not isinstance(content, dict):
        return None, str(data_error(path, "must hold a JSON object"))
    return content, None


def is_nnunet(content: dict) -> bool:
    """nnU-Net v2 names its channels ``channel_names``; MSD's ``modality``."""
    return "channel_names" in content


def _check_description(path: pathlib.Path, content: dict) -> tuple[str | None, str]:
    """(the problem with dataset.json or None, the image file ending)."""
    nnunet = is_nnunet(content)
    channels = content.get("channel_names" if nnunet else "modality", {"0": "CT"})
    if not isinstance(channels, dict) or len(channels) != 1:
        n = len(channels) if isinstance(channels, dict) else channels
        return f"{path}: {n} channels; the liver model reads one CT channel", ".nii.gz"
    labels = content.get("labels")
    if not isinstance(labels, dict):
        return f"{path}: 'labels' missing or not an object", ".nii.gz"
    pairs = labels.items() if nnunet else ((v, k) for k, v in labels.items())
    values = {}
    for name, value in pairs:
        try:
            if isinstance(value, bool) or isinstance(value, list | dict):
                raise ValueError
            values[int(value)] = name
        except (TypeError, ValueError):
            return f"{path}: label {name!r} = {value!r} is not one integer value", ".nii.gz"
    if 0 not in values or 1 not in values or not set(values) <= set(LIVER_LABELS):
        return (
            f"{path}: labels {dict(sorted(values.items()))}; the loader reads 0 background, "
            "1 liver and optionally 2 tumour",
            ".nii.gz",
        )
    ending = content.get("file_ending", ".nii.gz") if nnunet else ".nii.gz"
    if ending not in ENDINGS:
        return f"{path}: file_ending {ending!r}; only NIfTI (.nii.gz, .nii) is read", ".nii.gz"
    return None, ending


def detect(directory) -> bool:
    """A directory with ``dataset.json`` and ``imagesTr/`` (MSD or nnU-Net raw)."""
    directory = pathlib.Path(directory)
    return (directory / DATASET_JSON).is_file() and (directory / "imagesTr").is_dir()


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
    if not directory.is_dir():
        return []
    return [
        p
        for p in sorted(directory.iterdir())
        if not p.name.startswith(".") and p.name.endswith(ENDINGS)
    ]


def _strip(name: str) -> str:
    for ending in ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def scan_cases(data_dir) -> Layout:
    """The cases of an MSD or nnU-Net raw directory, every problem listed (as
    :func:`cmseg_jax.data.lits.scan_cases` does for LiTS' layout).

    Returns:
      The :class:`~cmseg_jax.data.lits.Layout`: [(case number, image, label or None)].
    """
    data_dir = pathlib.Path(data_dir)
    errors, warnings = [], []
    if not data_dir.is_dir():
        return Layout([], [str(data_error(data_dir, "not a directory"))], [])
    content, problem = _description(data_dir)
    if problem is None:
        problem, _ = _check_description(data_dir / DATASET_JSON, content)
    if problem is not None:
        return Layout([], [problem], [])
    nnunet = is_nnunet(content)
    images: dict[int, pathlib.Path] = {}
    for path in _files(data_dir / "imagesTr"):
        stem = _strip(path.name)
        if nnunet:
            channel = _CHANNEL.search(stem)
            if channel is None:
                errors.append(str(data_error(path, "no _0000 channel suffix (nnU-Net naming)")))
                continue
            if channel.group(1) != "0000":
                errors.append(str(data_error(path, "a second channel; one CT channel is read")))
                continue
            stem = stem[: channel.start()]
        number = _NUMBER.search(stem)
        if number is None:
            errors.append(str(data_error(path, f"case {stem!r} does not end in a number")))
            continue
        n = int(number.group(1))
        if n in images:
            errors.append(str(data_error(path, f"a second image of case {n} (also {images[n]})")))
            continue
        images[n] = path
    labels: dict[int, pathlib.Path] = {}
    for path in _files(data_dir / "labelsTr"):
        number = _NUMBER.search(_strip(path.name))
        if number is not None:
            labels[int(number.group(1))] = path
    for n in sorted(set(labels) - set(images)):
        warnings.append(f"{labels[n]}: warning: no image of this case; ignored by the loader")
    if not images and not errors:
        errors.append(str(data_error(data_dir / "imagesTr", "no .nii.gz or .nii images found")))
    cases = []
    for n in sorted(images):
        if n not in labels:
            errors.append(str(data_error(images[n], f"no label under {data_dir / 'labelsTr'}")))
        cases.append((n, images[n], labels.get(n)))
    declared = content.get("numTraining")
    if isinstance(declared, int) and declared != len(images):
        warnings.append(
            f"{data_dir / DATASET_JSON}: warning: numTraining {declared}, "
            f"{len(images)} images found"
        )
    return Layout(cases, errors, warnings)


def case_name(stem: str) -> str:
    """nnU-Net's output naming: ``case_0000`` -> ``case`` (other names are kept)."""
    channel = _CHANNEL.search(stem)
    return stem[: channel.start()] if channel and channel.group(1) == "0000" else stem


def _load(config, cache_root: pathlib.Path, sampling: dict):
    data_dir = pathlib.Path(config.data.dir).expanduser()
    splits = lits.load_splits(
        data_dir, cache_dir=cache_root / "slices", scan=scan_cases, **sampling
    )
    content, _ = _description(data_dir)
    kind = "nnU-Net raw" if content and is_nnunet(content) else "MSD"
    return splits, f"{kind} liver volumes from {data_dir}"


def _volumes(config) -> int:
    """dataset.json's numTraining where it can be read, else LiTS' 131."""
    content, _ = _description(pathlib.Path(config.data.dir).expanduser())
    declared = (content or {}).get("numTraining")
    return declared if isinstance(declared, int) and declared > 0 else sources.LITS_VOLUMES


SOURCE = sources.Source(
    name="msd",
    summary="MSD Task03_Liver or an nnU-Net raw dataset (dataset.json, imagesTr/, labelsTr/)",
    load=_load,
    volumes=_volumes,
    where=lambda config: str(pathlib.Path(config.data.dir).expanduser()),
    check=sources.needs_dir("msd", "Task03_Liver"),
    scan=scan_cases,
    detect=detect,
    case_name=case_name,
)


# ----------------------------------------------------------------------------------------------
# Writing a LiTS-format directory in either layout.


def _place(src: pathlib.Path, dst: pathlib.Path) -> None:
    with io_utils.atomic_path(dst) as tmp:
        try:
            tmp.hardlink_to(src)
        except OSError:
            shutil.copyfile(src, tmp)


def write_layout(lits_dir, out_dir, layout: str = "msd", name: str = "Liver") -> pathlib.Path:
    """Writes the cases of a LiTS-format directory as an MSD or nnU-Net raw dataset.

    Args:
      lits_dir: ``volume-N`` / ``segmentation-N`` files (LiTS, or the phantom).
      out_dir: the dataset directory to write (``imagesTr/``, ``labelsTr/``, ``dataset.json``).
      layout: 'msd' (``liver_N.nii.gz``) or 'nnunet' (``liver_N_0000.nii.gz``).
      name: the dataset's name in dataset.json.

    Returns:
      out_dir as a Path.
    """
    if layout not in ("msd", "nnunet"):
        raise ValueError(f"layout must be 'msd' or 'nnunet', got {layout!r}")
    cases = lits.find_cases(lits_dir)
    out_dir = pathlib.Path(out_dir)
    endings = {
        ".nii.gz" if path.name.endswith(".gz") else ".nii" for case in cases for path in case[1:]
    }
    if layout == "nnunet" and len(endings) > 1:
        raise nifti.DataError(f"{lits_dir}: .nii and .nii.gz mixed; nnU-Net needs one file_ending")
    for sub in ("imagesTr", "labelsTr"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for n, vol, seg in cases:
        ending = ".nii.gz" if vol.name.endswith(".gz") else ".nii"
        seg_ending = ".nii.gz" if seg.name.endswith(".gz") else ".nii"
        image = f"liver_{n}_0000{ending}" if layout == "nnunet" else f"liver_{n}{ending}"
        _place(vol, out_dir / "imagesTr" / image)
        _place(seg, out_dir / "labelsTr" / f"liver_{n}{seg_ending}")
        training.append(
            {"image": f"./imagesTr/liver_{n}{ending}", "label": f"./labelsTr/liver_{n}{seg_ending}"}
        )
    if layout == "nnunet":
        description = {
            "name": name,
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "liver": 1, "tumor": 2},
            "numTraining": len(cases),
            "file_ending": endings.pop() if endings else ".nii.gz",
        }
    else:
        description = {
            "name": name,
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "liver", "2": "cancer"},
            "numTraining": len(cases),
            "numTest": 0,
            "training": training,
            "test": [],
        }
    io_utils.write_text(out_dir / DATASET_JSON, json.dumps(description, indent=1) + "\n")
    return out_dir


def main(argv=None) -> int:
    """``python -m cmseg_jax.data.msd LITS_DIR OUT_DIR [--layout msd|nnunet]``."""
    from cmseg_jax import errors

    parser = errors.ArgumentParser(
        prog="python -m cmseg_jax.data.msd",
        description="Write a LiTS-format directory as an MSD or nnU-Net raw liver dataset.",
    )
    parser.add_argument("lits_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--layout", choices=("msd", "nnunet"), default="msd")
    args = parser.parse_args(argv)

    def body(args) -> int:
        out = write_layout(args.lits_dir, args.out_dir, args.layout)
        print(f"wrote {args.layout} layout to {out}")
        return 0

    return errors.run_main(body, args)


if __name__ == "__main__":
    sys.exit(main())
