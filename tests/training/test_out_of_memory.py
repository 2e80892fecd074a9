"""A training step that runs out of GPU memory ends ``nnUNetv2_train`` with one message (what ran out, the patch
and batch size, the fixes in order), exit code 2 and no traceback unless ``nnUNet_missingmod_verbose=1``. On the
CPU: the network's forward raises ``torch.cuda.OutOfMemoryError`` as a large patch on a small GPU does."""
from __future__ import annotations

import pytest
from torch import nn

from conftest import DATASET_NAME, plans_and_dataset_json, run_command
from nnunet_missingmod.training.base import VERBOSE_ENV, TrainingOutOfMemory
from trainer_helpers import TeacherDiscriminatorTrainer, fault_env, fold_folder, make_batch, make_trainer, train_command
from training.fault_trainers.missingmod_fault_trainers import OutOfMemoryNetwork

FIXES = ("(1) plans for a smaller GPU: nnUNetv2_plan_experiment", "(2) close other processes on the GPU",
         "(3) a GPU with more memory")


def planned_patch_and_batch(nnunet_root) -> tuple:
    configuration = plans_and_dataset_json(nnunet_root)[0]["configurations"]["3d_fullres"]
    return "x".join(map(str, configuration["patch_size"])), configuration["batch_size"]


def assert_fixes_in_order(message: str) -> None:
    positions = [message.index(fix) for fix in FIXES]
    assert positions == sorted(positions)


def test_nnunetv2_train_out_of_gpu_memory_is_one_message_without_traceback(nnunet_root, tiny_preprocessed,
                                                                          tmp_path):
    trainer = "OutOfMemoryDropoutTrainer"
    result = run_command(train_command(trainer), fault_env(nnunet_root, tmp_path), expect_ok=False)
    assert result.returncode == TrainingOutOfMemory.exit_code == 2
    patch, batch_size = planned_patch_and_batch(nnunet_root)
    message = (f"nnUNetv2_train: error: the GPU ran out of memory in a training step (patch {patch}, batch size "
               f"{batch_size}). Fixes, in order: (1) plans for a smaller GPU: nnUNetv2_plan_experiment -d "
               f"{DATASET_NAME} -gpu_memory_target GB -overwrite_plans_name nnUNetPlans_smaller, then "
               f"nnUNetv2_preprocess -d {DATASET_NAME} -plans_name nnUNetPlans_smaller -c 3d_fullres and "
               f"nnUNetv2_train ... -p nnUNetPlans_smaller")
    assert message in result.stderr
    assert_fixes_in_order(result.stderr)
    assert "Traceback" not in result.stderr and "OutOfMemoryError" not in result.stderr
    folder = fold_folder(tmp_path, trainer)
    assert message.split("error: ")[1] in next(folder.glob("training_log_*.txt")).read_text()
    assert not (folder / "checkpoint_final.pth").exists()


def test_the_message_names_the_extra_models_and_verbose_adds_the_traceback(nnunet_root, tiny_preprocessed,
                                                                          monkeypatch, capsys):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    trainer.network = OutOfMemoryNetwork(trainer.network)
    batch = make_batch(trainer)
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with pytest.raises(TrainingOutOfMemory) as raised:
        trainer.train_step(batch)
    assert raised.value.code == 2
    patch, batch_size = planned_patch_and_batch(nnunet_root)
    assert raised.value.message.startswith(f"the GPU ran out of memory in a training step (patch {patch}, batch "
                                           f"size {batch_size} together with a discriminator and a teacher)")
    assert_fixes_in_order(raised.value.message)
    stderr = capsys.readouterr().err
    assert stderr == f"nnUNetv2_train: error: {raised.value.message}\n"

    monkeypatch.setenv(VERBOSE_ENV, "1")
    with pytest.raises(TrainingOutOfMemory):
        trainer.train_step(batch)
    stderr = capsys.readouterr().err
    assert stderr.startswith("Traceback") and "torch.OutOfMemoryError: CUDA out of memory" in stderr
    assert stderr.endswith(f"nnUNetv2_train: error: {raised.value.message}\n")


class _BrokenNetwork(nn.Module):
    def __init__(self, network: nn.Module):
        super().__init__()
        self.decoder = network.decoder

    def forward(self, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_other_errors_of_a_training_step_are_not_turned_into_the_memory_message(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    trainer.network = _BrokenNetwork(trainer.network)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        trainer.train_step(make_batch(trainer))
