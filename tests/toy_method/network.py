"""The toy method's network: nnU-Net's planned network behind a learned gain per input channel."""
from __future__ import annotations

import torch
from torch import nn


class ChannelGainNetwork(nn.Module):
    """``network(x · gain)``: the planned network with each input channel scaled by a learned gain (1 at the start,
    so the wrapper starts as the planned network itself).

    A missing sequence is an all-zero channel, which any gain keeps at zero; the gains let the method re-weigh the
    sequences it is given. The output is exactly what the wrapped network returns (a list over the deep-supervision
    scales or one tensor), so nnU-Net's loss, validation and predictor use it unchanged.

    Args:
        network: the planned network (``nnUNetTrainer.build_network_architecture``); it must have ``decoder``, whose
            ``deep_supervision`` nnU-Net toggles.
        num_input_channels: C, the number of input channels.
        learn_gain: ``False``: the gains stay 1 (a buffer instead of a parameter; the checkpoint layout is the same).

    Raises:
        ValueError: ``num_input_channels`` < 1.
    """

    def __init__(self, network: nn.Module, num_input_channels: int, learn_gain: bool = True):
        super().__init__()
        if num_input_channels < 1:
            raise ValueError(f"ChannelGainNetwork: num_input_channels must be >= 1, got {num_input_channels}")
        self.network = network
        gain = torch.ones(num_input_channels)
        if learn_gain:
            self.gain = nn.Parameter(gain)
        else:
            self.register_buffer("gain", gain)

    @property
    def decoder(self) -> nn.Module:
        """The wrapped network's decoder (nnU-Net sets ``decoder.deep_supervision`` on the network it trains)."""
        return self.network.decoder

    def forward(self, x: torch.Tensor):
        """
        Args:
            x: (B, C, *spatial) normalised input, missing channels zero.
        Returns:
            what the wrapped network returns for ``x`` scaled channel-wise by the gains.
        """
        return self.network(x * self.gain.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype))
