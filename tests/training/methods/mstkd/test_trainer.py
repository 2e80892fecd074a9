"""MSTKDTrainer on the real nnU-Net plans of the tiny dataset: one step trains student, teacher and discriminator;
teacher detach and freeze; checkpoints and resume; end to end through nnUNetv2_train and both predictors."""
import json
from dataclasses import replace

import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, DATASET_NAME, nnunet_env, run_command, train_model
from export_helpers import check_slim_checkpoint, segmentation
from nnunet_missingmod.cli import main
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.base import SamplingSettings
from nnunet_missingmod.training.extra_modules import TEACHER
from nnunet_missingmod.training.methods.dropout.trainer import FullSetTrainer
from nnunet_missingmod.training.methods.mstkd.ablations import (
    MSTKDTrainer_frozenTeacher_small, MSTKDTrainer_noGSME_small, MSTKDTrainer_stockTeacher_small)
from nnunet_missingmod.training.methods.mstkd.losses import OFFICIAL_WEIGHTS
from nnunet_missingmod.training.methods.mstkd.network import SMALL
from nnunet_missingmod.training.methods.mstkd.trainer import (
    MSTKDSettings, MSTKDTeacherTrainer_small, MSTKDTrainer, MSTKDTrainer_small)
from nnunet_missingmod.training.nnunet_copies import CHECKPOINT_EXTRA_KEY
from nnunet_missingmod.training.teacher import TEACHER_ENV
from trainer_helpers import make_batch, make_trainer, module_parameters


class _NoTeacherSegSmall(MSTKDTrainer_small):
    """Teacher segmentation weight 0: the teacher's gradient then comes from the distillation terms alone."""
    sampling = SamplingSettings(seed=3)
    method = replace(MSTKDTrainer_small.method, weight_overrides=(("seg_teacher", 0.0),))


class _NoTeacherSegDetachedSmall(_NoTeacherSegSmall):
    method = replace(_NoTeacherSegSmall.method, detach_teacher=True)


_FrozenSmall = MSTKDTrainer_frozenTeacher_small


@pytest.mark.parametrize("bad, message", [
    (dict(teacher="frozen"), r"MSTKDSettings.teacher must be one of \('joint', 'checkpoint'\), got 'frozen'"),
    (dict(start_from_teacher="strict"),
     "MSTKDSettings.start_from_teacher must be one of .*needs teacher 'checkpoint', got 'strict' with teacher 'joint'"),
    (dict(teacher="checkpoint", start_from_teacher="all"), "MSTKDSettings.start_from_teacher .*got 'all'"),
    (dict(weight_overrides=(("evd", -1.0),)), r"MSTKDSettings.weight_overrides: 'evd'=-1.0 is not a weight >= 0"),
    (dict(weight_overrides=(("evdd", 1.0),)), r"MSTKDSettings.weight_overrides: 'evdd'=1.0 is not a weight"),
    (dict(discriminator_ndf=0), "MSTKDSettings: discriminator_ndf and discriminator_lr must be > 0, got 0 and"),
    (dict(discriminator_lr=-1e-4), "MSTKDSettings: discriminator_ndf .* must be > 0, got 64 and -0.0001"),
])
def test_mstkd_settings_refuse_a_bad_value_naming_the_setting_and_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        MSTKDSettings(**bad)


def test_weights_are_the_official_ones_with_the_overrides_and_the_teacher_trainer_follows_the_settings():
    assert MSTKDTrainer.method.weights == OFFICIAL_WEIGHTS
    assert _NoTeacherSegSmall.method.weights == dict(OFFICIAL_WEIGHTS, seg_teacher=0.0)
    assert _NoTeacherSegSmall.method.transformer == SMALL and _NoTeacherSegDetachedSmall.method.detach_teacher
    assert MSTKDTrainer.method.teaches_features and not MSTKDTrainer_stockTeacher_small.method.teaches_features
    assert _FrozenSmall.teacher_trainer_name() == "MSTKDTeacherTrainer_small"
    assert MSTKDTrainer.teacher_trainer_name() == "MSTKDTeacherTrainer"
    assert MSTKDTrainer_stockTeacher_small.teacher_trainer_name() == "nnUNetTrainer"


