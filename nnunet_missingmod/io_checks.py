"""Checks of image files that nnU-Net's readers do not make, and writing a file so that no half-written one is
left behind."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

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


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name (``savefig``, SimpleITK ...);
    when the block ends without an error the file is renamed over ``path``, otherwise it is removed. Readers never
    see a half-written ``path``, and a failed write leaves an earlier ``path`` as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        _make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _make_readable(path: str) -> None:
    """mkstemp creates files as 0600; give the file the permissions of an ordinary new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
