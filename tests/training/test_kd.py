"""The distillation terms that several methods share (training/kd.py), on hand-checkable tensors."""
import math

import pytest
import torch

from nnunet_missingmod.training.kd import (
    bernoulli_kl, deep_supervision_weights, float32_autocast_off, full_resolution, logit_kl, soft_dice_loss,
    softmax_kl)

BERN_KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(Bern(.75) || Bern(.5))
CAT_KL = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)  # KL([.5, .25, .25] || uniform(3))


def test_deep_supervision_weights_are_nnunets():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])  # 1, 1/2, lowest 0; normalised
    assert sum(deep_supervision_weights(5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one scale"):
        deep_supervision_weights(0)


def test_full_resolution_is_the_first_output_of_a_deep_supervision_list():
    outputs = [torch.ones(1), torch.zeros(1)]
    assert full_resolution(outputs) is outputs[0] and full_resolution(tuple(outputs)) is outputs[0]
    assert full_resolution(outputs[1]) is outputs[1]


def test_bernoulli_and_softmax_kl_hand_examples():
    teacher = torch.tensor([math.log(3.0)])  # sigmoid = 0.75
    assert bernoulli_kl(teacher, torch.zeros(1)).item() == pytest.approx(BERN_KL, rel=1e-6)
    assert bernoulli_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    logits = torch.tensor([math.log(2.0), 0.0, 0.0]).view(1, 3, 1)  # softmax = [.5, .25, .25]
    kl = softmax_kl(logits, torch.zeros(1, 3, 1))
    assert kl.shape == (1, 1) and kl.item() == pytest.approx(CAT_KL, rel=1e-6)


def test_logit_kl_divides_by_the_temperature_and_works_in_float32():
    teacher = torch.full((1, 1, 2), 2 * math.log(3.0))  # at τ = 2: sigmoid = 0.75
    student = torch.zeros(1, 1, 2)
    kl = logit_kl(teacher.to(torch.bfloat16), student.to(torch.bfloat16), regions=True, temperature=2.0)
    assert kl.dtype == torch.float32 and kl.shape == (1, 1, 2)
    assert kl.mean().item() == pytest.approx(BERN_KL, rel=1e-2)  # bfloat16 inputs: the logit is rounded
    labels = logit_kl(torch.tensor([2 * math.log(2.0), 0.0, 0.0]).view(1, 3, 1), torch.zeros(1, 3, 1),
                      regions=False, temperature=2.0)
    assert labels.shape == (1, 1) and labels.item() == pytest.approx(CAT_KL, rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        logit_kl(teacher, student, regions=True, temperature=0)
    with pytest.raises(ValueError, match="teacher shape"):
        logit_kl(teacher, student[..., :1], regions=True)


def test_soft_dice_is_zero_at_agreement_and_weighs_each_region_alike():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    assert soft_dice_loss(logits, logits, regions=True).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(logits, logits, regions=False).item() == pytest.approx(0.0, abs=1e-6)
    # one region off, completely: (1 - dice) of that region / 3 regions
    student = logits.clone()
    student[:, 2] = -1e4  # probability 0 where the teacher has p > 0: that region's dice is ~0
    loss = soft_dice_loss(logits, student, regions=True).item()
    assert loss == pytest.approx(1 / 3, abs=1e-4)
    # label outputs compare softmax probabilities: logits shifted by a constant give the same ones
    assert soft_dice_loss(logits, logits + 5.0, regions=False).item() == pytest.approx(0.0, abs=1e-6)


def test_float32_autocast_off_disables_autocast_on_the_tensors_device():
    a = torch.randn(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with float32_autocast_off(a):
            assert (a @ a).dtype == torch.float32
        with float32_autocast_off(torch.device("cpu")):
            assert (a @ a).dtype == torch.float32
