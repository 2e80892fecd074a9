"""The teacher of the self-distillation recipes (methods/selfdistill/recipe.py) on the real plans of the tiny
dataset: its settings, the two-phase snapshot (switch, sampling, checkpoint and resume), the mean teacher and the
phase-1 schedule annealed to the switch."""
from dataclasses import replace

import pytest
import torch

from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.base import SamplingSettings
from nnunet_missingmod.training.extra_modules import TEACHER
from nnunet_missingmod.training.methods.selfdistill.ablations import (
    TwoPhaseDistillTrainer_annealedSnapshot, TwoPhaseDistillTrainer_emaTeacher)
from nnunet_missingmod.training.methods.selfdistill.recipe import SwitchAnnealedPolyLRScheduler, TeacherSettings
from nnunet_missingmod.training.methods.selfdistill.trainer import TwoPhaseDistillTrainer
from trainer_helpers import make_batch, make_trainer, module_parameters

FULL_SET = len(SUBSETS) - 1
FOUR_EPOCHS = {"num_epochs": 4, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


class _TwoPhase4Epochs(TwoPhaseDistillTrainer):
    """4 epochs of 2 iterations: the snapshot is taken at the start of epoch 2."""

    budget = FOUR_EPOCHS
    sampling = replace(TwoPhaseDistillTrainer.sampling, seed=5)


class _TwoPhaseEma4Epochs(TwoPhaseDistillTrainer_emaTeacher):
    """The same schedule with the mean teacher after the switch."""

    budget = FOUR_EPOCHS
    sampling = replace(TwoPhaseDistillTrainer_emaTeacher.sampling, seed=5)


class _TwoPhaseAnnealed4Epochs(TwoPhaseDistillTrainer_annealedSnapshot):
    """The same schedule with phase 1 annealed to the switch."""

    budget = FOUR_EPOCHS
    sampling = replace(TwoPhaseDistillTrainer_annealedSnapshot.sampling, seed=5)


def _epoch(trainer, epoch, seed):
    """What nnU-Net's loop does around the steps of one epoch (the epoch counter, the epoch start, 2 steps)."""
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()
    return [trainer.train_step(make_batch(trainer, seed=seed + i)) for i in range(2)]


def _resumed(nnunet_root, trainer, path):
    """``trainer`` saved at the end of its current epoch and loaded into a new trainer, as ``--c`` does."""
    trainer.save_checkpoint(path)
    restored = make_trainer(nnunet_root, type(trainer))
    restored.load_checkpoint(path)
    return restored


# ------------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("bad, message", [
    (dict(source="ema"), r"TeacherSettings.source must be one of \('snapshot', 'checkpoint'\), got 'ema'"),
    (dict(switch=1.0), r"TeacherSettings.switch must lie in \(0, 1\), got 1.0"),
    (dict(switch=0), r"TeacherSettings.switch must lie in \(0, 1\), got 0"),
    (dict(source="checkpoint", start_from="loose"), "TeacherSettings.start_from must be one of .*got 'loose'"),
    (dict(start_from="strict"), "TeacherSettings.start_from='strict' needs source 'checkpoint', got 'snapshot'"),
    (dict(source="checkpoint", anneal_before_switch=True),
     "TeacherSettings.anneal_before_switch needs source 'snapshot'.*got 'checkpoint'"),
    (dict(source="checkpoint", ema_momentum=0.99),
     "TeacherSettings.ema_momentum needs source 'snapshot'.*got 0.99 with source 'checkpoint'"),
    (dict(ema_momentum=1.0), "TeacherSettings.ema_momentum needs .* a value in \\[0, 1\\), got 1.0"),
    (dict(ema_momentum=-0.5), "TeacherSettings.ema_momentum needs .* a value in \\[0, 1\\), got -0.5"),
])
def test_teacher_settings_refuse_a_bad_value_naming_the_setting_and_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        TeacherSettings(**bad)


