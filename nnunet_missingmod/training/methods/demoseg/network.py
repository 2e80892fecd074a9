"""DeMoSeg's network (Yang et al., arXiv 2408.08708; code ``kk42yy/DeMoSeg``) on the U-Net the nnU-Net plans describe.

Per sequence m of the canonical modalities (T1, T1ce, T2, FLAIR; the dataset's channels must be in that order):

* **feature decoupling (FD)**: ``F_m = CSSA(conv(x_m))``, one branch per sequence (the planned first stage with 1
  input channel: its first conv, then its remaining convs as CSSA blocks), C_0 channels split into four quarters
  ``F_m[k]``. Quarter 0 is m's *self-feature*; quarter k > 0 is m's *mutual-feature* standing in for sequence
  ``m XOR k`` (official ``feature_chosen``: T1's quarters are T1, T1ce, T2, FLAIR; T1ce's T1ce, T1, FLAIR, T2; ...);
* **CSSA** (channel-wise sparse self-attention, official ``CSA``): ``y = act(norm(conv(x)))``, channel scores
  ``g = sigmoid(MLP(mean_space(y)))``, and ``y + y[argsort(g)]``: each channel is added to the channel of the same
  rank, so every channel is guided by exactly one other (sparse). ``argsort`` has no gradient, so the official MLP
  is never trained; here it is frozen at its initialisation, which says so (and DDP does not wait for its gradient);
* **RCR** (radiologist-mimic cross-modality expression relationships): the fused first-stage feature has one slot
  per sequence s: ``F_s[0]`` when s is present, otherwise ``F_d[s XOR d]``, the mutual-feature for s of the first
  present donor d in :data:`RCR_DONOR_PRIORITY` (the official table of the 15 subsets, ``feature_chosen``);
* the **U-Net backbone**: the planned encoder stages 1.. and decoder, every convolution whose input and output
  widths are equal and whose stride is 1 replaced by a CSSA block (the official nnU-Net v2 port replaces exactly
  these in ``ConvDropoutNormNonlin``).

``network(x)`` returns what nnU-Net expects; ``network(x, return_features=True)`` a dict with the
:mod:`~nnunet_missingmod.training.features` keys plus :data:`DECOUPLED` and :data:`PRESENT`. Presence follows the
contract of :class:`~nnunet_missingmod.modalities.PresenceAware`. ``docs/methods.md`` ("DeMoSeg") lists every
equation's source and every deviation from the official code.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES, present_channels
from nnunet_missingmod.training.features import DECODER, ENCODER, LOGITS, decode_with_features

__all__ = ["DECOUPLED", "PRESENT", "RCR_DONOR_PRIORITY", "CSSA", "CSSABlock", "DecouplingStem", "DeMoSegNetwork",
           "build_demoseg_network", "rcr_donors", "rcr_quarter"]

DECOUPLED = "decoupled"  # (B, M, C_0, *s_0) per-sequence branch conv outputs before CSSA (the alignment loss's input)
PRESENT = "present"      # (B, M) bool, the per-sample presence the logits were computed for

NUM_QUARTERS = 4
T1, T1CE, T2, FLAIR = range(len(MODALITIES))
RCR_DONOR_PRIORITY: Tuple[Tuple[int, ...], ...] = (
    (T1CE, T2, FLAIR),   # T1 missing: T1ce, else T2, else FLAIR
    (T1, FLAIR, T2),     # T1ce missing
    (FLAIR, T1, T1CE),   # T2 missing
    (T2, T1CE, T1),      # FLAIR missing
)
"""Which present sequence lends its mutual-feature to a missing one, first choice first. Read off the official
15-case table (``FD_CSSA_RCR_2random.py`` ``feature_chosen``, lines 261-343 at 73cd4bb): the partner of the same
weighting family first (T1/T1ce, T2/FLAIR), then the docstring's pairs (T1/T2, T1ce/FLAIR), then the last one.
``tests/training/methods/demoseg/test_network.py`` checks it against all 15 official cases."""

# CSSA's channel order for a rank: the official stem sorts T1's scores ascending and the others' descending
# (``SplitConvCSA``: ``csa_sort_small_first=True`` for T1 only); every backbone CSSA sorts ascending.
STEM_SORT_SMALL_FIRST = (True, False, False, False)


def rcr_quarter(slot: int, donor: int) -> int:
    """The quarter of ``donor``'s feature that expresses ``slot`` (0: its self-feature when ``donor == slot``)."""
    return slot ^ donor


