"""The teacher-to-student distillation of the self-distillation recipes (methods/selfdistill/losses.py): its
settings, each term and weight on hand-checkable logits, every-scale weighting as nnU-Net's loss weighs the scales."""
import pytest
import torch

from nnunet_missingmod.training.kd import deep_supervision_weights, logit_kl, soft_dice_loss
from nnunet_missingmod.training.methods.selfdistill.losses import (
    DISTILL_TERMS, DistillationSettings, TeacherDistillationLoss)


def _logits(seed=0, sizes=(8, 4, 2)):
    """Region logits (B=2, 3 regions) at three deep-supervision scales, highest resolution first."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, size, size, size, generator=g) for size in sizes]


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-1), "DistillationSettings.temperature must be > 0, got -1"),
    (dict(temperature=0.0), "DistillationSettings.temperature must be > 0, got 0.0"),
    (dict(kl_weight=-0.5), "DistillationSettings.kl_weight must be >= 0, got -0.5"),
    (dict(dice_weight=float("nan")), "DistillationSettings.dice_weight must be >= 0, got nan"),
])
def test_distillation_settings_refuse_a_bad_value_naming_the_setting_and_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        DistillationSettings(**bad)
    assert not DistillationSettings().active and DistillationSettings(dice_weight=1.0).active


def test_the_loss_is_the_weighted_sum_of_the_kl_at_temperature_squared_and_the_soft_dice():
    teacher, student = _logits(0)[0], _logits(1)[0]
    settings = DistillationSettings(kl_weight=3.0, dice_weight=0.5, temperature=2.0)
    loss, terms = TeacherDistillationLoss(settings, regions=True)(teacher, student)
    kl = logit_kl(teacher, student, regions=True, temperature=2.0).mean() * 4.0  # τ² = 4
    dice = soft_dice_loss(teacher, student, regions=True)
    assert set(terms) == set(DISTILL_TERMS)
    assert float(terms["distill_kl"]) == pytest.approx(float(kl), rel=1e-6)
    assert float(terms["distill_dice"]) == pytest.approx(float(dice), rel=1e-6)
    assert float(loss) == pytest.approx(3.0 * float(kl) + 0.5 * float(dice), rel=1e-6)
    assert not terms["distill_kl"].requires_grad
    kl_only, _ = TeacherDistillationLoss(DistillationSettings(kl_weight=1.0), regions=True)(teacher, student)
    assert float(kl_only) == pytest.approx(float(logit_kl(teacher, student, regions=True).mean()), rel=1e-6)


def test_the_gradient_reaches_the_student_and_never_the_teacher():
    teacher, student = (t.requires_grad_() for t in (_logits(0)[0], _logits(1)[0]))
    loss, _ = TeacherDistillationLoss(DistillationSettings(1.0, 1.0), regions=True)(teacher, student)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("regions", [True, False])
def test_agreeing_outputs_distil_nothing(regions):
    logits = _logits(0)
    loss, terms = TeacherDistillationLoss(DistillationSettings(1.0, 1.0, every_scale=True), regions)(logits, logits)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert all(float(v) == pytest.approx(0.0, abs=1e-6) for v in terms.values())
    zero = TeacherDistillationLoss.zero_terms(logits[0])
    assert set(zero) == set(DISTILL_TERMS) and all(float(v) == 0 for v in zero.values())


def test_every_scale_distillation_weighs_each_scale_as_nnunets_loss():
    every = TeacherDistillationLoss(DistillationSettings(1.0, 1.0, every_scale=True), regions=True)
    plain = TeacherDistillationLoss(DistillationSettings(1.0, 1.0), regions=True)
    teacher = _logits(0)
    student = [t.clone() for t in teacher]
    student[1] = student[1] + 1.0  # only the second scale disagrees
    assert float(plain(teacher, student)[0]) == pytest.approx(0.0, abs=1e-6)  # the full resolution only
    loss, terms = every(teacher, student)
    weight = deep_supervision_weights(len(teacher))[1]
    kl = logit_kl(teacher[1], student[1], regions=True).mean()
    dice = soft_dice_loss(teacher[1], student[1], regions=True)
    assert float(terms["distill_kl"]) == pytest.approx(weight * float(kl), rel=1e-5)
    assert float(terms["distill_dice"]) == pytest.approx(weight * float(dice), rel=1e-5)
    assert float(loss) == pytest.approx(weight * float(kl + dice), rel=1e-5)
    lowest = [t.clone() for t in teacher]
    lowest[-1] = lowest[-1] + 1.0  # nnU-Net gives the lowest scale weight 0
    assert float(every(teacher, lowest)[0]) == pytest.approx(0.0, abs=1e-6)
    # one tensor instead of a list: every_scale has nothing to sum over
    assert float(every(teacher[1], student[1])[0]) == pytest.approx(float(kl + dice), rel=1e-5)
