"""Discovery of a case's sequences: a file that is named but cannot be read (a broken symbolic link) is an error
for its case, naming the file, never a missing sequence (issue 32)."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.inference.case import CaseReader
from nnunet_missingmod.inference.discovery import discover_cases, restrict_to
from nnunet_missingmod.modalities import parse_subset

CHANNELS = ("T1", "T1ce", "T2", "FLAIR")


def write_image(path, seed=0):
    image = sitk.GetImageFromArray(np.random.default_rng(seed).random((6, 8, 8)).astype(np.float32))
    sitk.WriteImage(image, str(path))


def raw_case(folder, broken):
    """CASE_0000/1/3 real files; CASE_0002 (T2) a dangling link or a link to itself."""
    folder.mkdir()
    for channel in (0, 1, 3):
        write_image(folder / f"CASE_{channel:04d}.nii.gz", channel)
    link = folder / "CASE_0002.nii.gz"
    os.symlink(folder / "gone.nii.gz" if broken == "dangling" else link, link)
    return link


@pytest.mark.parametrize("broken", ["dangling", "loop"])
def test_broken_link_is_not_a_missing_sequence(tmp_path, broken):
    link = raw_case(tmp_path / "in", broken)
    case, = discover_cases(str(tmp_path / "in"), CHANNELS)
    assert case.files["T2"] == str(link)  # named, so not absent
    reader = CaseReader(SimpleNamespace(image_reader_writer_class=SimpleITKIO), CHANNELS)
    with pytest.raises(MissingModError, match=r"case CASE: .*CASE_0002\.nii\.gz is a broken symbolic link"):
        reader.load(case)
    # left out by --modalities, it is not read
    loaded = reader.load(restrict_to(case, parse_subset("T1,T1ce,FLAIR")))
    assert loaded.subset.name == parse_subset("T1,T1ce,FLAIR").name


def test_broken_link_in_a_brats_case_folder(tmp_path):
    folder = tmp_path / "in" / "BraTS2021_00001"
    folder.mkdir(parents=True)
    write_image(folder / "BraTS2021_00001_t1.nii.gz")
    os.symlink(folder / "gone.nii.gz", folder / "BraTS2021_00001_t2.nii.gz")
    case, = discover_cases(str(tmp_path / "in"), CHANNELS)
    assert set(case.files) == {"T1", "T2"}
