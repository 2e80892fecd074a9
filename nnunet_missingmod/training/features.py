"""One feature API for the method networks: ``network(x, return_features=True)``.

Methods need intermediate features (encoder stages, decoder stages, attention maps, fused maps) next to the
logits. They get them through the module's ``__call__`` with a keyword, never through a side method such as
``network.module.encode(x)``: a side method would bypass DDP's gradient synchronisation (the reducer is prepared
in ``DistributedDataParallel.forward``) and ``torch.compile``'s graph (an ``OptimizedModule`` forwards attribute
access to the uncompiled module). Called as ``network(x)`` a method network returns exactly what nnU-Net expects.

With ``return_features=True`` the result is a plain ``dict`` (traceable by ``torch.compile``, passed through by
DDP) with at least these keys; methods add their own (documented by the network):

* :data:`LOGITS`: what ``network(x)`` returns (a list over deep-supervision scales, highest resolution first, when
  deep supervision is on; one tensor otherwise);
* :data:`ENCODER`: list of encoder stage outputs, highest resolution first (the skips; the last is the bottleneck);
* :data:`DECODER`: list of decoder stage outputs, lowest resolution first (each is the input of a seg head).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

LOGITS = "logits"
ENCODER = "encoder"
DECODER = "decoder"


def decode_with_features(decoder: nn.Module, skips: Sequence[torch.Tensor], return_upsampled: bool = False
                         ) -> Tuple:
    """Run a ``dynamic_network_architectures`` ``UNetDecoder`` on ``skips`` and also return its stage outputs.

    Same computation as ``UNetDecoder.forward`` of dynamic-network-architectures 0.4.x (used by nnunetv2 2.8.1;
    ``pyproject.toml`` pins ``<0.5`` and ``tests/training/test_features.py`` checks the logits against
    ``decoder(skips)``), which returns only the logits.

    Args:
        decoder: a ``UNetDecoder`` (``transpconvs``, ``stages``, ``seg_layers``, ``deep_supervision``).
        skips: encoder outputs, highest resolution first, bottleneck last; skip ``l`` is (B, C_l, *spatial_l).
        return_upsampled: also return each stage's transposed-convolution output (before it meets its skip).
    Returns:
        ``(logits, decoder_features)``: logits exactly as ``decoder(skips)``; decoder_features: one
        (B, C_l, *spatial_l) tensor per decoder stage, lowest resolution first; with ``return_upsampled`` a third
        list, the upsampled inputs of the stages in the same order.
    """
    lres_input = skips[-1]
    seg_outputs, features, upsampled = [], [], []
    last = len(decoder.stages) - 1
    for s in range(len(decoder.stages)):
        up = decoder.transpconvs[s](lres_input)
        upsampled.append(up)
        x = decoder.stages[s](torch.cat((up, skips[-(s + 2)]), 1))
        features.append(x)
        if decoder.deep_supervision:
            seg_outputs.append(decoder.seg_layers[s](x))
        elif s == last:
            seg_outputs.append(decoder.seg_layers[-1](x))
        lres_input = x
    seg_outputs = seg_outputs[::-1]
    logits = seg_outputs if decoder.deep_supervision else seg_outputs[0]
    return (logits, features, upsampled) if return_upsampled else (logits, features)


def planned_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                    enable_deep_supervision: bool) -> nn.Module:
    """The network nnU-Net's plans describe (PlainConvUNet, ResidualEncoderUNet, ...), built as nnunetv2 2.8.1's
    ``nnUNetTrainer.build_network_architecture`` builds it. Method networks take its ``encoder`` and ``decoder``."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    return get_network_from_plans(
        configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
        allow_init=True, deep_supervision=enable_deep_supervision)
