"""``nnunet-missingmod export``: a slim model folder that stock nnU-Net loads as its own ``nnUNetTrainer`` where the
trainer's network is nnU-Net's U-Net (here the stored ``TwoPhaseDistillTrainer`` fold, with its optimiser and
snapshot teacher), predicting exactly what the original folder predicts; bad input is one line and exit 2 with
nothing written. The MST-KD export (our trainer name kept) is checked in the MST-KD end-to-end test."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, DATASET_NAME, nnunet_env, run_command
from export_helpers import check_slim_checkpoint, segmentation
from nnunet_missingmod.cli import main
from nnunet_missingmod.export.slim import EXPORT_RECORD, has_plain_nnunet_network
from nnunet_missingmod.training.naming import trainer_registry

MODELS = Path(__file__).resolve().parent / "reference_data" / "models"
TWO_PHASE = MODELS / "TwoPhaseDistillTrainer__nnUNetPlans__3d_fullres"
STOCK_FOLDER = f"{DATASET_NAME}/nnUNetTrainer__nnUNetPlans__3d_fullres"
CASE, PARTIAL = "BraTS2021_00001", "BraTS2021_00002"  # PARTIAL: T1ce and FLAIR only


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export(*args):
    return main(["export", *map(str, args)])


def test_the_trainers_that_predict_with_nnunets_own_unet_are_exported_as_stock():
    registry = trainer_registry()
    for name in ("FullSetTrainer", "ModalityDropoutTrainer", "ModalityDropoutTrainer_cardinality",
                 "TwoPhaseDistillTrainer", "RobustifyTrainer", "RobustifyTrainer_1000iters"):
        assert has_plain_nnunet_network(registry[name]), name
    for name in ("MSTKDTrainer", "MSTKDTrainer_small", "MSTKDTeacherTrainer", "CCSDTrainer_small",
                 "ModalityDropoutTrainer_cardinality_presence", "RobustifyTrainer_presence",
                 "TwoPhaseDistillTrainer_presence"):
        assert not has_plain_nnunet_network(registry[name]), name


@pytest.mark.slow
def test_two_phase_export_is_slim_and_stock_nnunet_predicts_it_as_the_original(nnunet_root, tiny_preprocessed,
                                                                               tmp_path):
    source_checkpoint = TWO_PHASE / "fold_0" / "checkpoint_final.pth"
    before = _digest(source_checkpoint)
    out = tmp_path / "export"
    assert _export(TWO_PHASE, out, "-f", "0") == 0
    assert _digest(source_checkpoint) == before  # the source is only read
    exported = out / STOCK_FOLDER
    source = torch.load(source_checkpoint, map_location="cpu", weights_only=False)
    assert "optimizer_state" in source and "missingmod_extra" in source  # what the export must drop
    slim = check_slim_checkpoint(exported, source, "nnUNetTrainer")
    assert slim["init_args"]["configuration"] == "3d_fullres"
    assert {p.name for p in exported.iterdir()} == {"dataset.json", "plans.json", "fold_0", EXPORT_RECORD}

    images = tiny_preprocessed / "imagesTr"
    ours_in, stock_in = tmp_path / "ours_in", tmp_path / "stock_in"
    ours_in.mkdir()
    stock_in.mkdir()
    for channel in range(4):
        for folder in (ours_in, stock_in):
            shutil.copy(images / f"{CASE}_{channel:04d}.nii.gz", folder)
        partial = images / f"{PARTIAL}_{channel:04d}.nii.gz"
        if channel in (1, 3):
            shutil.copy(partial, ours_in)
            shutil.copy(partial, stock_in)
        else:  # what a colleague with stock nnU-Net gives for a missing sequence: a zero-filled file
            image = sitk.ReadImage(str(partial))
            sitk.WriteImage(image * 0, str(stock_in / partial.name))

    env = nnunet_env(nnunet_root)
    predict = ["-f", "0", "-device", "cpu", "--disable_tta"]
    run_command(["nnunet-missingmod", "predict", "-i", ours_in, "-o", tmp_path / "original", "-m", TWO_PHASE,
                 *predict], env)
    run_command(["nnunet-missingmod", "predict", "-i", ours_in, "-o", tmp_path / "ours", "-m", exported, *predict],
                env)
    stock_env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    stock_env["nnUNet_results"] = str(out)
    run_command(["nnUNetv2_predict", "-i", stock_in, "-o", tmp_path / "stock", "-d", DATASET_ID, "-c", "3d_fullres",
                 *predict, "-npp", "0", "-nps", "0"], stock_env)
    for case in (CASE, PARTIAL):
        original = segmentation(tmp_path / "original" / f"{case}.nii.gz")
        assert original.any()
        assert np.array_equal(segmentation(tmp_path / "ours" / f"{case}.nii.gz"), original), case
        assert np.array_equal(segmentation(tmp_path / "stock" / f"{case}.nii.gz"), original), case
    sidecar = json.loads((tmp_path / "ours" / f"{PARTIAL}.modalities.json").read_text())
    assert sidecar["subset"] == "T1ce+FLAIR" and sidecar["trainer"] == "nnUNetTrainer"
    assert sidecar["trained_for_missing_modalities"] and sidecar["trained_for_subset"]  # from missingmod_config


def test_zip_holds_the_folder_export_in_nnunets_layout_and_a_rerun_replaces_an_earlier_export(tmp_path, capsys):
    out = tmp_path / "export"
    assert _export(TWO_PHASE, out) == 0  # default: every fold with the checkpoint
    assert "stock nnU-Net loads it as nnUNetTrainer" in capsys.readouterr().out
    first = _digest(out / STOCK_FOLDER / "fold_0" / "checkpoint_final.pth")
    (out / STOCK_FOLDER / "leftover.txt").write_text("from an earlier export")
    assert _export(TWO_PHASE, out, "-f", "0") == 0
    assert not (out / STOCK_FOLDER / "leftover.txt").exists()
    assert _digest(out / STOCK_FOLDER / "fold_0" / "checkpoint_final.pth") == first
    assert [p.name for p in (out / DATASET_NAME).iterdir()] == ["nnUNetTrainer__nnUNetPlans__3d_fullres"]

    archive = tmp_path / "model.zip"
    assert _export(TWO_PHASE, archive, "--zip") == 0
    assert _export(TWO_PHASE, archive, "--zip") == 0  # an earlier export's zip is replaced
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert z.read(f"{STOCK_FOLDER}/fold_0/checkpoint_final.pth") == \
            (out / STOCK_FOLDER / "fold_0" / "checkpoint_final.pth").read_bytes()
    assert names == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_folder_left_by_a_killed_export_is_removed_by_the_next_one(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    parent = tmp_path / "export" / DATASET_NAME
    left = parent / f".nnUNetTrainer__nnUNetPlans__3d_fullres.{dead}.staging.tmp"
    (left / "fold_0").mkdir(parents=True)
    assert _export(TWO_PHASE, tmp_path / "export") == 0
    assert sorted(p.name for p in parent.iterdir()) == ["nnUNetTrainer__nnUNetPlans__3d_fullres"]


def _one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnunet-missingmod export: error:"), err
    assert all(f in err for f in fragments), err
    return err


def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys):
    out = tmp_path / "out"
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    assert _export(not_a_model, out) == 2
    _one_line_error(capsys, str(not_a_model), "fold_X/checkpoint_final.pth")
    assert _export(tmp_path / "nowhere", out) == 2
    _one_line_error(capsys, "does not exist")
    assert _export(TWO_PHASE, out, "-f", "0", "3") == 2
    _one_line_error(capsys, "fold(s) 3", "fold_0")

    broken = tmp_path / "broken" / TWO_PHASE.name
    shutil.copytree(TWO_PHASE, broken)
    checkpoint = broken / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:20000])
    assert _export(broken, out) == 2
    _one_line_error(capsys, str(checkpoint))
    assert not out.exists()

    taken = out / STOCK_FOLDER
    taken.mkdir(parents=True)
    (taken / "mine.txt").write_text("a model of someone else")
    assert _export(TWO_PHASE, out) == 2
    _one_line_error(capsys, str(taken), "not an earlier export")
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]

    not_ours = tmp_path / "archive.zip"
    not_ours.write_bytes(b"not a zip of ours")
    assert _export(TWO_PHASE, not_ours, "--zip") == 2
    _one_line_error(capsys, str(not_ours), "not a zip written by nnunet-missingmod export")
    assert not_ours.read_bytes() == b"not a zip of ours"
    assert os.listdir(tmp_path / "broken") == [TWO_PHASE.name]