def test_a_mean_teacher_needs_a_snapshot_teacher_and_a_momentum_below_one():
    """What a subclass of RobustifyTrainer (a checkpoint teacher) or of TwoPhaseDistillTrainer would write: refused
    where the class is defined, before any trainer is built."""
    from nnunet_missingmod.training.methods.selfdistill.trainer import RobustifyTrainer
    with pytest.raises(ValueError, match="ema_momentum needs source 'snapshot'"):
        replace(RobustifyTrainer.teacher, ema_momentum=0.99)
    with pytest.raises(ValueError, match="ema_momentum needs source 'snapshot'.*got 1.0"):
        replace(TwoPhaseDistillTrainer.teacher, ema_momentum=1.0)
    with pytest.raises(ValueError, match="anneal_before_switch needs source 'snapshot'"):
        replace(RobustifyTrainer.teacher, anneal_before_switch=True)
    assert replace(TwoPhaseDistillTrainer.teacher, ema_momentum=0.0).ema_momentum == 0.0


def test_settings_of_the_wrong_type_are_refused_when_the_trainer_is_built(nnunet_root, tiny_preprocessed):
    class _Raw(TwoPhaseDistillTrainer):
        teacher = {"source": "snapshot"}

    with pytest.raises(TypeError, match="_Raw.teacher must be a TeacherSettings"):
        make_trainer(nnunet_root, _Raw)


@pytest.mark.parametrize("switch, epochs, expected", [(0.5, 4, 2), (0.25, 4, 1), (0.75, 4, 3), (0.5, 1, 0),
                                                      (0.01, 10, 1), (0.99, 10, 9)])
def test_the_switch_epoch_is_the_switch_fraction_rounded_inside_the_run(nnunet_root, tiny_preprocessed, switch,
                                                                         epochs, expected):
    class _Switch(TwoPhaseDistillTrainer):
        teacher = replace(TwoPhaseDistillTrainer.teacher, switch=switch)
        budget = dict(FOUR_EPOCHS, num_epochs=epochs)

    assert make_trainer(nnunet_root, _Switch).teacher_switch_epoch() == expected


# ------------------------------------------------------------------------------------------------ the snapshot
def test_two_phase_draws_the_full_set_then_snapshots_and_keeps_the_teacher_fixed(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoPhase4Epochs)
    assert trainer.teacher_switch_epoch() == 2
    assert trainer.extra_modules[TEACHER] is not trainer.network
    for epoch in (0, 1):
        terms = _epoch(trainer, epoch, seed=10 * epoch)
        assert trainer.teacher_snapshot_epoch is None and not trainer.teacher_active()
        assert all(float(t["distill_kl"]) == 0 for t in terms)  # phase 1: logged as zeros
        assert (trainer.sample_subset_indices(64) == FULL_SET).all()
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    assert trainer.teacher_snapshot_epoch == 2 and trainer.teacher_active()
    snapshot = module_parameters(trainer.extra_modules[TEACHER])
    assert torch.equal(snapshot, module_parameters(trainer.network))
    draws = trainer.sample_subset_indices(64)
    assert (draws != FULL_SET).any() and (draws == FULL_SET).any()  # cardinality sampling: 1/4 full set
    for seed in (20, 21):
        terms = trainer.train_step(make_batch(trainer, seed=seed))
        assert float(terms["distill_kl"]) > 0
    assert torch.equal(snapshot, module_parameters(trainer.extra_modules[TEACHER]))  # frozen after the switch
    assert not torch.equal(snapshot, module_parameters(trainer.network))
    assert not trainer.extra_modules[TEACHER].training
    assert not any(p.requires_grad for p in trainer.extra_modules[TEACHER].parameters())


def test_after_the_switch_the_classs_sampling_applies(nnunet_root, tiny_preprocessed):
    class _KeepFull(_TwoPhase4Epochs):
        sampling = SamplingSettings(strategy="uniform", full_set_probability=1.0, seed=5)

    trainer = make_trainer(nnunet_root, _KeepFull)
    trainer.current_epoch = 3
    assert (trainer.sample_subset_indices(64) == FULL_SET).all()
    assert trainer.trainable_subsets() == [SUBSETS[FULL_SET].name]


@pytest.mark.parametrize("trainer_class", [_TwoPhase4Epochs, _TwoPhaseEma4Epochs, _TwoPhaseAnnealed4Epochs],
                         ids=["snapshot", "ema", "annealed"])
