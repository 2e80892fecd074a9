"""What training with our trainers refuses at its start: a cascade configuration, a dataset without the four
sequences, a teacher run that cannot be used. Each is one line on stderr and exit code 2 without a traceback, and the
attempt leaves nothing in nnU-Net's results folder (no fold folder made for it, no ``training_log_*.txt``)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import CHANNEL_NAMES, LABELS, model_folder_plans, nnunet_env, plans_and_dataset_json, run_command
from nnunet_missingmod.training.base import MissingModalityTrainerBase, TrainingRefused
from nnunet_missingmod.training.methods.mstkd.trainer import MSTKDTeacherTrainer_small
from nnunet_missingmod.training.methods.selfdistill.trainer import RobustifyTrainer
from nnunet_missingmod.training.naming import trainer_registry
from nnunet_missingmod.training.teacher import TEACHER_ENV
from trainer_helpers import make_trainer

CASCADE_DATASET = "Dataset998_Fast"
TWO_SEQUENCE_DATASET = "Dataset997_TwoSequences"
TWO_SEQUENCES = {"0": "T1ce", "1": "FLAIR"}


def cascade_plans() -> dict:
    """The hand-written plans of the untrained model folder with nnU-Net's cascade: 3d_lowres, then
    3d_cascade_fullres, whose input adds the one-hot segmentation of 3d_lowres."""
    plans = model_folder_plans()
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "fast_lowres",
                                            "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return plans


def dataset_json(channel_names: dict) -> dict:
    return {"channel_names": channel_names, "labels": LABELS, "regions_class_order": [1, 2, 3], "numTraining": 1,
            "file_ending": ".nii.gz"}


def construct(trainer_class, plans: dict, configuration: str, dataset: dict):
    plans = dict(copy.deepcopy(plans), continue_training=False)
    return trainer_class(plans, configuration, 0, dataset, torch.device("cpu"))


def files_under(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_one_line(stderr: str, message_start: str) -> str:
    """``stderr`` is exactly one line, the error; returns its message."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nnUNetv2_train: error: {message_start}"), stderr
    return lines[0]


