"""DeMoSeg's network on hand-written plans (no dataset): RCR against the official 15-case table, the forward on every
subset (2d and 3d, deep supervision), presence told and read, CSSA and the self/mutual split on hand-checkable
inputs, the refusals."""
import copy

import pytest
import torch
from torch import nn

from conftest import model_folder_plans
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import SUBSETS, subset_channel_masks
from nnunet_missingmod.training.methods.demoseg.network import (
    CSSA, DECOUPLED, PRESENT, CSSABlock, DecouplingStem, build_demoseg_network, rcr_donors, rcr_quarter)

T1, CE, T2, FL = range(4)
# The official table (kk42yy/DeMoSeg@73cd4bb, nnUNetv2_DeMoSeg/nnUNet2_DeMoSeg/FD_CSSA_RCR_2random.py,
# feature_chosen, lines 265-339): official case -> the (sequence, quarter) in slots T1, T1ce, T2, FLAIR.
OFFICIAL_PRESENT = {0: (T1,), 1: (CE,), 2: (T2,), 3: (FL,), 4: (T1, CE), 5: (T1, T2), 6: (T1, FL), 7: (CE, T2),
                    8: (CE, FL), 9: (T2, FL), 10: (T1, CE, T2), 11: (T1, CE, FL), 12: (T1, T2, FL),
                    13: (CE, T2, FL), 14: (T1, CE, T2, FL)}
OFFICIAL_SLOTS = {
    0: [(T1, 0), (T1, 1), (T1, 2), (T1, 3)], 1: [(CE, 1), (CE, 0), (CE, 3), (CE, 2)],
    2: [(T2, 2), (T2, 3), (T2, 0), (T2, 1)], 3: [(FL, 3), (FL, 2), (FL, 1), (FL, 0)],
    4: [(T1, 0), (CE, 0), (T1, 2), (CE, 2)], 5: [(T1, 0), (T1, 1), (T2, 0), (T2, 1)],
    6: [(T1, 0), (T1, 1), (FL, 1), (FL, 0)], 7: [(CE, 1), (CE, 0), (T2, 0), (T2, 1)],
    8: [(CE, 1), (CE, 0), (FL, 1), (FL, 0)], 9: [(T2, 2), (FL, 2), (T2, 0), (FL, 0)],
    10: [(T1, 0), (CE, 0), (T2, 0), (T2, 1)], 11: [(T1, 0), (CE, 0), (FL, 1), (FL, 0)],
    12: [(T1, 0), (T1, 1), (T2, 0), (FL, 0)], 13: [(CE, 1), (CE, 0), (T2, 0), (FL, 0)],
    14: [(T1, 0), (CE, 0), (T2, 0), (FL, 0)]}


def _plans(dims=3, features=(8, 16, 32), patch=(16, 16, 16), kernels=None, strides=None):
    plans = model_folder_plans()
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    n = len(features)
    arch.update(n_stages=n, features_per_stage=list(features), n_conv_per_stage=[2] * n,
                n_conv_per_stage_decoder=[2] * (n - 1),
                kernel_sizes=kernels or [[3] * dims] * n, strides=strides or [[1] * dims] + [[2] * dims] * (n - 1))
    if dims == 2:
        arch.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d")
    config["patch_size"] = list(patch)
    return plans


def _network(plans, deep_supervision=True, **kwargs):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    manager = PlansManager(plans)
    torch.manual_seed(0)
    return build_demoseg_network(manager, manager.get_configuration("3d_fullres"), 4, 3, deep_supervision, **kwargs)


def test_rcr_reproduces_the_official_table_of_the_15_subsets():
    for case, present in OFFICIAL_PRESENT.items():
        mask = torch.tensor([[m in present for m in range(4)]])
        donors = rcr_donors(mask)[0].tolist()
        assert [(d, rcr_quarter(slot, d)) for slot, d in enumerate(donors)] == OFFICIAL_SLOTS[case], case


