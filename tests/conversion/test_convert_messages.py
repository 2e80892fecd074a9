"""What ``convert`` says about a bad target or odd source files: one line and exit code 2 for an ``$nnUNet_raw``
that cannot be written, the odd file out named when a case's files disagree, and a warning (not an error) for an
all-zero sequence. Phantom cases at 9 mm (about 22 x 26 x 21 voxels)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from read_only_helpers import run_in_read_only_folder

from nnunet_missingmod.cli import main
from nnunet_missingmod.conversion.convert import convert_dataset
from nnunet_missingmod.conversion.phantom import write_phantom_dataset
from nnunet_missingmod.errors import MissingModError

SPACING_MM = 9.0


def _phantom(tmp_path: Path, n: int = 1):
    source = tmp_path / "source"
    cases = write_phantom_dataset(source, n, "brats2021", spacing=SPACING_MM, progress=False)
    return source, cases


def _sequence_file(source: Path, case_id: str, suffix: str) -> Path:
    return source / case_id / f"{case_id}_{suffix}.nii.gz"


def _problems(error: pytest.ExceptionInfo) -> list:
    return [line.strip() for line in str(error.value).splitlines()[1:]]


# ------------------------------------------------------------------------------------------------ the target
def test_nnunet_raw_that_is_a_file_is_one_error_naming_it(tmp_path, raw, monkeypatch, capsys):
    source, _ = _phantom(tmp_path)
    a_file = tmp_path / "raw_is_a_file"
    a_file.write_text("keep me")
    monkeypatch.setenv("nnUNet_raw", str(a_file))
    assert main(["convert", "brats2021", str(source), "41"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"$nnUNet_raw {a_file} is a file, not a folder" in err
    assert a_file.read_text() == "keep me"


def test_read_only_nnunet_raw_is_one_error_before_any_work(tmp_path, raw):
    source, _ = _phantom(tmp_path)
    read_only = tmp_path / "read_only_raw"
    env = dict(os.environ, nnUNet_raw=str(read_only))
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    result = run_in_read_only_folder(read_only, [exe, "convert", "brats2021", source, "41"], env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"$nnUNet_raw {read_only} is not writable" in result.stderr
    assert list(read_only.iterdir()) == []


# ------------------------------------------------------------------------------------------------ the source
def test_a_t1_of_another_shape_is_the_one_named(tmp_path, raw):
    source, cases = _phantom(tmp_path)
    (case_id, case), = cases.items()
    t1 = _sequence_file(source, case_id, "t1")
    nib.save(nib.Nifti1Image(case.images["T1"][:-2], case.affine), str(t1))
    with pytest.raises(MissingModError) as raised:
        convert_dataset("brats2021", source, 41, progress=False)
    problems = _problems(raised)
    assert len(problems) == 1, problems  # only T1: not the four files that agree with each other
    assert re.match(rf"case {case_id}: geometry of T1 file '{re.escape(str(t1))}' \(shape \(\d+, \d+, \d+\)",
                    problems[0]), problems
    assert "differs from that of the other files (T1ce, T2, FLAIR, segmentation: shape" in problems[0]
    assert list(raw.iterdir()) == []


def test_two_files_that_differ_are_both_named(tmp_path, raw):
    source, cases = _phantom(tmp_path)
    (case_id, case), = cases.items()
    for suffix in ("t1ce", "t2", "flair"):
        _sequence_file(source, case_id, suffix).unlink()
    t1 = _sequence_file(source, case_id, "t1")
    nib.save(nib.Nifti1Image(case.images["T1"][:-2], case.affine), str(t1))
    with pytest.raises(MissingModError) as raised:
        convert_dataset("brats2021", source, 41, allow_missing=True, progress=False)
    problems = _problems(raised)
    assert len(problems) == 1 and problems[0].startswith(f"case {case_id}: the files do not share one geometry")
    assert f"T1 file '{t1}': shape" in problems[0] and "segmentation file" in problems[0], problems


def test_an_all_zero_sequence_converts_with_a_one_line_warning(tmp_path, raw, capsys):
    source, cases = _phantom(tmp_path, n=2)
    blank_id, other_id = cases
    case = cases[blank_id]
    nib.save(nib.Nifti1Image(np.zeros_like(case.images["T2"]), case.affine),
             str(_sequence_file(source, blank_id, "t2")))
    assert main(["convert", "brats2021", str(source), "41"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: case {blank_id}: T2 is all zero in the source; converted as given (check the "
                        f"source if that is not intended)"]
    converted = raw / "Dataset041_BraTS2021" / "imagesTr" / f"{blank_id}_0002.nii.gz"
    assert converted.is_file() and not np.asarray(nib.load(str(converted)).dataobj).any()
