"""MST-KDNet's GSME style discriminator for any patch size, 2d or 3d.

Official (``models/discriminator.py``, ``get_style_discriminator(num_classes=128, ndf=64)``): conv k4 s2 p1 with
ndf, 2ndf, 4ndf channels, each followed by LeakyReLU(0.2), then ``Conv3d(4ndf, 1, kernel=(2, 3, 2))``, a kernel that
only collapses the 2x3x2 map left from the 20x24x16 fused map of a 160x192x128 crop. Here:

* the three conv layers stay (same capacity), but each axis is halved (k4 s2 p1) only while it is >= 2; an axis that
  has already reached 1 gets kernel 3, stride 1, padding 1 instead, so no axis ever shrinks below 1 and any fused-map
  size (even 1 voxel) is valid;
* the last layer is conv k3 p1 to one channel followed by global average pooling, giving one logit per sample
  (B, 1) whatever the spatial size.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn


def downsampling_plan(spatial_size: Sequence[int], num_layers: int = 3
                      ) -> List[Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]:
    """(kernel, stride, padding) per layer and axis: k4 s2 p1 (size n -> n // 2) while the axis is >= 2, else
    k3 s1 p1 (size kept)."""
    size, plan = list(spatial_size), []
    for _ in range(num_layers):
        halve = [n >= 2 for n in size]
        plan.append((tuple(4 if h else 3 for h in halve), tuple(2 if h else 1 for h in halve), (1,) * len(size)))
        size = [n // 2 if h else n for n, h in zip(size, halve)]
    return plan


class StyleDiscriminator(nn.Module):
    """Judges whether a fused enc&t map comes from the teacher (label 0) or the student (label 1).

    Args:
        in_channels: channels C of the fused map.
        dims: 2 or 3 (the plans' conv_op dimensionality).
        spatial_size: spatial size of the fused map at the planned patch (``MSTKDNetwork.fused_shape[1:]``); it only
            decides which axes are strided, other sizes work too.
        ndf: width of the first layer (official 64).
    Shapes: (B, C, *spatial) -> (B, 1) logits.
    """

    def __init__(self, in_channels: int, dims: int, spatial_size: Sequence[int], ndf: int = 64):
        super().__init__()
        if dims not in (2, 3) or len(spatial_size) != dims:
            raise ValueError(f"dims must be 2 or 3 and match spatial_size {tuple(spatial_size)}")
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        widths = [in_channels, ndf, 2 * ndf, 4 * ndf]
        layers: List[nn.Module] = []
        for (kernel, stride, padding), c_in, c_out in zip(downsampling_plan(spatial_size), widths[:-1], widths[1:]):
            layers += [conv(c_in, c_out, kernel, stride=stride, padding=padding), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(conv(widths[-1], 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.layers(fused).flatten(2).mean(dim=2)


def style_discriminator_for(network: nn.Module, ndf: int = 64) -> StyleDiscriminator:
    """A :class:`StyleDiscriminator` sized for an ``MSTKDNetwork``'s fused map (``network.fused_shape``)."""
    channels, *spatial = network.fused_shape
    return StyleDiscriminator(channels, len(spatial), spatial, ndf)