@pytest.mark.parametrize("dims, patch, kernels, strides", [
    (3, (8, 8, 8), None, None),
    (3, (4, 8, 8), [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),  # anisotropic plans
    (2, (16, 16), None, None),
], ids=["3d", "3d-anisotropic", "2d"])
def test_forward_on_every_subset_gives_every_deep_supervision_output(dims, patch, kernels, strides):
    network = _network(_plans(dims, patch=patch, kernels=kernels, strides=strides))
    masks = subset_channel_masks(("T1", "T1ce", "T2", "FLAIR"))  # (15, 4), SUBSETS order
    x = torch.randn(len(SUBSETS), 4, *patch, generator=torch.Generator().manual_seed(0))
    network.set_present_channels(masks)
    out = network(x, return_features=True)
    logits = out["logits"]
    assert len(logits) == 2 and logits[0].shape == (15, 3, *patch)
    assert logits[1].shape[2:] == tuple(p // s for p, s in zip(patch, (strides or [[1] * dims, [2] * dims])[1]))
    assert all(torch.isfinite(t).all() for t in logits)
    assert torch.equal(out[PRESENT], masks) and out[DECOUPLED].shape == (15, 4, 8, *patch)
    # what a missing channel held does not matter: only the present sequences reach the branches
    noisy = torch.where(masks.view(15, 4, *[1] * dims), x, torch.randn_like(x) * 5)
    torch.testing.assert_close(network(noisy)[0], logits[0])
    # each subset gives its own output (sample i of x with the full set differs from subset i for a proper subset)
    network.set_present_channels(torch.ones(4, dtype=torch.bool))
    full = network(x)[0]
    proper = [i for i, s in enumerate(SUBSETS) if not s.is_full]
    assert all(not torch.allclose(full[i], logits[0][i]) for i in proper)
    network.set_present_channels(None)
    network.decoder.deep_supervision = False  # as nnU-Net's set_deep_supervision_enabled
    assert network(x).shape == (15, 3, *patch)


def test_untold_presence_is_read_from_the_input_and_an_all_zero_sample_is_complete():
    network = _network(_plans())
    x = torch.randn(3, 4, 16, 16, 16)
    x[0, 1] = 0  # T1ce missing
    x[2] = 0     # a background tile
    present = network(x, return_features=True)[PRESENT]
    assert present.tolist() == [[True, False, True, True], [True] * 4, [True] * 4]


def test_cssa_adds_to_each_channel_the_channel_of_the_same_rank():
    cssa = CSSA(nn.Conv3d, 4, [1, 1, 1], None, None, None, None, ratio=1.0, sort_small_first=True)
    with torch.no_grad():  # identity conv, and scores increasing with the channel mean
        cssa.conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1, 1))
        cssa.conv.bias.zero_()
        for linear in (cssa.rank_scores[0], cssa.rank_scores[2]):
            linear.weight.copy_(torch.eye(4))
            linear.bias.zero_()
    x = torch.tensor([3.0, 1.0, 4.0, 2.0]).view(1, 4, 1, 1, 1).expand(1, 4, 2, 2, 2)
    # ascending ranks: order [1, 3, 0, 2]; channel i gets x_i + x_order[i]
    assert cssa(x)[0, :, 0, 0, 0].tolist() == [4.0, 3.0, 7.0, 6.0]
    cssa.sort_small_first = False  # descending: order [2, 0, 3, 1]
    assert cssa(x)[0, :, 0, 0, 0].tolist() == [7.0, 4.0, 6.0, 3.0]
    # argsort passes no gradient: the ranking MLP is frozen, the convolution trains
    cssa(x.clone().requires_grad_()).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in cssa.rank_scores.parameters())
    assert cssa.conv.weight.grad is not None


class _Constant(nn.Module):
    """Branch m's output: channel c holds 100*m + c everywhere (so each value names its sequence and channel)."""

    def __init__(self, modality, channels=8):
        super().__init__()
        self.values = torch.arange(channels, dtype=torch.float32) + 100 * modality

    def forward(self, x):
        return self.values.view(1, -1, 1, 1, 1).expand(x.shape[0], -1, *x.shape[2:]).clone()


@pytest.mark.parametrize("rcr", [True, False])
def test_the_stem_takes_self_features_of_present_and_lent_mutual_features_of_missing_sequences(rcr):
    network = _network(_plans(), rcr=rcr)
    stem = network.stem
    assert isinstance(stem, DecouplingStem) and isinstance(stem.branches[0][1], CSSABlock)
    stem.branches = nn.ModuleList(nn.Sequential(_Constant(m)) for m in range(4))
    present = torch.tensor([[False, False, True, True], [True, False, False, False]])  # T2+FLAIR; T1 alone
    fused, decoupled = stem(torch.zeros(2, 4, 2, 2, 2), present)
    values = fused[:, :, 0, 0, 0]
    if rcr:  # quarters of 2 channels: (sequence, quarter) -> channels 100*seq + 2*quarter + (0, 1)
        expected = [[(T2, 2), (FL, 2), (T2, 0), (FL, 0)], [(T1, 0), (T1, 1), (T1, 2), (T1, 3)]]
        assert values.tolist() == [[100 * s + 2 * q + i for s, q in row for i in (0, 1)] for row in expected]
    else:  # self-features only, missing slots zero
        assert values.tolist() == [[0, 0, 0, 0, 200, 201, 300, 301], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert decoupled.shape == (2, 4, 8, 2, 2, 2) and decoupled[0, 3, 5, 0, 0, 0] == 305


def test_ablation_switches_change_only_their_component():
    plans = _plans()
    default, plain, none = _network(plans), _network(plans, backbone_cssa=False), _network(plans, cssa=False)
    count = lambda net: sum(isinstance(m, CSSABlock) for m in net.modules() if m is not net.decoder.encoder)  # noqa
    stem_cssa = sum(isinstance(m, CSSABlock) for m in default.stem.modules())
    assert stem_cssa == 4 and count(plain) >= stem_cssa and count(none) == 0
    backbone = [m for m in default.encoder.stages[1:].modules()] + [m for m in default.decoder.stages.modules()]
    assert sum(isinstance(m, CSSABlock) for m in backbone) == 2 + 2  # encoder stages 1, 2 and both decoder stages
    assert not any(isinstance(m, CSSABlock) for m in list(plain.encoder.stages[1:].modules())
                   + list(plain.decoder.stages.modules()))


def test_strict_load_from_the_training_network_into_the_inference_network():
    plans = _plans()
    trained = _network(plans, deep_supervision=True)
    inference = _network(plans, deep_supervision=False)
    inference.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(1, 4, 16, 16, 16)
    torch.testing.assert_close(inference(x), trained(x)[0])


def test_width_scales_the_planned_widths_keeping_quarters():
    network = _network(_plans(features=(12, 24, 48)), width=0.5)
    assert network.stem.channels == 8 and list(network.encoder.output_channels)[1:] == [12, 24]


@pytest.mark.parametrize("change, message", [
    (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(
        network_class_name="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"),
     "DeMoSeg needs a PlainConvUNet plan"),
    (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
        features_per_stage=[6, 16, 32]), "plan a width divisible by 4"),
])
def test_plans_it_cannot_build_are_refused_in_one_line(change, message):
    plans = copy.deepcopy(_plans())
    change(plans)
    with pytest.raises(MissingModError, match=message) as error:
        _network(plans)
    assert "\n" not in str(error.value)
