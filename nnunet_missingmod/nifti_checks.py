"""Checks of NIfTI image files that nnU-Net's readers do not make (broken links, truncated files, NaN/Inf voxels,
values that become Inf in float32), the one reader of label maps that every command uses
(:func:`read_label_map`), and the geometry tolerance that the converter, the predictor and the scorer share."""
from __future__ import annotations

import os
from typing import Any, Collection, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_missingmod.errors import MissingModError

NIFTI_ENDINGS = (".nii", ".nii.gz")
GEOMETRY_ATOL = 1e-3
"""Tolerance in mm (spacing, origin) and in direction cosines when files must share one geometry: the same in the
converter, the predictor and the scorer, so that what converts also predicts and scores."""


def error_reason(error: BaseException) -> str:
    """The last line of an exception's message (ITK's are long), or its type if it has none."""
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


FLOAT32_MAX = float(np.finfo(np.float32).max)


def broken_link_reason(path: str) -> Optional[str]:
    """Why ``path`` names a file that cannot be opened although its name exists (a dangling symbolic link, a link
    loop), or ``None``. Such a file is an error, never an absent one: ``os.path.isfile`` is False for it."""
    path = str(path)
    if os.path.islink(path) and not os.path.exists(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"{path} is a broken symbolic link (to {target!r})"
    return None


def check_readable_file(path: str, what: str = "") -> None:
    """Raise :class:`MissingModError` if ``path`` is a broken symbolic link (see :func:`broken_link_reason`)."""
    reason = broken_link_reason(path)
    if reason:
        raise MissingModError(f"{what}: {reason}" if what else reason)


def check_nifti_data(path: str, what: str = "") -> None:
    """Raise :class:`MissingModError` if a file is a broken link, or a NIfTI file is truncated, holds NaN/Inf
    voxels or values that nnU-Net's float32 turns into Inf (e.g. float64 near 1e303).

    SimpleITK (nnU-Net's default reader) reads a truncated ``.nii.gz`` without complaint and returns NaN voxels as
    0, so both are checked on the stored data with nibabel. Other formats are left to the reader.
    """
    check_readable_file(path, what)
    if not str(path).endswith(NIFTI_ENDINGS):
        return
    read_nifti_data(path, what)


def read_nifti_data(path: str, what: str = "") -> np.ndarray:
    """The stored (scaled) voxels of a NIfTI file in nibabel's axis order, after the checks of
    :func:`check_nifti_data` (a broken link, a truncated file, NaN/Inf voxels, values beyond float32)."""
    import nibabel as nib
    check_readable_file(path, what)
    prefix = f"{what}: " if what else ""
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:
        raise MissingModError(f"{prefix}cannot read {path} (truncated or corrupt?): {error_reason(e)}") from None
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            raise MissingModError(f"{prefix}{path} has {n_bad} NaN/Inf voxels")
        if data.dtype.itemsize > 4:
            n_big = int(np.count_nonzero(np.abs(data) > FLOAT32_MAX))
            if n_big:
                raise MissingModError(f"{prefix}{path} has {n_big} voxel(s) beyond the float32 range "
                                      f"(|value| > {FLOAT32_MAX:.4g}), which nnU-Net reads as Inf")
    return data


# ------------------------------------------------------------------------------------------------- label maps
def read_label_map(path: str, what: str = "label map", labels: Optional[Collection[int]] = None,
                   conventions: Optional[Mapping[str, Collection[int]]] = None, hint: str = ""
                   ) -> Tuple[np.ndarray, Any]:
    """Read a label map with SimpleITK after the checks of :func:`check_nifti_data`; the one reader of label
    maps (``score``, ``evaluate``'s ground truth, ``et-rule``, ``labels-back``, ``convert``).

    Args:
        path: the file.
        what: what it is, for messages ("prediction", "ground truth", ...).
        labels: the label values the file may hold (``None``: any integer value).
        conventions: other label conventions by name (e.g. ``{"brats2021": (0, 1, 2, 4)}``): when the values are
            not ``labels`` but fit one of these, the message names it.
        hint: how to use such a convention, ``{name}`` replaced by its name (e.g. ``"use --format {name}"``).
    Returns:
        ``(labels, image)``: an integer array in numpy axis order ``(z, y, x)`` and the SimpleITK image (geometry).
    Raises:
        :class:`MissingModError` naming the file: unreadable, truncated, not one component per voxel, non-integer
        values, or values that are not ``labels`` (listing those found).
    """
    import SimpleITK as sitk
    check_nifti_data(str(path), what)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise MissingModError(f"{what}: cannot read {path}: {error_reason(e)}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MissingModError(f"{what} {path}: a label map must have one component per voxel, "
                              f"got {image.GetNumberOfComponentsPerPixel()}")
    values = sitk.GetArrayFromImage(image)
    if values.dtype.kind == "f":
        found = np.unique(values)
        non_integer = [float(v) for v in found if not float(v).is_integer()]
        if non_integer:
            raise MissingModError(f"{what} {path}: non-integer label value(s) {format_values(non_integer)}"
                                  + (f"; expected {format_values(sorted(labels))}" if labels is not None else ""))
        values = values.astype(np.int32)
    if labels is not None:
        check_label_values(_distinct_values(values), path, what, labels, conventions, hint)
    return values, image


def _distinct_values(values: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array (a count per value where they are small: faster than sorting)."""
    if values.size and values.dtype.kind in "iub" and 0 <= values.min() and values.max() < 1 << 16:
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def check_label_values(found: Sequence[Any], path: str, what: str, labels: Collection[int],
                       conventions: Optional[Mapping[str, Collection[int]]] = None, hint: str = "") -> None:
    """Raise :class:`MissingModError` if the values ``found`` in ``path`` are not all in ``labels`` (see
    :func:`read_label_map`)."""
    allowed = {int(v) for v in labels}
    found_set = {int(v) for v in found}
    unexpected = sorted(found_set - allowed)
    if not unexpected:
        return
    message = (f"{what} {path}: unexpected label value(s) {format_values(unexpected)} (found "
               f"{format_values(sorted(found_set))}); expected only {format_values(sorted(allowed))}")
    for name, values in (conventions or {}).items():
        if found_set <= {int(v) for v in values} and not found_set <= allowed:
            message += f"; these look like {name} labels" + (f": {hint.format(name=name)}" if hint else "")
            break
    raise MissingModError(message)


def format_values(values: Sequence[Any], limit: int = 10) -> str:
    """``0, 1, 2, 4`` (integers without a decimal point), at most ``limit`` of them."""
    shown = ", ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in list(values)[:limit])
    return shown + (f" ... ({len(values)} values)" if len(values) > limit else "")
