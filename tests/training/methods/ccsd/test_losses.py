"""CCSD losses (methods/ccsd/losses.py) on tiny, hand-checkable tensors."""
import math

import pytest
import torch

from nnunet_missingmod.modalities import MODALITIES, SUBSETS
from nnunet_missingmod.training.methods.ccsd.losses import (
    DEFAULTS, DEFAULT_SOURCES, DMCDLoss, HMSDLoss, domain_classification_loss, hierarchy_level_subsets,
    sample_hierarchy_level, shared_alignment_loss)
from nnunet_missingmod.training.methods.ccsd.path import FULL_SET_INDEX, decremental_path, subset_index_of

T1, T1CE, T2, FLAIR = range(4)
BERN_KL = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(Bern(.75) || Bern(.5)) = 0.130812
CAT_KL = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)  # KL([.5,.25,.25] || uniform(3)) = 0.058892


def idx(*modalities):
    return subset_index_of(tuple(i in modalities for i in range(4)))


# ---------------------------------------------------------------------------------------------------- defaults

def test_defaults_have_sources():
    assert DEFAULTS == dict(temperature=2.0, hmsd=1.0, dmcd=1.0, dmcd_normalise=True, shared_alignment=0.1, domain=0.02,
                            levels=(1, 2, 3))
    assert set(DEFAULT_SOURCES) == set(DEFAULTS)


# --------------------------------------------------------------------------------------------------- hierarchy

def test_hierarchy_level_subsets():
    assert [len(hierarchy_level_subsets(k)) for k in (1, 2, 3)] == [4, 6, 4]
    for k in (1, 2, 3, 4):
        assert all(SUBSETS[i].cardinality == k for i in hierarchy_level_subsets(k))
    assert hierarchy_level_subsets(1) == (0, 1, 2, 3)
    assert hierarchy_level_subsets(4) == (FULL_SET_INDEX,)
    with pytest.raises(ValueError):
        hierarchy_level_subsets(0)


