"""Bad outputs and bad models of ``predict``, ``evaluate`` and ``score``: each is one line on stderr and exit code 2,
before any work, naming the file or folder at fault; and the messages after a full disk say what was kept. Real
commands on the untrained tiny model folder of conftest (seconds each)."""
from __future__ import annotations

import json
import os
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHAPE_ZYX
from fs_helpers import fill, small_filesystem
from read_only_helpers import run_in_read_only_folder

from nnunet_missingmod.cli import main
from nnunet_missingmod.modalities import MODALITIES

PREDICT_CPU = ("-f", "0", "-device", "cpu", "--disable_tta", "--disable_progress_bar", "-npp", "0", "-nps", "0")


def _write_case(folder, case_id, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for channel in range(len(MODALITIES)):
        image = sitk.GetImageFromArray(rng.normal(100, 20, SHAPE_ZYX).astype(np.float32))
        sitk.WriteImage(image, str(folder / f"{case_id}_{channel:04d}.nii.gz"))


def _write_label(folder, case_id, truncated=False):
    folder.mkdir(parents=True, exist_ok=True)
    label = np.zeros(SHAPE_ZYX, np.uint8)
    label[4:8, 4:9, 5:10] = 1
    path = folder / f"{case_id}.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    if truncated:
        path.write_bytes(path.read_bytes()[:60])


def _one_line_error(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")


def _env() -> dict:
    return dict(os.environ, nnUNet_compile="f", OMP_NUM_THREADS="1")


# ------------------------------------------------------------------------------------------------ output folders
def test_predict_into_a_file_is_one_error_naming_it(tmp_path, capsys, model_folder):
    _write_case(tmp_path / "in", "case")
    target = tmp_path / "not_a_folder"
    target.write_text("keep me")
    err = _one_line_error(capsys, ["predict", "-i", tmp_path / "in", "-o", target, "-m", model_folder,
                                   *PREDICT_CPU])
    assert f"output folder {target} is a file, not a folder" in err
    assert target.read_text() == "keep me"


def test_predict_into_a_read_only_folder_is_one_error_naming_it(tmp_path, model_folder):
    _write_case(tmp_path / "in", "case")
    read_only = tmp_path / "read_only"  # exists: the probe file cannot be created (score's test: a new folder)
    result = run_in_read_only_folder(read_only, [_exe(), "predict", "-i", tmp_path / "in", "-o", read_only,
                                                 "-m", model_folder, *PREDICT_CPU], _env())
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"output folder {read_only} is not writable" in result.stderr
    assert list(read_only.iterdir()) == []


def test_score_checks_its_output_folder_before_scoring(tmp_path, capsys):
    """The prediction is truncated: were -o checked after the scoring, that would be the error."""
    _write_label(tmp_path / "gt", "case")
    _write_label(tmp_path / "pred", "case", truncated=True)
    target = tmp_path / "not_a_folder"
    target.write_text("")
    args = ["score", tmp_path / "gt", tmp_path / "pred", "--regions", "WT=1", "-np", "1"]
    err = _one_line_error(capsys, [*args, "-o", target])
    assert f"-o {target} is a file, not a folder" in err
    read_only = tmp_path / "read_only"  # -o is a new folder inside it: creating it fails (predict's test: the probe)
    result = run_in_read_only_folder(read_only, [_exe(), *args, "-o", read_only / "scores"], _env())
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"-o {read_only / 'scores'} is not writable" in result.stderr


# ------------------------------------------------------------------------------------------------ model folders
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_truncated_checkpoint_is_one_error_naming_it(tmp_path, capsys, model_folder, command):
    broken = tmp_path / "model"
    shutil.copytree(model_folder, broken)
    checkpoint = broken / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:3000])  # a copy cut short
    _write_case(tmp_path / "in", "case")
    args = [command, "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", broken, *PREDICT_CPU]
    if command == "evaluate":
        _write_label(tmp_path / "labels", "case")
        args = [a for a in args if a != "--disable_progress_bar"] + ["-l", tmp_path / "labels", "--regions", "WT=1"]
    err = _one_line_error(capsys, args)
    assert f"checkpoint {checkpoint} is truncated or corrupt" in err


def test_a_full_set_model_trained_on_two_sequences_is_refused_naming_its_folder(tmp_path, capsys, model_folder):
    two_sequences = tmp_path / "t1ce_flair_model"
    shutil.copytree(model_folder, two_sequences)
    dataset_json = json.loads((two_sequences / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "T1ce", "1": "FLAIR"}
    (two_sequences / "dataset.json").write_text(json.dumps(dataset_json))
    _write_case(tmp_path / "in", "case")
    err = _one_line_error(capsys, ["predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model_folder,
                                   "--full-set-model", two_sequences, *PREDICT_CPU])
    assert f"--full-set-model: model folder {two_sequences} cannot be used" in err and "no T1 channel" in err
    assert not list((tmp_path / "out").glob("*.nii.gz"))


# ------------------------------------------------------------------------------------------------ input files
def test_a_4d_sequence_is_named_as_4d_with_its_shape(tmp_path, capsys, model_folder):
    _write_case(tmp_path / "in", "case")
    four_d = tmp_path / "in" / "case_0002.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((*SHAPE_ZYX[::-1], 3), np.float32), np.eye(4)), str(four_d))
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_folder),
                 *PREDICT_CPU]) == 1
    out = capsys.readouterr().out
    assert f"case case: {four_d} is 4-D (shape {(*SHAPE_ZYX[::-1], 3)}, x, y, z, t)" in out, out


# ------------------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_says_which_cases_are_complete_and_which_lack_a_sidecar(tmp_path, capsys, model_folder):
    """Case a is complete, case c's sidecar is missing (as after an interruption between its two files), case b is
    new: --continue_prediction on a full disk fails on b, and the message says what is there."""
    inputs = tmp_path / "in"
    for seed, case in enumerate("ac"):
        _write_case(inputs, case, seed)
    with small_filesystem(tmp_path / "small", size_kb=1024) as small:
        out = small / "out"
        args = ["predict", "-i", str(inputs), "-o", str(out), "-m", str(model_folder), *PREDICT_CPU]
        assert main(args) == 0
        (out / "c.modalities.json").unlink()
        _write_case(inputs, "b", 2)
        capsys.readouterr()
        fill(small)
        err = _one_line_error(capsys, [*args, "--continue_prediction"])
        assert f"disk full while writing {out / 'b.nii.gz'}" in err and "b.nii.gz was not written" in err
        assert "nothing was written" not in err
        assert f"1 case(s) in {out} are complete" in err
        assert "c.nii.gz has no .modalities.json sidecar yet" in err and "predicts it again" in err
        assert "--continue_prediction keeps them and predicts the rest" in err