def _teacher_gradients(trainer):
    trainer.optimizer.zero_grad(set_to_none=True)
    for module in (trainer.network, *trainer.extra_modules.values()):
        module.eval()  # no dropout: the same forward every call
    raw = make_batch(trainer, seed=1)
    from nnunet_missingmod.training.base import MaskedBatch
    indices = torch.tensor([0, 9])  # T1 alone, T2+FLAIR: the student differs from the teacher
    batch = MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])
    trainer.compute_loss_terms(batch).loss.backward()
    teacher = [p.grad for p in trainer.extra_modules["teacher"].parameters()]
    student = [p.grad for p in trainer.network.parameters()]
    return teacher, student


def test_one_step_logs_every_term_and_trains_student_teacher_and_discriminator(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, MSTKDTrainer_small)
    before = {"student": module_parameters(trainer.network),
              **{name: module_parameters(m) for name, m in trainer.extra_modules.items()}}
    out = trainer.train_step(make_batch(trainer))
    assert set(out) == {"loss", *trainer.loss_terms}
    assert {"evd", "mst", "slkd", "consistency", "gram", "adversarial", "discriminator"} <= set(out)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.values())
    assert 0 < out["evd"] < 1e-3  # a ~1e-8 term that float16 would lose, kept in float32 (weight 1e8)
    after = {"student": module_parameters(trainer.network),
             **{name: module_parameters(m) for name, m in trainer.extra_modules.items()}}
    for name in before:
        assert not torch.equal(before[name], after[name]), name
    ablation = make_trainer(nnunet_root, MSTKDTrainer_noGSME_small)
    assert "discriminator" not in ablation.extra_modules and "gram" not in ablation.loss_terms
    assert trainer.missingmod_config()["method"]["use_gsme"] and not ablation.missingmod_config()["method"]["use_gsme"]


def test_distillation_reaches_the_teacher_only_when_not_detached(nnunet_root, tiny_preprocessed):
    joint_teacher, joint_student = _teacher_gradients(make_trainer(nnunet_root, _NoTeacherSegSmall))
    assert any(g is not None and g.abs().sum() > 0 for g in joint_teacher)  # official: no stop-gradient
    detached_teacher, detached_student = _teacher_gradients(make_trainer(nnunet_root, _NoTeacherSegDetachedSmall))
    assert all(g is None or g.abs().sum() == 0 for g in detached_teacher)
    assert any(g is not None and g.abs().sum() > 0 for g in detached_student)


def test_frozen_teacher_needs_a_compatible_run_and_stays_fixed(nnunet_root, tiny_preprocessed, tmp_path,
                                                               monkeypatch):
    monkeypatch.delenv(TEACHER_ENV, raising=False)
    with pytest.raises(MissingModError, match=TEACHER_ENV):
        make_trainer(nnunet_root, _FrozenSmall)
    plain = make_trainer(nnunet_root, FullSetTrainer)  # a plain U-Net: not the MST-KDNet architecture
    plain.save_checkpoint(str(tmp_path / "plain.pth"))
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "plain.pth"))
    with pytest.raises(MissingModError, match="does not fit"):
        make_trainer(nnunet_root, _FrozenSmall)

    teacher_run = make_trainer(nnunet_root, MSTKDTeacherTrainer_small)
    teacher_run.train_step(make_batch(teacher_run))
    teacher_run.save_checkpoint(str(tmp_path / "teacher.pth"))
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "teacher.pth"))
    trainer = make_trainer(nnunet_root, _FrozenSmall)
    loaded = module_parameters(trainer.extra_modules["teacher"])
    assert torch.equal(loaded, module_parameters(teacher_run.network))
    main_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not {id(p) for p in trainer.extra_modules["teacher"].parameters()} & main_params
    trainer.on_train_epoch_start()
    assert not trainer.extra_modules["teacher"].training
    trainer.train_step(make_batch(trainer))
    assert torch.equal(loaded, module_parameters(trainer.extra_modules["teacher"]))


