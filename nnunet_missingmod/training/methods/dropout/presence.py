"""Telling a plain nnU-Net network which sequences are present: per-subset scale and shift after every instance
norm, chosen from the input itself.

A missing sequence reaches the network as an all-zero channel (the trainers zero it after augmentation, the
predictor after normalisation). Modality dropout trains one set of weights for all 15 subsets, so a region that
only some sequences show (enhancing tumour: T1ce) is learned as a compromise between the subsets that show it and
those that cannot; complete scans pay for it. A constant "present" input channel would not help: the instance norm
after the first convolution removes any per-channel constant. Here each instance norm instead gets a learned scale
and shift per presence pattern (feature-wise linear modulation after the norm, as conditional instance norm does
for styles): ``y = IN(x) · (1 + scale[code]) + shift[code]``, with ``code`` the bit pattern of the input channels
that are not all zero in that sample. Both tables start at zero, so the network starts as the plain one (and a
stock run's weights load into it by name); the tables add ``2 · 2^C · Σ channels`` parameters (C input channels:
16 patterns for BraTS, 0.1 % of the 3d_fullres U-Net).

The pattern follows the presence contract of :mod:`nnunet_missingmod.modalities`: our predictor tells every norm
the case's mask (:class:`PresenceConditionedNorm` is :class:`~nnunet_missingmod.modalities.PresenceAware`);
untold (training, stock ``nnUNetv2_predict`` on zero-filled files) the pattern is read from the network's input,
and a window wholly outside the brain (every channel zero after nnU-Net's masked normalisation) reads as the
complete pattern.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

from nnunet_missingmod.modalities import present_channels

MAX_INPUT_CHANNELS = 8  # 2^8 patterns per norm; beyond that a table per pattern is the wrong tool


def presence_codes(x: torch.Tensor, told: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bit pattern of the present channels of each sample (:func:`~nnunet_missingmod.modalities.present_channels`).

    Args:
        x: network input ``(B, C, *spatial)``.
        told: ``(C,)`` bool, the case's mask from the predictor, or ``None`` (read from ``x``).
    Returns:
        ``(B,)`` int64, bit ``c`` set when channel ``c`` is present.
    """
    if x.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial), got shape {tuple(x.shape)}")
    present = present_channels(x, told)  # (B, C)
    bits = 2 ** torch.arange(x.shape[1], device=x.device)
    return (present.long() * bits).sum(dim=1)


class PresenceConditionedNorm(nn.Module):
    """An affine instance norm followed by a per-presence-pattern scale and shift.

    Keeps the wrapped norm's ``weight``/``bias`` under the same names (a plain network's weights load into it) and
    adds ``presence_scale``/``presence_shift`` ``(n_codes, C)``, zero at the start. :attr:`codes` ``(B,)`` is set
    by the network's forward pre-hook (:func:`condition_on_presence`) before every forward, from the mask the
    predictor told (:meth:`set_present_channels`) or else from the input.
    """

    def __init__(self, norm: _InstanceNorm, n_codes: int):
        super().__init__()
        if not norm.affine or norm.track_running_stats:
            raise ValueError("presence conditioning needs affine instance norms without running statistics "
                             f"(nnU-Net's default), got {norm}")
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias
        self.presence_scale = nn.Parameter(torch.zeros(n_codes, norm.num_features))
        self.presence_shift = nn.Parameter(torch.zeros(n_codes, norm.num_features))
        self.codes: Optional[torch.Tensor] = None
        self.told: Optional[torch.Tensor] = None  # plain attributes: never in the state_dict

    def set_present_channels(self, mask: Optional[torch.Tensor]) -> None:
        self.told = None if mask is None else torch.as_tensor(mask, dtype=torch.bool).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)
        if self.codes is None:
            raise RuntimeError("presence codes not set: call the network itself, not a submodule")
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
        scale = self.presence_scale[self.codes].to(y.dtype).view(shape)
        shift = self.presence_shift[self.codes].to(y.dtype).view(shape)
        return y * (1 + scale) + shift


def _set_codes(network: nn.Module, args) -> None:
    # every norm is told the same mask (modalities.tell_present_channels), so the first one's stands for all
    norms = network.presence_norms
    codes = presence_codes(args[0], norms[0].told)
    for norm in norms:
        norm.codes = codes


def condition_on_presence(network: nn.Module, num_input_channels: int) -> nn.Module:
    """Replace every instance norm of ``network`` by a :class:`PresenceConditionedNorm` (in place) and register
    the forward pre-hook that reads the presence pattern from the input. Returns ``network``."""
    if not 1 <= num_input_channels <= MAX_INPUT_CHANNELS:
        raise ValueError(f"presence conditioning supports 1..{MAX_INPUT_CHANNELS} input channels, "
                         f"got {num_input_channels}")
    n_codes = 2 ** num_input_channels
    # one replacement per norm object: nnU-Net's blocks hold each norm twice (``.norm`` and in ``.all_modules``)
    replacements: Dict[int, PresenceConditionedNorm] = {}
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _InstanceNorm):
                if id(child) not in replacements:
                    replacements[id(child)] = PresenceConditionedNorm(child, n_codes)
                setattr(parent, name, replacements[id(child)])
    replaced: List[PresenceConditionedNorm] = list(replacements.values())
    if not replaced:
        raise ValueError(f"{type(network).__name__} has no instance norm to condition")
    # a plain list attribute, not a ModuleList: the norms are registered where they sit
    object.__setattr__(network, "presence_norms", replaced)
    network.register_forward_pre_hook(_set_codes)
    return network


class PresenceConditioning:
    """Trainer mixin: the plans' network with :func:`condition_on_presence` applied. A classmethod (nnU-Net's is
    static) that both ``initialize()`` and nnU-Net's predictor call, so every checkpoint loads strictly."""

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        return condition_on_presence(network, num_input_channels)
