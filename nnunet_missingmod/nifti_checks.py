"""Checks of NIfTI image files that nnU-Net's readers do not make (truncated files, NaN/Inf voxels), and the
geometry tolerance that the converter, the predictor and the scorer share."""
from __future__ import annotations

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


def check_nifti_data(path: str, what: str = "") -> None:
    """Raise :class:`MissingModError` if a NIfTI file is truncated or holds NaN/Inf voxels.

    SimpleITK (nnU-Net's default reader) reads a truncated ``.nii.gz`` without complaint and returns NaN voxels as
    0, so both are checked on the stored data with nibabel. Other formats are left to the reader.
    """
    if not str(path).endswith(NIFTI_ENDINGS):
        return
    import nibabel as nib
    prefix = f"{what}: " if what else ""
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:
        raise MissingModError(f"{prefix}cannot read {path} (truncated or corrupt?): {error_reason(e)}") from None
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            raise MissingModError(f"{prefix}{path} has {n_bad} NaN/Inf voxels")
