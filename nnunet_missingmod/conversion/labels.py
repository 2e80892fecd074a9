"""Label maps: original values of a format <-> the nnU-Net labels of the converted dataset, and ``labels-back``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping

import numpy as np

from nnunet_missingmod.conversion.formats import (
    DatasetFormat, get_format, nnunet_label_of_value, original_value_of_label)
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.atomic_io import atomic_output
from nnunet_missingmod.nifti_checks import NIFTI_ENDINGS, read_label_map


def remap_labels(values: np.ndarray, mapping: Mapping[int, int], where: str, allowed_text: str) -> np.ndarray:
    """Apply ``mapping`` (old value -> new value) to an integer-valued label array, as uint8.

    Raises :class:`MissingModError` naming ``where`` and the offending values if the array holds a value that is
    not a key of ``mapping`` or a non-integer value.
    """
    found = np.unique(values)
    non_integer = [v for v in found if not float(v).is_integer()]
    if non_integer:
        raise MissingModError(f"{where}: non-integer label value(s) {_format_values(non_integer)}; "
                              f"expected {allowed_text}")
    unexpected = [int(v) for v in found if int(v) not in mapping]
    if unexpected:
        raise MissingModError(f"{where}: unexpected label value(s) {_format_values(unexpected)}; "
                              f"expected {allowed_text}")
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for old, new in mapping.items():
        lookup[old] = new
    return lookup[values.astype(np.int64)]


def _format_values(values: List) -> str:
    shown = ", ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values[:10])
    return shown + (f" ... ({len(values)} values)" if len(values) > 10 else "")


def to_nnunet_labels(values: np.ndarray, fmt: DatasetFormat, keep_rc: bool, where: str) -> np.ndarray:
    """Original label values of ``fmt`` -> nnU-Net labels (0 bg, 1 oedema, 2 NCR/NET, 3 ET, 4 RC if kept)."""
    allowed = fmt.labels.label_values
    return remap_labels(values, nnunet_label_of_value(fmt.labels, keep_rc), where,
                        f"only {', '.join(map(str, allowed))} for {fmt.key}")


def to_original_labels(values: np.ndarray, fmt: DatasetFormat, where: str) -> np.ndarray:
    """nnU-Net labels -> original label values of ``fmt`` (for challenge submission)."""
    mapping = original_value_of_label(fmt.labels)
    return remap_labels(values, mapping, where,
                        f"nnU-Net labels {', '.join(map(str, sorted(mapping)))} of a converted {fmt.key} dataset")


def prediction_files(pred_dir: Path) -> List[Path]:
    """NIfTI files of a prediction folder (hidden files skipped), sorted."""
    return sorted(p for p in pred_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_ENDINGS))


def convert_labels_back(fmt_key: str, pred_dir: os.PathLike, out_dir: os.PathLike,
                        progress: bool = True) -> Dict[str, Path]:
    """Write every prediction of ``pred_dir`` to ``out_dir`` with the original label values of the format.

    File names and geometry are kept. Returns {input file name: written path}.
    """
    import SimpleITK as sitk
    from tqdm import tqdm

    fmt = get_format(fmt_key)
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    if not pred_dir.is_dir():
        raise MissingModError(f"prediction folder {str(pred_dir)!r} does not exist")
    if out_dir.resolve() == pred_dir.resolve():
        raise MissingModError(f"output folder {str(out_dir)!r} must differ from the prediction folder: converting "
                              f"in place would make a second run map the labels twice")
    files = prediction_files(pred_dir)
    if not files:
        raise MissingModError(f"no .nii.gz or .nii predictions in {str(pred_dir)!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every prediction is read and checked before anything is written: a bad prediction leaves the files of an
    # earlier run as they were. Each file is then written atomically (atomic_io.atomic_output).
    converted = []
    for path in tqdm(files, desc=f"labels-back {fmt.key}", disable=not progress):
        values, image = read_label_map(str(path), "prediction")
        original = to_original_labels(values, fmt, where=f"prediction {str(path)!r}")
        converted.append((path, image, original))
    written = {}
    for path, image, original in converted:
        out_image = sitk.GetImageFromArray(original)
        out_image.CopyInformation(image)
        target = out_dir / path.name
        with atomic_output(str(target)) as tmp:
            sitk.WriteImage(out_image, tmp, useCompression=True)
        written[target.name] = target
    return written