def rcr_donors(present: torch.Tensor) -> torch.Tensor:
    """(B, M) long: for each sample and slot, the sequence whose feature fills it: the slot itself when present,
    otherwise the first present sequence of :data:`RCR_DONOR_PRIORITY`. ``present``: (B, M) bool, each row with at
    least one ``True``."""
    present = present.bool()
    donors = torch.arange(present.shape[1], device=present.device).expand_as(present).clone()
    for slot, priority in enumerate(RCR_DONOR_PRIORITY):
        chosen = torch.full_like(donors[:, slot], -1)
        for donor in reversed(priority):  # the first choice is written last, so it wins
            chosen = torch.where(present[:, donor], torch.full_like(chosen, donor), chosen)
        donors[:, slot] = torch.where(present[:, slot], donors[:, slot], chosen)
    if (donors < 0).any():
        raise ValueError("every sample needs at least one present sequence")
    return donors


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(dim=2)


class CSSA(nn.Module):
    """Channel-wise sparse self-attention (official ``CSA``): ``y = act(norm(conv(x)))``; ``y + y[order]`` where
    ``order = argsort(sigmoid(MLP(mean(y))))`` per sample (ascending with ``sort_small_first``). The ranking MLP is
    frozen: ``argsort`` passes no gradient to it (officially too; there it is silently never trained)."""

    def __init__(self, conv_op, channels: int, kernel_size: Sequence[int], norm_op, norm_op_kwargs: Optional[dict],
                 nonlin, nonlin_kwargs: Optional[dict], conv_bias: bool = True, ratio: float = 0.25,
                 sort_small_first: bool = True):
        super().__init__()
        kernel_size = list(kernel_size)
        self.conv = conv_op(channels, channels, kernel_size, 1, padding=[(k - 1) // 2 for k in kernel_size],
                            bias=conv_bias)
        # official: a non-affine InstanceNorm here, the block's affine norm after the residual sum
        inner = dict(norm_op_kwargs or {})
        inner["affine"] = False
        self.norm = norm_op(channels, **inner) if norm_op is not None else nn.Identity()
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()
        hidden = max(1, int(channels * ratio))
        self.rank_scores = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, channels),
                                         nn.Sigmoid())
        self.rank_scores.requires_grad_(False)
        self.sort_small_first = sort_small_first

    def channel_order(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C) long: per sample, the channels sorted by their score (in float32: a rank flipped by half-precision
        rounding would swap whole channels)."""
        with torch.autocast(y.device.type, enabled=False):
            scores = self.rank_scores(_spatial_mean(y.float()).to(self.rank_scores[0].weight.dtype))
        return torch.argsort(scores, dim=1, descending=not self.sort_small_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.nonlin(self.norm(self.conv(x)))
        order = self.channel_order(y)
        exchanged = torch.gather(y, 1, order.view(*order.shape, *([1] * (y.ndim - 2))).expand_as(y))
        return y + exchanged


class CSSABlock(nn.Module):
    """CSSA, then the planned norm and nonlinearity (official ``CSADropoutNormNonlin``); stands where a planned
    same-width, stride-1 ``ConvDropoutNormReLU`` stood."""

    def __init__(self, conv_op, channels: int, kernel_size: Sequence[int], norm_op, norm_op_kwargs, nonlin,
                 nonlin_kwargs, conv_bias: bool = True, ratio: float = 0.25, sort_small_first: bool = True):
        super().__init__()
        self.input_channels = self.output_channels = channels
        self.stride = [1] * len(kernel_size)
        self.cssa = CSSA(conv_op, channels, kernel_size, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias,
                         ratio, sort_small_first)
        self.norm = norm_op(channels, **(norm_op_kwargs or {})) if norm_op is not None else nn.Identity()
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()

    @classmethod
    def replacing(cls, block: nn.Module, ratio: float, sort_small_first: bool = True) -> "CSSABlock":
        """The CSSA block for a planned ``ConvDropoutNormReLU`` (its conv, norm and nonlinearity settings)."""
        conv = block.conv
        norm = getattr(block, "norm", None)
        nonlin = getattr(block, "nonlin", None)
        norm_kwargs = None
        if norm is not None:
            norm_kwargs = {"eps": norm.eps, "affine": norm.affine}
            if getattr(norm, "momentum", None) is not None:
                norm_kwargs["momentum"] = norm.momentum
        nonlin_kwargs = None
        if nonlin is not None:
            nonlin_kwargs = {k: getattr(nonlin, k) for k in ("negative_slope", "inplace") if hasattr(nonlin, k)}
        return cls(type(conv), conv.out_channels, conv.kernel_size, type(norm) if norm is not None else None,
                   norm_kwargs, type(nonlin) if nonlin is not None else None, nonlin_kwargs, conv.bias is not None,
                   ratio, sort_small_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.cssa(x)))


def _is_same_width_unit_stride(block: nn.Module) -> bool:
    return (block.input_channels == block.output_channels and all(int(s) == 1 for s in block.stride))


def replace_same_width_convs(module: nn.Module, ratio: float) -> int:
    """Replace, in place, every ``ConvDropoutNormReLU`` of ``module`` whose widths are equal and stride is 1 by a
    :class:`CSSABlock`. Returns how many were replaced."""
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, ConvDropoutNormReLU) and _is_same_width_unit_stride(child):
            setattr(module, name, CSSABlock.replacing(child, ratio))
            replaced += 1
        else:
            replaced += replace_same_width_convs(child, ratio)
    return replaced


class DecouplingStem(nn.Module):
    """FD + CSSA + RCR: one branch per sequence (the planned first stage on 1 channel, its later convs as CSSA
    blocks), then the RCR assembly of the four quarters. Replaces the planned encoder's first stage.

    ``rcr=False`` (ablation): a missing sequence's slot stays zero, nothing is lent."""

    def __init__(self, first_stage: nn.Module, cssa: bool = True, ratio: float = 0.25, rcr: bool = True):
        super().__init__()
        from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
        blocks = [m for m in first_stage.modules() if isinstance(m, ConvDropoutNormReLU)]
        first = blocks[0]
        channels = first.output_channels
        if channels % NUM_QUARTERS:
            raise MissingModError(f"DeMoSeg splits the first stage's {channels} features into {NUM_QUARTERS} "
                                  f"quarters (self- and mutual-features); plan a width divisible by {NUM_QUARTERS}")
        self.channels, self.rcr = channels, rcr
        branches = []
        for modality in range(len(MODALITIES)):
            conv = first.conv
            norm, nonlin = getattr(first, "norm", None), getattr(first, "nonlin", None)
            layers = [ConvDropoutNormReLU(
                type(conv), 1, channels, list(conv.kernel_size), list(conv.stride), conv.bias is not None,
                type(norm) if norm is not None else None, _norm_kwargs(norm), None, None,
                type(nonlin) if nonlin is not None else None, _nonlin_kwargs(nonlin))]
            for later in blocks[1:]:
                if cssa:
                    layers.append(CSSABlock.replacing(later, ratio, STEM_SORT_SMALL_FIRST[modality]))
                else:
                    layers.append(copy.deepcopy(later))
            branches.append(nn.Sequential(*layers))
        self.branches = nn.ModuleList(branches)

    def forward(self, x_modalities: torch.Tensor, present: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x_modalities (B, M, *patch) in canonical order, present (B, M) bool -> (fused (B, C_0, *s_0),
        decoupled (B, M, C_0, *s_0): each branch's first conv output, before CSSA)."""
        decoupled, features = [], []
        for m, branch in enumerate(self.branches):
            first = branch[0](x_modalities[:, m:m + 1])
            decoupled.append(first)
            features.append(branch[1:](first) if len(branch) > 1 else first)
        features = torch.stack(features, 1)  # (B, M, C_0, *s)
        batch, num_modalities = features.shape[:2]
        quarter = self.channels // NUM_QUARTERS
        spatial = features.shape[3:]
        quarters = features.reshape(batch, num_modalities * NUM_QUARTERS, quarter, *spatial)
        slots = torch.arange(num_modalities, device=features.device).expand(batch, -1)
        if self.rcr:
            donors = rcr_donors(present)
        else:
            donors = slots
        index = donors * NUM_QUARTERS + (slots ^ donors)  # (B, M) into the M*4 quarters
        fused = quarters[torch.arange(batch, device=features.device)[:, None], index]  # (B, M, q, *s)
        if not self.rcr:
            fused = fused * present.view(batch, num_modalities, *([1] * (fused.ndim - 2))).to(fused.dtype)
        return fused.reshape(batch, num_modalities * quarter, *spatial), torch.stack(decoupled, 1)


def _norm_kwargs(norm) -> Optional[dict]:
    if norm is None:
        return None
    kwargs = {"eps": norm.eps, "affine": norm.affine}
    if getattr(norm, "momentum", None) is not None:
        kwargs["momentum"] = norm.momentum
    return kwargs


def _nonlin_kwargs(nonlin) -> Optional[dict]:
    if nonlin is None:
        return None
    return {k: getattr(nonlin, k) for k in ("negative_slope", "inplace") if hasattr(nonlin, k)}


class DeMoSegNetwork(nn.Module):
    """The decoupling stem, the planned encoder stages 1.. and the planned decoder (module docstring).

    ``encoder`` is the planned ``PlainConvEncoder`` whose ``stages[0]`` is the :class:`DecouplingStem` (so that the
    state_dict has no unused planned first stage); ``decoder`` the planned ``UNetDecoder`` (nnU-Net toggles its
    ``deep_supervision``)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        if not isinstance(encoder.stages[0], DecouplingStem):
            raise TypeError("encoder.stages[0] must be the DecouplingStem")
        self.encoder, self.decoder = encoder, decoder
        self._told: Optional[torch.Tensor] = None  # plain attribute: never in the state_dict

    @property
    def stem(self) -> DecouplingStem:
        return self.encoder.stages[0]

    def set_present_channels(self, mask) -> None:
        """The presence contract (:class:`~nnunet_missingmod.modalities.PresenceAware`): (C,) bool for every sample,
        (B, C) per sample, or ``None`` (read from the input: an all-zero sample counts as complete)."""
        self._told = None if mask is None else torch.as_tensor(mask, dtype=torch.bool).detach()

    def forward(self, x: torch.Tensor, return_features: bool = False):
        present = present_channels(x, self._told)  # (B, M): the channels are the canonical modalities
        # a missing sequence reaches the branches as zeros, whatever the channel held
        x = x * present.view(*present.shape, *([1] * (x.ndim - 2))).to(x.dtype)
        fused, decoupled = self.stem(x, present)
        skips = [fused]
        for stage in self.encoder.stages[1:]:
            skips.append(stage(skips[-1]))
        if not return_features:
            return self.decoder(skips)
        logits, decoder_features = decode_with_features(self.decoder, skips)
        return {LOGITS: logits, ENCODER: skips, DECODER: decoder_features, DECOUPLED: decoupled, PRESENT: present}


def build_demoseg_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                          enable_deep_supervision: bool, width: float = 1.0, cssa: bool = True,
                          backbone_cssa: bool = True, rcr: bool = True, cssa_ratio: float = 0.25) -> DeMoSegNetwork:
    """:class:`DeMoSegNetwork` on the plans' PlainConvUNet (2d or 3d, any number of stages, kernels and strides).

    ``width`` scales every planned stage width (the first rounded to a multiple of 4); ``cssa=False`` keeps plain
    convolutions everywhere (the stem's too); ``backbone_cssa=False`` keeps them in the backbone only."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He
    if num_input_channels != len(MODALITIES):
        raise MissingModError(f"DeMoSeg needs one input channel per sequence {MODALITIES}, "
                              f"got num_input_channels={num_input_channels}")
    architecture = configuration_manager.network_arch_class_name
    if not architecture.endswith("PlainConvUNet"):
        raise MissingModError(f"DeMoSeg needs a PlainConvUNet plan (nnUNetPlans), got {architecture}: its stages are "
                              f"conv + CSSA pairs, for which a residual block has no place")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    kwargs = copy.deepcopy(dict(configuration_manager.network_arch_init_kwargs))
    if width != 1.0:
        widths = [max(NUM_QUARTERS, int(round(f * width))) for f in kwargs["features_per_stage"]]
        widths[0] = NUM_QUARTERS * max(1, int(round(widths[0] / NUM_QUARTERS)))
        kwargs["features_per_stage"] = widths
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    base = get_network_from_plans(architecture, kwargs, configuration_manager.network_arch_init_kwargs_req_import,
                                  1, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
    if not isinstance(base, PlainConvUNet):
        raise MissingModError(f"DeMoSeg needs a PlainConvUNet plan, got {type(base).__name__}")
    encoder, decoder = base.encoder, base.decoder
    stem = DecouplingStem(encoder.stages[0], cssa=cssa, ratio=cssa_ratio, rcr=rcr)
    if cssa and backbone_cssa:
        for stage in list(encoder.stages)[1:]:
            replace_same_width_convs(stage, cssa_ratio)
        replace_same_width_convs(decoder.stages, cssa_ratio)
    encoder.stages[0] = stem
    for module in (stem, encoder.stages, decoder.stages):
        module.apply(InitWeights_He(1e-2))
    return DeMoSegNetwork(encoder, decoder)