def test_sample_hierarchy_level():
    draws = [sample_hierarchy_level(torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draws) == {1, 2, 3}
    assert draws == [sample_hierarchy_level(torch.Generator().manual_seed(s)) for s in range(40)]
    assert {sample_hierarchy_level(torch.Generator().manual_seed(s), weights=(0, 1, 0)) for s in range(10)} == {2}
    assert {sample_hierarchy_level(torch.Generator().manual_seed(s), levels=(1, 3)) for s in range(30)} == {1, 3}
    with pytest.raises(ValueError):
        sample_hierarchy_level(weights=(0, 0, 0))


# -------------------------------------------------------------------------------------------------------- HMSD

def test_hmsd_bernoulli_one_voxel_hand_computed():
    teacher = torch.tensor([2 * math.log(3.0)]).view(1, 1, 1, 1, 1)  # sigmoid(z / 2) = 0.75
    student = torch.zeros(1, 1, 1, 1, 1)  # sigmoid = 0.5
    loss = HMSDLoss(temperature=2.0)(teacher, [student])
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(4 * BERN_KL, rel=1e-5)  # × τ² = 4
    unscaled = HMSDLoss(temperature=2.0, scale_by_temperature_squared=False)(teacher, [student])
    assert unscaled.item() == pytest.approx(BERN_KL, rel=1e-5)


def test_hmsd_temperature_scaling():
    teacher = torch.tensor([3 * math.log(3.0)]).view(1, 1, 1)  # τ = 3: sigmoid(z / 3) = 0.75
    student = torch.zeros(1, 1, 1)
    assert HMSDLoss(temperature=3.0)(teacher, [student]).item() == pytest.approx(9 * BERN_KL, rel=1e-5)
    assert HMSDLoss(temperature=1.0)(teacher, [student]).item() != pytest.approx(9 * BERN_KL, rel=1e-3)


def test_hmsd_softmax_one_voxel_hand_computed():
    teacher = torch.tensor([2 * math.log(2.0), 0.0, 0.0]).view(1, 3, 1, 1)  # softmax(z / 2) = [.5, .25, .25]
    student = torch.zeros(1, 3, 1, 1)  # uniform
    loss = HMSDLoss(temperature=2.0, regions=False)(teacher, [student])
    assert loss.item() == pytest.approx(4 * CAT_KL, rel=1e-5)
    # the region variant on the same logits is a different quantity (per-channel Bernoulli)
    assert HMSDLoss(temperature=2.0, regions=True)(teacher, [student]).item() != pytest.approx(4 * CAT_KL, rel=1e-3)


def test_hmsd_means_over_regions_voxels_and_students():
    teacher = torch.zeros(1, 2, 2)  # (B, K=2 regions, 2 voxels)
    teacher[0, 0, 0] = 2 * math.log(3.0)  # only one of 4 (region, voxel) entries differs from the student
    student = torch.zeros(1, 2, 2)
    hmsd = HMSDLoss(temperature=2.0)
    assert hmsd(teacher, [student]).item() == pytest.approx(4 * BERN_KL / 4, rel=1e-5)
    assert hmsd(teacher, [student, teacher.clone()]).item() == pytest.approx(4 * BERN_KL / 8, rel=1e-5)


@pytest.mark.parametrize("regions", [True, False])
def test_hmsd_zero_when_student_equals_teacher_and_gradient_only_to_students(regions):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    same = teacher.detach().clone().requires_grad_(True)
    assert HMSDLoss(regions=regions)(teacher, [same]).item() == 0.0
    student = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    loss = HMSDLoss(regions=regions)(teacher, [student, same])
    assert loss.item() > 0
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_hmsd_float32_under_autocast_and_checks():
    teacher = torch.randn(1, 3, 4, 4).bfloat16()
    student = torch.randn(1, 3, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = HMSDLoss()(teacher, [student])
    assert loss.dtype == torch.float32
    reference = HMSDLoss()(teacher.float(), [student.float()])
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    with pytest.raises(ValueError):
        HMSDLoss()(teacher, [])
    with pytest.raises(ValueError):
        HMSDLoss()(teacher, [student[:, :2]])


# -------------------------------------------------------------------------------------------------------- DMCD

def test_dmcd_raw_mse_hand_example_and_teacher_side_detached():
    values = torch.zeros(15)
    path = [FULL_SET_INDEX, idx(T1, T1CE, T2), idx(T1, T1CE), idx(T1CE)]
    values[path[0]], values[path[1]], values[path[2]], values[path[3]] = 4.0, 3.0, 1.0, 1.0
    fused = values.view(1, 15, 1, 1).clone().requires_grad_(True)
    loss = DMCDLoss(normalise=False)(fused, torch.tensor([path]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(((3 - 4) ** 2 + (1 - 3) ** 2 + 0) / 3)
    loss.backward()
    grad = fused.grad.view(15)
    # only the student side of each step gets gradient: d/dF_{S1} = 2/3 (F_{S1} - F_{S0}) = -2/3 (no teacher term)
    assert grad[path[0]].item() == 0.0
    assert grad[path[1]].item() == pytest.approx(-2 / 3)
    assert grad[path[2]].item() == pytest.approx(2 / 3 * (1 - 3))
    assert grad[path[3]].item() == 0.0
    assert grad.abs().sum().item() == pytest.approx(2 / 3 + 4 / 3)


def test_dmcd_zero_when_equal_and_mapping_input_matches_tensor_input():
    g = torch.Generator().manual_seed(1)
    path = decremental_path(torch.randn(3, 4, 2, 2, generator=g))
    const = torch.randn(1, 1, 2, 3, 3, generator=g).expand(3, 15, 2, 3, 3)
    assert DMCDLoss()(const, path).item() == 0.0
    cache = {i: torch.randn(3, 2, 3, 3, generator=g, requires_grad=True) for i in range(15)}
    stacked = torch.stack([cache[i] for i in range(15)], dim=1)
    loss = DMCDLoss()(cache, path)
    assert loss.item() == pytest.approx(DMCDLoss()(stacked, path).item(), rel=1e-6)
    loss.backward()
    assert cache[FULL_SET_INDEX].grad is None  # only ever a teacher
    last = {row[-1] for row in path.tolist()}
    assert all(cache[i].grad is not None for i in last)


def test_dmcd_skips_no_op_steps_and_float32_under_autocast():
    path = torch.tensor([[idx(T1CE, FLAIR), idx(FLAIR), idx(FLAIR), idx(FLAIR)]])
    fused = torch.zeros(1, 15, 1, 1)
    fused[0, idx(T1CE, FLAIR)] = 2.0
    assert DMCDLoss(normalise=False)(fused, path).item() == pytest.approx(4.0)  # one valid step, not 4/3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DMCDLoss()(fused.bfloat16(), path)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError):
        DMCDLoss()(torch.zeros(1, 14, 1, 1), path)


def test_dmcd_normalised_hand_example_is_scale_invariant_with_student_side_gradient():
    path = torch.tensor([[FULL_SET_INDEX, idx(T1, T1CE, T2), idx(T1, T1CE), idx(T1CE)]])
    fused = torch.zeros(1, 15, 2, 1, 1)
    fused[0, path[0, 0], :, 0, 0] = torch.tensor([3.0, 0.0])   # unit (1, 0)
    fused[0, path[0, 1], :, 0, 0] = torch.tensor([0.0, 0.5])   # unit (0, 1): squared distance 2
    fused[0, path[0, 2], :, 0, 0] = torch.tensor([-4.0, 0.0])  # unit (-1, 0): squared distance 2
    fused[0, path[0, 3], :, 0, 0] = torch.tensor([-1.0, 0.0])  # same direction: 0
    fused.requires_grad_(True)
    loss = DMCDLoss()(fused, path)
    assert loss.item() == pytest.approx((2 + 2 + 0) / 3)
    assert DMCDLoss()(fused.detach() * 1e3, path).item() == pytest.approx(loss.item())  # no scale to grow into
    loss.backward()
    grad = fused.grad.view(15, 2)
    assert grad[path[0, 0]].abs().sum().item() == 0.0  # the full set only teaches
    assert grad[path[0, 1]].abs().sum().item() > 0


@pytest.mark.parametrize("normalise", [True, False])
def test_dmcd_with_shared_weights_diverges_only_as_raw_mse(normalise):
    """Teacher and student through the same weights (as F_S through the shared 1x1 reduction), a substitute slot
    weaker than but aligned with the removed sequence's feature (as s_first vs f_m = s_m + fusion), SGD with
    nnU-Net's momentum and clipping: the raw MSE grows without bound (the divergence measured in training), the
    normalised form decreases."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.eye(8) + 0.1 * torch.randn(8, 8))
    optimizer = torch.optim.SGD([weight], lr=1e-2, momentum=0.99, nesterov=True)
    teacher_input = torch.rand(2, 8, 16) + 0.5  # (B, C, voxels), non-negative like post-ReLU features
    student_input = teacher_input.clone()
    student_input[:, 4:] = 0.5 * teacher_input[:, 4:]
    path = torch.tensor([[FULL_SET_INDEX, idx(T1, T1CE, T2)]] * 2)
    rows = torch.arange(2)
    losses = []
    for _ in range(250):
        fused = torch.zeros(2, 15, 8, 16)
        fused = fused.index_put((rows, path[:, 0]), torch.einsum("oc,bcv->bov", weight, teacher_input))
        fused = fused.index_put((rows, path[:, 1]), torch.einsum("oc,bcv->bov", weight, student_input))
        loss = DMCDLoss(normalise=normalise)(fused, path)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([weight], 12)  # as nnU-Net's train_step
        optimizer.step()
        losses.append(loss.item())
    if normalise:
        assert losses[-1] < 0.1 * losses[0]
    else:
        assert losses[-1] > 1000 * losses[0]


# ------------------------------------------------------------------------------------------------ ShaSpec terms

def test_shared_alignment_hand_example():
    shared = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 4, 1, 1)
    # |T1-T1ce| + |T1ce-T2| + |T2-FLAIR| + |FLAIR-T1| = 1 + 2 + 3 + 6
    assert shared_alignment_loss(shared).item() == pytest.approx(12.0)
    assert shared_alignment_loss(shared, pair_reduction="mean").item() == pytest.approx(3.0)
    assert shared_alignment_loss(torch.ones(2, 4, 3, 2)).item() == 0.0


def test_shared_alignment_equals_shaspec_code_in_its_channel_order():
    g = torch.Generator().manual_seed(2)
    ours = torch.randn(2, 4, 3, 2, 2, generator=g)  # T1, T1ce, T2, FLAIR
    n, c = 2, 4
    shaspec = ours[:, [FLAIR, T1, T1CE, T2]].reshape(n * c, 3, 2, 2)  # ShaSpec folds (FL, T1, T1ce, T2) into batch
    l1 = torch.nn.L1Loss()
    sl = [shaspec[m:n * c + 1:c] for m in range(c)]  # train_SS.py: shared_info[m:N*C+1:C]
    reference = l1(sl[0], sl[1]) + l1(sl[1], sl[2]) + l1(sl[2], sl[3]) + l1(sl[3], sl[0])
    assert shared_alignment_loss(ours).item() == pytest.approx(reference.item(), rel=1e-6)


def test_domain_classification_hand_examples():
    assert domain_classification_loss(torch.zeros(2, 4, 4)).item() == pytest.approx(math.log(4))
    logits = torch.eye(4).expand(3, 4, 4) * math.log(3.0)  # correct class 3/(3+3) = 0.5
    assert domain_classification_loss(logits).item() == pytest.approx(math.log(2))
    wrong = torch.eye(4)[[1, 2, 3, 0]].view(1, 4, 4) * 50.0  # confidently wrong
    assert domain_classification_loss(wrong).item() > 40
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert domain_classification_loss(torch.zeros(1, 4, 4).bfloat16()).dtype == torch.float32
    assert len(MODALITIES) == 4
