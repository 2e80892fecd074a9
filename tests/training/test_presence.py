"""Presence-conditioned instance norms (training/presence.py) on a real nnU-Net U-Net."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_missingmod.training.presence import PresenceConditionedNorm, condition_on_presence, presence_codes


def small_unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return PlainConvUNet(4, 2, (4, 8), nn.Conv3d, 3, (1, 2), (1, 1), 3, (1,), False, nn.InstanceNorm3d,
                         {"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def test_codes_are_the_bit_pattern_of_the_channels_that_are_not_all_zero():
    x = torch.zeros(3, 4, 2, 2, 2)
    x[0] = 1.0                   # all four -> 0b1111
    x[1, 1, 0, 0, 1] = -2.0      # only channel 1 (one voxel, negative) -> 0b0010
    assert presence_codes(x).tolist() == [15, 2, 0]
    with pytest.raises(ValueError, match="shape"):
        presence_codes(torch.zeros(4))


def test_the_conditioned_network_starts_as_the_plain_one_and_loads_its_weights_by_name():
    plain, conditioned = small_unet(), condition_on_presence(small_unet(seed=1), 4)
    missing, unexpected = conditioned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(("presence_scale", "presence_shift")) for k in missing)
    n_norms = sum(isinstance(m, nn.InstanceNorm3d) for m in plain.modules())
    assert sum(isinstance(m, PresenceConditionedNorm) for m in conditioned.modules()) == n_norms == 3
    assert sum("presence" in name for name, _ in conditioned.named_parameters()) == 2 * n_norms
    x = torch.randn(2, 4, 8, 8, 8)
    x[1, 2] = 0.0  # a missing sequence
    with torch.no_grad():
        assert torch.allclose(conditioned(x), plain(x), atol=1e-6)


def test_a_patterns_table_row_changes_only_the_samples_with_that_pattern_and_only_it_gets_gradient():
    net = condition_on_presence(small_unet(), 4)
    x = torch.randn(2, 4, 8, 8, 8)
    x[1, 0] = 0.0  # sample 1 lacks T1 (bit 0): pattern 0b1110 = 14; sample 0 has all: 15
    before = net(x).detach()
    norm = next(m for m in net.modules() if isinstance(m, PresenceConditionedNorm))
    with torch.no_grad():
        norm.presence_shift[14] += 1.0
    after = net(x)
    assert torch.equal(after[0], before[0]) and not torch.allclose(after[1], before[1])
    after.sum().backward()
    rows_with_gradient = norm.presence_shift.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert rows_with_gradient == [14, 15]


def test_norms_it_cannot_condition_are_refused():
    with pytest.raises(ValueError, match="affine"):
        PresenceConditionedNorm(nn.InstanceNorm3d(4, affine=False), 16)
    with pytest.raises(ValueError, match="no instance norm"):
        condition_on_presence(nn.Conv3d(4, 2, 1), 4)
    with pytest.raises(ValueError, match="input channels"):
        condition_on_presence(small_unet(), 9)


def test_compiles_in_one_graph_and_follows_the_pattern_of_each_call():
    """Dynamo traces the pre-hook and the tables with the network (backend 'eager': tracing without code
    generation); a table change shows in the compiled network's next call."""
    net = condition_on_presence(small_unet(), 4)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x = torch.randn(2, 4, 8, 8, 8)
    x[1, 0] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))
        next(m for m in net.modules() if isinstance(m, PresenceConditionedNorm)).presence_shift[14] += 1.0
        torch.testing.assert_close(compiled(x), net(x))