def test_checkpoint_holds_the_student_and_resumes_teacher_and_discriminator_exactly(nnunet_root, tiny_preprocessed,
                                                                                  tmp_path):
    trainer = make_trainer(nnunet_root, MSTKDTrainer_small)
    trainer.train_step(make_batch(trainer, seed=0))
    path = str(tmp_path / "mstkd.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    student = {k: v for k, v in trainer.network.state_dict().items()}
    assert all(torch.equal(student[k], checkpoint["network_weights"][k]) for k in student)
    assert set(checkpoint[CHECKPOINT_EXTRA_KEY]["optimizers"]) == {"discriminator"}

    restored = make_trainer(nnunet_root, MSTKDTrainer_small)
    restored.load_checkpoint(path)
    trainer.current_epoch += 1  # what nnU-Net's on_epoch_end does after writing the checkpoint
    for trainer_ in (trainer, restored):
        trainer_.on_train_epoch_start()  # LR schedules and the ramp-up's position in training
        torch.manual_seed(11)  # the transformer's dropout draws from the global generator
        trainer_.train_step(make_batch(trainer_, seed=4))
    for name in ("teacher", "discriminator"):
        assert torch.equal(module_parameters(trainer.extra_modules[name]),
                           module_parameters(restored.extra_modules[name])), name
    assert torch.equal(module_parameters(trainer.network), module_parameters(restored.network))


def test_a_stock_teacher_seeds_the_student_where_names_and_shapes_match(nnunet_root, stock_run, monkeypatch):
    path, stock_weights = stock_run
    monkeypatch.setenv(TEACHER_ENV, str(path))
    trainer = make_trainer(nnunet_root, MSTKDTrainer_stockTeacher_small)
    stock = torch.load(path, weights_only=False)["network_weights"]
    student = trainer.network.state_dict()
    shared = [k for k in stock if k in student and student[k].shape == stock[k].shape]
    assert len(shared) > len(stock) // 2 and all(torch.equal(student[k], stock[k]) for k in shared)
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), stock_weights)
    terms = trainer.train_step(make_batch(trainer))
    assert "evd" not in terms and torch.isfinite(torch.as_tensor(terms["slkd"]))


@pytest.fixture(scope="module")
def trained_mstkd_model(nnunet_root, tiny_preprocessed):
    return train_model(nnunet_root, "MSTKDTrainer_small_debug")


@pytest.mark.slow
def test_nnunet_train_then_stock_and_missing_modality_prediction(nnunet_root, tiny_preprocessed,
                                                                 trained_mstkd_model, tmp_path):
    fold = trained_mstkd_model / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == "MSTKDTrainer_small_debug"
    assert (fold / "validation" / "summary.json").is_file()  # nnU-Net's final validation ran on the student
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "train_evd" in log and "train_discriminator" in log

    images = tiny_preprocessed / "imagesTr"
    model = ["-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", "MSTKDTrainer_small_debug"]
    stock_out = tmp_path / "stock"
    run_command(["nnUNetv2_predict", "-i", images, "-o", stock_out, *model, "-device", "cpu", "-npp", "1",
                 "-nps", "1", "--disable_tta"], nnunet_env(nnunet_root))
    assert len(list(stock_out.glob("*.nii.gz"))) == 6

    source = tmp_path / "in"
    source.mkdir()
    for suffix in ("_0001", "_0003"):  # T1ce and FLAIR only
        (source / f"BraTS2021_00001{suffix}.nii.gz").write_bytes((images / f"BraTS2021_00001{suffix}.nii.gz")
                                                                  .read_bytes())
    ours = tmp_path / "ours"
    run_command(["nnunet-missingmod", "predict", "-i", source, "-o", ours, *model, "-device", "cpu",
                 "--disable_tta"], nnunet_env(nnunet_root))
    sidecar = json.loads((ours / "BraTS2021_00001.modalities.json").read_text())
    assert sidecar["subset"] == "T1ce+FLAIR" and sidecar["trainer"] == "MSTKDTrainer_small_debug"
    prediction = sitk.ReadImage(str(ours / "BraTS2021_00001.nii.gz"))
    assert prediction.GetSize() == sitk.ReadImage(str(images / "BraTS2021_00001_0001.nii.gz")).GetSize()

    # nnunet-missingmod export: the student alone (no teacher, discriminator, optimisers), under our trainer's name
    assert {"optimizer_state", CHECKPOINT_EXTRA_KEY} <= checkpoint.keys()
    assert main(["export", str(trained_mstkd_model), str(tmp_path / "export"), "-f", "0"]) == 0
    exported = tmp_path / "export" / DATASET_NAME / trained_mstkd_model.name
    check_slim_checkpoint(exported, checkpoint, "MSTKDTrainer_small_debug")
    run_command(["nnunet-missingmod", "predict", "-i", source, "-o", tmp_path / "from_export", "-m", exported,
                 "-f", "0", "-device", "cpu", "--disable_tta"], nnunet_env(nnunet_root))
    assert (segmentation(tmp_path / "from_export" / "BraTS2021_00001.nii.gz") ==
            segmentation(ours / "BraTS2021_00001.nii.gz")).all()
