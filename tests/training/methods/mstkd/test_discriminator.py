"""GSME's style discriminator (methods/mstkd/discriminator.py): any map size, its downsampling plan, and the one
built for an MST-KDNet network's fused map."""
from __future__ import annotations

import pytest
import torch

from nnunet_missingmod.training.methods.mstkd.discriminator import (
    StyleDiscriminator, downsampling_plan, style_discriminator_for)
from nnunet_missingmod.training.methods.mstkd.network import FUSED, SMALL, build_mstkd_network
from plans_helpers import tiny_2d

torch.set_num_threads(1)
N_IN, N_OUT = 4, 3


def _build_2d():
    plans_manager, configuration_manager = tiny_2d()
    torch.manual_seed(0)
    return build_mstkd_network(plans_manager, configuration_manager, N_IN, N_OUT, True, SMALL), configuration_manager


@pytest.mark.parametrize("size", [(20, 24, 16), (3, 4, 3), (1, 1, 1), (5, 1, 9), (4, 6), (1, 3)])
def test_discriminator_any_size(size):
    discriminator = StyleDiscriminator(8, len(size), size, ndf=4)
    fused = torch.randn(3, 8, *size, requires_grad=True)
    logits = discriminator(fused)
    assert logits.shape == (3, 1)
    logits.sum().backward()
    assert fused.grad.abs().sum() > 0
    # every intermediate map keeps at least 1 voxel per axis
    x = fused.detach()
    for layer in discriminator.layers:
        x = layer(x)
        assert min(x.shape[2:]) >= 1


def test_discriminator_downsampling_plan():
    # official 20x24x16 -> 10x12x8 -> 5x6x4 -> 2x3x2 before the last conv
    plan = downsampling_plan((20, 24, 16))
    assert all(stride == (2, 2, 2) and kernel == (4, 4, 4) for kernel, stride, _ in plan)
    # 3x4x3: axes 0/2 halve once (-> 1), axis 1 twice (-> 1), then stride 1 with kernel 3
    assert [stride for _, stride, _ in downsampling_plan((3, 4, 3))] == [(2, 2, 2), (1, 2, 1), (1, 1, 1)]
    discriminator = StyleDiscriminator(8, 3, (20, 24, 16), ndf=4)
    assert discriminator.layers[:-1](torch.zeros(1, 8, 20, 24, 16)).shape[2:] == (2, 3, 2)


def test_discriminator_for_network():
    network, configuration_manager = _build_2d()
    discriminator = style_discriminator_for(network, ndf=4)
    network.eval()
    with torch.no_grad():
        fused = network(torch.randn(2, N_IN, *configuration_manager.patch_size), return_features=True)[FUSED]
        assert discriminator(fused).shape == (2, 1)