def test_two_phase_resume_before_and_after_the_switch_equals_an_uninterrupted_run(nnunet_root, tiny_preprocessed,
                                                                                  tmp_path, trainer_class):
    torch.manual_seed(0)
    uninterrupted = make_trainer(nnunet_root, trainer_class)
    torch.manual_seed(0)
    interrupted = make_trainer(nnunet_root, trainer_class)
    for trainer in (uninterrupted, interrupted):
        _epoch(trainer, 1, seed=0)
    # killed at the end of epoch 1 (phase 1): the resumed run takes its snapshot at the same epoch
    interrupted = _resumed(nnunet_root, interrupted, str(tmp_path / "phase1.pth"))
    assert interrupted.current_epoch == 2 and interrupted.teacher_snapshot_epoch is None
    for trainer in (uninterrupted, interrupted):
        _epoch(trainer, 2, seed=100)
    assert interrupted.teacher_snapshot_epoch == uninterrupted.teacher_snapshot_epoch == 2
    # killed at the end of epoch 2 (phase 2): the snapshot comes back bit-exact and the next steps are identical
    interrupted = _resumed(nnunet_root, interrupted, str(tmp_path / "phase2.pth"))
    assert interrupted.teacher_snapshot_epoch == 2
    assert torch.equal(module_parameters(interrupted.extra_modules[TEACHER]),
                       module_parameters(uninterrupted.extra_modules[TEACHER]))
    steps = [_epoch(trainer, 3, seed=200) for trainer in (uninterrupted, interrupted)]
    for a, b in zip(*steps):
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    for name in ("network", TEACHER):
        get = (lambda t: t.network) if name == "network" else (lambda t: t.extra_modules[TEACHER])
        assert torch.equal(module_parameters(get(uninterrupted)), module_parameters(get(interrupted))), name


# ------------------------------------------------------------------------------------------- the mean teacher
def test_the_mean_teacher_follows_the_student_after_the_switch_only(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoPhaseEma4Epochs)
    momentum = trainer.teacher.ema_momentum
    assert momentum == 0.99
    initial_teacher = module_parameters(trainer.extra_modules[TEACHER])
    _epoch(trainer, 1, seed=0)  # phase 1: the teacher is not touched
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), initial_teacher)
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    teacher = module_parameters(trainer.extra_modules[TEACHER])
    assert torch.equal(teacher, module_parameters(trainer.network))  # the snapshot starts the average
    for seed in (30, 31):
        trainer.train_step(make_batch(trainer, seed=seed))
        student = module_parameters(trainer.network)
        expected = momentum * teacher + (1 - momentum) * student
        teacher = module_parameters(trainer.extra_modules[TEACHER])
        assert torch.allclose(teacher, expected, atol=1e-7)
        assert not torch.equal(teacher, student)
    assert not any(p.requires_grad for p in trainer.extra_modules[TEACHER].parameters())


# ------------------------------------------------------------------------------------ the annealed phase 1
def test_the_switch_annealed_schedule_ends_phase_1_near_zero_and_then_follows_nnunets_poly():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = SwitchAnnealedPolyLRScheduler(optimizer, 0.01, max_steps=20, switch_epoch=10)
    expected = {0: 0.01, 5: 0.01 * 0.5 ** 0.9, 9: 0.01 * 0.1 ** 0.9,  # phase 1: its own poly over 10 epochs
                10: 0.01 * 0.5 ** 0.9, 15: 0.01 * 0.25 ** 0.9, 19: 0.01 * 0.05 ** 0.9}  # nnU-Net's over 20
    for epoch, lr in expected.items():
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch
    for switch in (0, 20):
        with pytest.raises(ValueError, match="inside the run's 20 epochs, got " + str(switch)):
            SwitchAnnealedPolyLRScheduler(optimizer, 0.01, max_steps=20, switch_epoch=switch)


def test_an_annealed_two_phase_run_sets_each_epochs_learning_rate(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoPhaseAnnealed4Epochs)
    assert isinstance(trainer.lr_scheduler, SwitchAnnealedPolyLRScheduler)
    initial = trainer.initial_lr
    expected = [initial, initial * 0.5 ** 0.9, initial * 0.5 ** 0.9, initial * 0.25 ** 0.9]  # switch at epoch 2
    for epoch, lr in enumerate(expected):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch
    assert trainer.missingmod_config()["teacher"]["anneal_before_switch"] is True
    assert not isinstance(make_trainer(nnunet_root, _TwoPhase4Epochs).lr_scheduler, SwitchAnnealedPolyLRScheduler)