def test_every_trainer_of_ours_refuses_a_cascade_configuration_before_writing_anything(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainers = {name: cls for name, cls in trainer_registry().items() if issubclass(cls, MissingModalityTrainerBase)}
    assert {"TwoPhaseDistillTrainer", "CCSDTrainer", "MSTKDTrainer", "ModalityDropoutTrainer"} <= set(trainers)
    for name, trainer_class in trainers.items():
        with pytest.raises(TrainingRefused) as refused:
            construct(trainer_class, cascade_plans(), "3d_cascade_fullres", dataset_json(CHANNEL_NAMES))
        assert refused.value.code == 2
        assert str(refused.value) == (
            f"{name} cannot train the cascade configuration 3d_cascade_fullres: its input would include the "
            f"segmentation of the previous stage 3d_lowres, which would have to come from a 3d_lowres model robust "
            f"to the same missing sequences, and that is not supported. Train 3d_fullres: nnUNetv2_train DATASET "
            f"3d_fullres FOLD -tr {name}")
        assert_one_line(capsys.readouterr().err, f"{name} cannot train the cascade")
    assert files_under(tmp_path / "results") == []
    # the first stage alone is no cascade input: it is built as any configuration
    lowres = construct(trainers["ModalityDropoutTrainer"], cascade_plans(), "3d_lowres", dataset_json(CHANNEL_NAMES))
    assert lowres.channel_modalities == ("T1", "T1ce", "T2", "FLAIR")


def test_a_dataset_without_the_four_sequences_is_refused_naming_its_dataset_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    expected_file = tmp_path / "preprocessed" / CASCADE_DATASET / "dataset.json"
    for channels, problem in ((TWO_SEQUENCES, "has no T1 channel"),
                              ({**CHANNEL_NAMES, "4": "CT"}, "channel 4 ('CT') in channel_names"),
                              ({"0": "T1", "1": "T1", "2": "T2", "3": "FLAIR"}, "ambiguous channel_names")):
        with pytest.raises(TrainingRefused, match=re.escape(problem)) as refused:
            construct(RobustifyTrainer, model_folder_plans(), "3d_fullres", dataset_json(channels))
        assert refused.value.code == 2
        assert str(refused.value).startswith(f"RobustifyTrainer trains on the four MRI sequences, one per channel: "
                                             f"{expected_file}: ")
        assert_one_line(capsys.readouterr().err, "RobustifyTrainer trains on the four MRI sequences")
    assert files_under(tmp_path / "results") == []


def teacher_cases(tmp_path: Path, stock_checkpoint: Path, nnunet_root: Path) -> dict:
    """Each kind of ``nnUNet_missingmod_teacher`` value the teacher loader tells apart, with the start of its
    message (``None``: the variable unset)."""
    (tmp_path / "unfinished" / "fold_0").mkdir(parents=True)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint\n")
    (tmp_path / "unfinished" / "fold_0" / "checkpoint_latest.pth").write_bytes(stock_checkpoint.read_bytes())
    torch.save({"network_weights": {}, "init_args": {"configuration": "3d_fullres"}}, tmp_path / "no_plans.pth")
    stock = torch.load(stock_checkpoint, weights_only=False)
    other_data = copy.deepcopy(stock)
    other_data["init_args"]["dataset_json"]["channel_names"] = TWO_SEQUENCES
    other_data["init_args"]["plans"]["dataset_name"] = TWO_SEQUENCE_DATASET
    torch.save(other_data, tmp_path / "other_data.pth")
    unknown_trainer = dict(stock, trainer_name="NoSuchTrainer")
    torch.save(unknown_trainer, tmp_path / "unknown_trainer.pth")
    mstkd = make_trainer(nnunet_root, MSTKDTeacherTrainer_small)  # another architecture: robustify cannot start
    mstkd.save_checkpoint(str(tmp_path / "mstkd.pth"))
    return {
        None: f"RobustifyTrainer needs a finished run as its teacher: set {TEACHER_ENV}",
        tmp_path / "missing": f"{TEACHER_ENV}={tmp_path / 'missing'}: no such checkpoint file or fold folder",
        tmp_path / "unfinished" / "fold_0": f"{TEACHER_ENV}={tmp_path / 'unfinished' / 'fold_0'}: the folder has no "
                                            f"checkpoint_final.pth",
        garbage: f"{TEACHER_ENV}={garbage} is not a PyTorch checkpoint",
        tmp_path / "no_plans.pth": f"{TEACHER_ENV}={tmp_path / 'no_plans.pth'} is not an nnU-Net checkpoint",
        tmp_path / "other_data.pth": f"{tmp_path / 'other_data.pth'} (trainer nnUNetTrainer, plans nnUNetPlans, "
                                     f"configuration 3d_fullres) does not fit RobustifyTrainer (plans nnUNetPlans, "
                                     f"configuration 3d_fullres): dataset: {TWO_SEQUENCE_DATASET} vs",
        tmp_path / "unknown_trainer.pth": "trainer 'NoSuchTrainer' (named by a teacher checkpoint) is neither",
        tmp_path / "mstkd.pth": f"{tmp_path / 'mstkd.pth'} (trainer MSTKDTeacherTrainer_small, plans nnUNetPlans, "
                                f"configuration 3d_fullres) does not fit RobustifyTrainer's network",
    }


def test_a_teacher_run_that_cannot_be_used_is_one_line_and_leaves_no_training_log(
        nnunet_root, stock_run, tmp_path, monkeypatch, capsys):
    cases = teacher_cases(tmp_path / "teachers", stock_run[0], nnunet_root)
    capsys.readouterr()
    results = tmp_path / "results"
    monkeypatch.setenv("nnUNet_results", str(results))
    for location, message_start in cases.items():
        if location is None:
            monkeypatch.delenv(TEACHER_ENV, raising=False)
        else:
            monkeypatch.setenv(TEACHER_ENV, str(location))
        with pytest.raises(TrainingRefused) as refused:
            make_trainer(nnunet_root, RobustifyTrainer)
        assert refused.value.code == 2 and str(refused.value).startswith(message_start), (location, refused.value)
        out = capsys.readouterr()
        assert_one_line(out.err, message_start)
        assert "Please cite" in out.out  # nnU-Net's __init__ had written its log, which was removed
        assert files_under(results) == [], location

    # a fold folder that holds an earlier run keeps it all; only this attempt's log goes
    trainer_folder = results / plans_and_dataset_json(nnunet_root)[0]["dataset_name"] / \
        "RobustifyTrainer__nnUNetPlans__3d_fullres"
    (trainer_folder / "fold_0").mkdir(parents=True)
    (trainer_folder / "fold_0" / "training_log_2026_1_1_00_00_00.txt").write_text("an earlier attempt")
    with pytest.raises(TrainingRefused):
        make_trainer(nnunet_root, RobustifyTrainer)
    assert files_under(trainer_folder) == ["fold_0", "fold_0/training_log_2026_1_1_00_00_00.txt"]


def write_preprocessed(root: Path, name: str, plans: dict, channel_names: dict) -> None:
    """The two files ``nnUNetv2_train`` reads before it builds the trainer (no data: the refusals come first)."""
    folder = root / "preprocessed" / name
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(dict(plans, dataset_name=name)))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(channel_names)))


@pytest.mark.slow
def test_nnunetv2_train_refuses_a_cascade_with_one_line_exit_2_and_no_traceback(tmp_path):
    # the same exit ends the refusals of a dataset and of a teacher run (tested above in the process)
    folder = tmp_path / "preprocessed" / CASCADE_DATASET
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(cascade_plans()))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(CHANNEL_NAMES)))  # no data: refused before
    result = run_command(["nnUNetv2_train", "998", "3d_cascade_fullres", "0", "-tr", "TwoPhaseDistillTrainer",
                          "-device", "cpu"], nnunet_env(tmp_path), expect_ok=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "nnUNetv2_train: error: TwoPhaseDistillTrainer cannot train the cascade configuration 3d_cascade_fullres: "), \
        result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr
    assert files_under(tmp_path / "results") == []
