"""Presence-conditioned instance norms (methods/dropout/presence.py) on a real nnU-Net U-Net: the pattern of each
sample (read from its input, or told by the predictor), and a pattern's table row acting on exactly the samples that
have that pattern."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_missingmod.modalities import PresenceAware, tell_present_channels
from nnunet_missingmod.training.methods.dropout.presence import (
    PresenceConditionedNorm, condition_on_presence, presence_codes)

COMPLETE, NO_T1, T2_ONLY = 0b1111, 0b1110, 0b0100  # bit c: channel c (T1, T1ce, T2, FLAIR) present


def small_unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return PlainConvUNet(4, 2, (4, 8), nn.Conv3d, 3, (1, 2), (1, 1), 3, (1,), False, nn.InstanceNorm3d,
                         {"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def three_patterns() -> torch.Tensor:
    """(3, 4, 8, 8, 8): sample 0 complete, sample 1 without T1, sample 2 with T2 alone (zero-filled channels)."""
    x = torch.randn(3, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    x[1, 0] = 0.0
    x[2, [0, 1, 3]] = 0.0
    return x


def first_norm(net: nn.Module) -> PresenceConditionedNorm:
    return next(m for m in net.modules() if isinstance(m, PresenceConditionedNorm))


def test_codes_are_the_bit_pattern_of_the_present_channels_and_an_all_zero_sample_counts_as_complete():
    x = torch.zeros(3, 4, 2, 2, 2)
    x[0] = 1.0                   # all four -> 0b1111
    x[1, 1, 0, 0, 1] = -2.0      # only channel 1 (one voxel, negative) -> 0b0010
    # sample 2 is all zero (a tile outside the brain): the presence contract reads it as complete
    assert presence_codes(x).tolist() == [COMPLETE, 0b0010, COMPLETE]
    assert presence_codes(three_patterns()).tolist() == [COMPLETE, NO_T1, T2_ONLY]
    told = torch.tensor([False, True, False, True])  # the predictor's mask wins over what the input shows
    assert presence_codes(x, told).tolist() == [0b1010] * 3
    with pytest.raises(ValueError, match="shape"):
        presence_codes(torch.zeros(4))


def test_the_conditioned_network_starts_as_the_plain_one_and_loads_its_weights_by_name():
    plain, conditioned = small_unet(), condition_on_presence(small_unet(seed=1), 4)
    missing, unexpected = conditioned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(("presence_scale", "presence_shift")) for k in missing)
    n_norms = sum(isinstance(m, nn.InstanceNorm3d) for m in plain.modules())
    assert sum(isinstance(m, PresenceConditionedNorm) for m in conditioned.modules()) == n_norms == 3
    assert sum("presence" in name for name, _ in conditioned.named_parameters()) == 2 * n_norms
    with torch.no_grad():
        assert torch.allclose(conditioned(three_patterns()), plain(three_patterns()), atol=1e-6)


@pytest.mark.parametrize("edited", [NO_T1, T2_ONLY, COMPLETE])
def test_a_patterns_table_row_changes_exactly_the_samples_with_that_pattern_and_only_it_gets_gradient(edited):
    net = condition_on_presence(small_unet(), 4)
    x = three_patterns()
    codes = presence_codes(x).tolist()
    users = [b for b, code in enumerate(codes) if code == edited]
    assert users, f"pattern {edited:04b} is used by no sample of {codes}: the edit would test nothing"
    before = net(x).detach()
    norm = first_norm(net)
    with torch.no_grad():
        norm.presence_shift[edited] += 1.0
    after = net(x)
    for b in range(len(codes)):
        if b in users:
            assert (after[b] - before[b]).abs().max() > 1e-3, f"sample {b} has pattern {edited:04b}"
        else:
            assert torch.equal(after[b], before[b]), f"sample {b} has pattern {codes[b]:04b}, not {edited:04b}"
    after.sum().backward()
    rows_with_gradient = norm.presence_shift.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert rows_with_gradient == sorted(set(codes))  # the rows of the patterns in the batch, no other


def test_a_told_mask_selects_the_row_for_every_sample_until_it_is_cleared():
    net = condition_on_presence(small_unet(), 4)
    assert all(isinstance(n, PresenceAware) for n in net.presence_norms)
    x = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))  # complete by its input
    with torch.no_grad():
        first_norm(net).presence_shift[NO_T1] += 1.0
        untold = net(x)
        assert tell_present_channels(net, torch.tensor([False, True, True, True])) == len(net.presence_norms)
        told = net(x)
        assert all((told[b] - untold[b]).abs().max() > 1e-3 for b in range(2))  # both samples use row NO_T1 now
        tell_present_channels(net, None)
        assert torch.equal(net(x), untold)


def test_norms_it_cannot_condition_are_refused():
    with pytest.raises(ValueError, match="affine"):
        PresenceConditionedNorm(nn.InstanceNorm3d(4, affine=False), 16)
    with pytest.raises(ValueError, match="no instance norm"):
        condition_on_presence(nn.Conv3d(4, 2, 1), 4)
    with pytest.raises(ValueError, match="input channels"):
        condition_on_presence(small_unet(), 9)


def test_compiles_in_one_graph_and_follows_the_pattern_of_each_call():
    """Dynamo traces the pre-hook and the tables with the network (backend 'eager': tracing without code
    generation); a table change shows in the compiled network's next call, for the samples with that pattern."""
    net = condition_on_presence(small_unet(), 4)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x = three_patterns()
    assert presence_codes(x)[1] == NO_T1
    with torch.no_grad():
        before = compiled(x)
        torch.testing.assert_close(before, net(x))
        first_norm(net).presence_shift[NO_T1] += 1.0
        after = compiled(x)
        torch.testing.assert_close(after, net(x))
        assert (after[1] - before[1]).abs().max() > 1e-3
        assert torch.equal(after[[0, 2]], before[[0, 2]])
