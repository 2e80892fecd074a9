"""CCSD's shared-specific network: the ShaSpec backbone (Wang et al., ``billhhh/ShaSpec`` ``DualNet_SS.py``) on the
encoder/decoder that the nnU-Net plans describe.

Per sequence m (the dataset's channels are reordered to the canonical modalities T1, T1ce, T2, FLAIR; see
:data:`~nnunet_missingmod.modalities.MODALITIES`):

* ``s_m^l = E_sh(x_m)`` — one **shared encoder** (the planned encoder with 1 input channel), run once on all
  sequences folded into the batch, plus once on a zero image (``E_sh(0)``: what a missing, zero-filled sequence gives);
* ``p_m = E_m(x_m)`` — one **specific encoder per sequence** (the planned encoder at ``specific_width`` × the planned
  widths), of which only the bottleneck is used;
* ``f_m = s_m + act(norm(conv3(cat[s_m, p_m])))`` — the **compositional fusion** at the bottleneck (one module shared
  by all sequences, as in ShaSpec);
* for a modality subset S (per sample), slot m is ``f_m`` / ``s_m^l`` when m ∈ S, otherwise a substitute:
  bottleneck ``s_{first(S)}`` (``missing_slot="shaspec"``, ShaSpec code) or ``E_sh(0)`` (``"literal"``, CCSD text), and
  skips ``E_sh(0)^l``; the unified representation at level l is ``reduce_l(cat_m slot_m^l)`` (a 1×1 conv back to the
  planned width), decoded by one planned ``UNetDecoder`` (``self.decoder``; nnU-Net toggles
  ``decoder.deep_supervision``). Widths: C_l of the shared encoder, D_l of the decoder (the planned ones; C_l = D_l
  unless ``shared_width`` narrows the shared encoder to save cost).

Because every encoder sees one sequence at a time (InstanceNorm, batch-folded sequences), the features of a present
sequence do not depend on which others are present, so one encoder pass (the *cache*) serves every subset: a subset only
re-assembles slots and decodes. The features of a missing sequence's real image are never selected (no leak).

``network(x)`` returns exactly what nnU-Net expects, for the sequences present in ``x`` (see
:meth:`CCSDNetwork.set_present_channels`). ``network(x, return_features=True, decode_subsets=...)`` returns a dict
with the
:mod:`~nnunet_missingmod.training.features` keys plus :data:`SUBSET_LOGITS`, :data:`FUSED`, :data:`MODALITY_FEATURES`,
:data:`SHARED_FEATURES`, :data:`SPECIFIC_FEATURES`, :data:`DOMAIN_LOGITS` and :data:`PRESENT`. See
``docs/methods.md`` ("CCSD network on nnU-Net") for every choice and its source.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES, SUBSETS, present_channels, subset_channel_masks
from nnunet_missingmod.training.features import DECODER, ENCODER, LOGITS, decode_with_features, planned_network

__all__ = ["SUBSET_LOGITS", "FUSED", "MODALITY_FEATURES", "SHARED_FEATURES", "SPECIFIC_FEATURES", "DOMAIN_LOGITS",
           "PRESENT", "MISSING_SLOT_CHOICES", "CCSDNetwork", "build_ccsd_network"]

SUBSET_LOGITS = "subset_logits"          # {subset index: logits like LOGITS} for every index in decode_subsets
FUSED = "fused"                          # (B, 15, D_b, *s_b) unified bottleneck F_S (post 1x1), SUBSETS order
MODALITY_FEATURES = "modality_features"  # (B, M, C_b, *s_b) fused per-sequence features f_m of the input images
SHARED_FEATURES = "shared_features"      # (B, M, C_b, *s_b) shared-encoder bottleneck s_m of the input images
SPECIFIC_FEATURES = "specific_features"  # (B, M, C_spec, *s_b) specific-encoder bottleneck p_m of the input images
DOMAIN_LOGITS = "domain_logits"          # (B, M, M) modality classifier on the pooled specific features
PRESENT = "present"                      # (B, M) bool, the per-sample availability LOGITS was computed for

MISSING_SLOT_CHOICES: Tuple[str, ...] = ("shaspec", "literal")
"""Bottleneck substitute of a missing sequence. ``shaspec``: the shared feature of the first available sequence in
the dataset's channel order (ShaSpec code, ``shared_ft[mode_split[0]::C]``). ``literal``: the shared feature of a zero
image, E_sh(0) (CCSD paper: missing sequences "directly use their shared feature" of the zeroed input)."""


@dataclass
class _EncoderCache:
    """Everything the encoders produce in one pass; every subset is assembled from it.

    ``shared_skips[l]``: (B, M, C_l, *s_l); ``zero_skips[l]``: (1, C_l, *s_l) (E_sh of a zero image);
    ``specific``: (B, M, C_spec, *s_b); ``fused``: (B, M, C_b, *s_b)."""
    shared_skips: List[torch.Tensor]
    zero_skips: List[torch.Tensor]
    specific: torch.Tensor
    fused: torch.Tensor


class CCSDNetwork(nn.Module):
    """ShaSpec's shared-specific U-Net with CCSD's one-pass subset cache (see the module docstring).

    Args:
        shared_encoder: planned encoder with 1 input channel (``return_skips=True``), possibly narrowed; widths C_l.
        specific_encoders: one encoder per canonical modality (1 input channel), bottleneck width C_spec.
        decoder: the planned ``UNetDecoder`` (consumes skips of widths ``decoder_widths``).
        channel_modalities: canonical modality of each input channel (a permutation of :data:`MODALITIES`).
        missing_slot: one of :data:`MISSING_SLOT_CHOICES`.
        decoder_widths: the skip widths the decoder expects (the planned widths); default C_l. The per-level 1x1
            reductions map the M concatenated slots (M x C_l) to them.
    """

    def __init__(self, shared_encoder: nn.Module, specific_encoders: Sequence[nn.Module], decoder: nn.Module,
                 channel_modalities: Sequence[str] = MODALITIES, missing_slot: str = "shaspec",
                 decoder_widths: Optional[Sequence[int]] = None):
        super().__init__()
        if missing_slot not in MISSING_SLOT_CHOICES:
            raise ValueError(f"missing_slot must be one of {MISSING_SLOT_CHOICES}, got {missing_slot!r}")
        channel_modalities = tuple(channel_modalities)
        if sorted(channel_modalities) != sorted(MODALITIES):
            raise MissingModError(f"channel_modalities {channel_modalities} must name each of {MODALITIES} once")
        if len(specific_encoders) != len(MODALITIES):
            raise ValueError(f"need one specific encoder per modality ({len(MODALITIES)}), "
                             f"got {len(specific_encoders)}")
        self.missing_slot = missing_slot
        self.channel_modalities = channel_modalities
        self.num_modalities = num_modalities = len(MODALITIES)
        self.shared_encoder = shared_encoder
        self.specific_encoders = nn.ModuleList(specific_encoders)
        self.decoder = decoder

        conv = shared_encoder.conv_op
        widths = list(shared_encoder.output_channels)
        decoder_widths = widths if decoder_widths is None else list(decoder_widths)
        if len(decoder_widths) != len(widths):
            raise ValueError(f"decoder_widths {decoder_widths} must have one width per encoder stage "
                             f"({len(widths)})")
        bottleneck, specific_channels = widths[-1], specific_encoders[0].output_channels[-1]
        self.bottleneck_channels, self.specific_channels = bottleneck, specific_channels

        # Compositional layer (paper: conv + norm + nonlinearity; ShaSpec code: residual s_m + conv): both kept.
        fusion = [conv(bottleneck + specific_channels, bottleneck, 3, padding=1, bias=shared_encoder.conv_bias)]
        if shared_encoder.norm_op is not None:
            fusion.append(shared_encoder.norm_op(bottleneck, **(shared_encoder.norm_op_kwargs or {})))
        if shared_encoder.nonlin is not None:
            fusion.append(shared_encoder.nonlin(**(shared_encoder.nonlin_kwargs or {})))
        self.fusion = nn.Sequential(*fusion)
        # Unified representation: cat over the M slots, brought to the decoder's (planned) width by a 1x1 conv per
        # level (ours: keeps the planned decoder; ShaSpec's decoder takes the M-times wider input).
        self.reductions = nn.ModuleList(conv(num_modalities * w, d, 1) for w, d in zip(widths, decoder_widths))
        # ShaSpec dom_classifier: Linear(C_spec -> M) on the globally pooled specific feature.
        self.domain_classifier = nn.Linear(specific_channels, num_modalities)
        from dynamic_network_architectures.initialization.weight_init import InitWeights_He
        for module in (self.fusion, self.reductions, self.domain_classifier):
            module.apply(InitWeights_He(1e-2))

        # modality_channel[m]: input channel holding canonical modality m (used to reorder x to canonical order).
        modality_channel = torch.tensor([channel_modalities.index(m) for m in MODALITIES])
        # Non-persistent buffers: they follow .to(device) and stay out of the state_dict (strict loading).
        self.register_buffer("modality_channel", modality_channel, persistent=False)
        # (15, M) presence of each subset over the canonical modalities, via the dataset's channel masks.
        self.register_buffer("subset_presence", subset_channel_masks(channel_modalities)[:, modality_channel],
                             persistent=False)
        self._told: Optional[torch.Tensor] = None  # plain attribute: never in the state_dict

    # ------------------------------------------------------------------------------------------------ availability
    def set_present_channels(self, mask) -> None:
        """The presence contract (:class:`~nnunet_missingmod.modalities.PresenceAware`): (C,) bool for every sample,
        (B, C) bool per sample, or None (read per sample from the input: :func:`~nnunet_missingmod.modalities.
        present_channels`, where an all-zero sample, a background tile, counts as complete)."""
        self._told = None if mask is None else torch.as_tensor(mask, dtype=torch.bool).detach()

    def _channel_availability(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) bool over the input channels (the presence contract)."""
        return present_channels(x, self._told)

    # ---------------------------------------------------------------------------------------------------- encoders
    def _encode(self, x_modalities: torch.Tensor) -> _EncoderCache:
        """x_modalities (B, M, *patch), canonical order, missing sequences already zeroed -> the encoder cache.
        Shared encoder: one pass on (B*M + 1, 1, *patch), the extra image being the zero image."""
        batch, num_modalities = x_modalities.shape[:2]
        spatial = x_modalities.shape[2:]
        folded = x_modalities.reshape(batch * num_modalities, 1, *spatial)
        zero_image = folded.new_zeros((1, 1, *spatial))
        skips = self.shared_encoder(torch.cat([folded, zero_image], 0))
        shared_skips = [s[:-1].reshape(batch, num_modalities, *s.shape[1:]) for s in skips]
        zero_skips = [s[-1:] for s in skips]
        specific = torch.stack([encoder(x_modalities[:, m:m + 1])[-1]
                                for m, encoder in enumerate(self.specific_encoders)], 1)  # (B, M, C_spec, *s_b)
        shared_bottleneck = shared_skips[-1]
        pairs = torch.cat([shared_bottleneck, specific], 2).flatten(0, 1)  # (B*M, C_b + C_spec, *s_b)
        fused = shared_bottleneck + self.fusion(pairs).view_as(shared_bottleneck)
        return _EncoderCache(shared_skips, zero_skips, specific, fused)

    # ---------------------------------------------------------------------------------------------------- assembly
    def _first_available(self, presence: torch.Tensor) -> torch.Tensor:
        """presence (..., M) bool -> (...) long: the present modality with the lowest input channel index."""
        rank = self.modality_channel.to(presence.device).expand_as(presence)
        return torch.where(presence, rank, torch.full_like(rank, len(self.channel_modalities))).argmin(-1)

    def _unified_bottleneck(self, cache: _EncoderCache, presence: torch.Tensor) -> torch.Tensor:
        """presence (B, K, M) bool -> F_S (B, K, D_b, *s_b): cat over the M slots, 1x1-reduced to the decoder width."""
        fused = cache.fused  # (B, M, C, *s)
        batch, k, m = presence.shape
        spatial_dims = fused.ndim - 3
        if self.missing_slot == "shaspec":
            first = self._first_available(presence)  # (B, K)
            index = first.view(batch, k, *([1] * (fused.ndim - 2))).expand(batch, k, *fused.shape[2:])
            substitute = torch.gather(cache.shared_skips[-1], 1, index)  # (B, K, C, *s)
        else:
            substitute = cache.zero_skips[-1].unsqueeze(0).expand(batch, k, *fused.shape[2:])
        select = presence.view(batch, k, m, *([1] * (1 + spatial_dims)))
        slots = torch.where(select, fused.unsqueeze(1), substitute.unsqueeze(2))  # (B, K, M, C, *s)
        unified = self.reductions[-1](slots.flatten(2, 3).flatten(0, 1))  # (B*K, C, *s)
        return unified.view(batch, k, *unified.shape[1:])

    def _unified_skip(self, level: int, cache: _EncoderCache, presence: torch.Tensor) -> torch.Tensor:
        """presence (B, K, M) -> unified skip of ``level`` (B*K, C_l, *s_l) = reduce_l(cat_m slot_m).

        The 1x1 conv is linear, so ``reduce(cat_m slot_m) = b + sum_m W_m slot_m``: each sequence's projection
        ``W_m s_m`` and ``W_m E_sh(0)`` are computed once per step and a subset is a 0/1-weighted sum of differences.
        That avoids materialising a (B, K, M, C_l, *patch) concatenation at full resolution for K subsets. A missing
        sequence's projection gets weight exactly 0 and a zero gradient (no leak)."""
        reduction = self.reductions[level]
        skips, zero = cache.shared_skips[level], cache.zero_skips[level]  # (B, M, C, *s), (1, C, *s)
        batch, m = skips.shape[:2]
        out_channels = reduction.out_channels
        # Grouped 1x1 conv: group m applies W_m (the m-th input slice of the reduction) to sequence m.
        weight = reduction.weight.view(out_channels, m, -1, *reduction.weight.shape[2:]).transpose(0, 1)
        weight = weight.reshape(m * out_channels, *weight.shape[2:])
        convolution = F.conv3d if skips.ndim == 6 else F.conv2d
        projected = convolution(skips.flatten(1, 2), weight, groups=m)  # (B, M*C_out, *s)
        projected_zero = convolution(zero.repeat(1, m, *([1] * (zero.ndim - 2))), weight, groups=m)
        projected = projected.view(batch, m, out_channels, *projected.shape[2:])
        projected_zero = projected_zero.view(1, m, out_channels, *projected_zero.shape[2:])
        difference = (projected - projected_zero).flatten(2)  # (B, M, C_out * prod(s))
        base = projected_zero.sum(1)  # (1, C_out, *s): every slot missing
        if reduction.bias is not None:
            base = base + reduction.bias.view(1, -1, *([1] * (zero.ndim - 2)))
        weights = presence.to(difference.dtype)  # (B, K, M)
        unified = torch.bmm(weights, difference).view(batch, presence.shape[1], out_channels, *skips.shape[3:])
        return (unified + base.unsqueeze(0)).flatten(0, 1)

    def _decode(self, cache: _EncoderCache, presence: torch.Tensor, unified_bottleneck: torch.Tensor):
        """Decode K subsets in one batched decoder call.

        presence (B, K, M); unified_bottleneck (B, K, D_b, *s_b). Returns (list over K of logits, skips, decoder
        features), the last two batched as (B*K, ...)."""
        batch, k = presence.shape[:2]
        skips = [self._unified_skip(level, cache, presence) for level in range(len(cache.shared_skips) - 1)]
        skips.append(unified_bottleneck.flatten(0, 1))
        logits, decoder_features = decode_with_features(self.decoder, skips)

        def split(t: torch.Tensor) -> List[torch.Tensor]:
            return list(t.view(batch, k, *t.shape[1:]).unbind(1))
        if isinstance(logits, (list, tuple)):
            per_scale = [split(t) for t in logits]
            per_subset = [[scale[i] for scale in per_scale] for i in range(k)]
        else:
            per_subset = split(logits)
        return per_subset, skips, decoder_features

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, return_features: bool = False, decode_subsets: Optional[Sequence[int]] = None):
        """x (B, C, *patch) with C = len(channel_modalities).

        Returns nnU-Net's output for the sequences available per sample (a list over deep-supervision scales,
        highest resolution first, or one (B, C_out, *patch) tensor). With ``return_features`` a dict:

        * LOGITS: that output; ENCODER: the unified skips it decoded ((B, C_l, *s_l), bottleneck last); DECODER:
          its decoder stage outputs; PRESENT: (B, M) bool availability it used (canonical modality order);
        * SUBSET_LOGITS: {i: logits of SUBSETS[i]} for each i in ``decode_subsets``, from the same encoder pass
          (x must then hold every sequence: a subset's present sequences are read from x);
        * FUSED: (B, 15, D_b, *s_b) unified bottleneck F_S of every subset (decoder width); MODALITY_FEATURES (f_m),
          SHARED_FEATURES (s_m): (B, M, C_b, *s_b); SPECIFIC_FEATURES (p_m): (B, M, C_spec, *s_b);
          DOMAIN_LOGITS: (B, M, M).

        M axes are in canonical modality order (:data:`MODALITIES`)."""
        if decode_subsets is not None and not return_features:
            raise ValueError("decode_subsets needs return_features=True")
        channels = len(self.channel_modalities)
        if x.ndim < 3 or x.shape[1] != channels:
            raise ValueError(f"expected input (B, {channels}, *patch), got {tuple(x.shape)}")
        available = self._channel_availability(x)  # (B, C), channel order
        x = x.masked_fill(~available.view(*available.shape, *([1] * (x.ndim - 2))), 0)  # ShaSpec zeroes missing
        modality_channel = self.modality_channel.to(x.device)
        present = available[:, modality_channel]  # (B, M), canonical order
        cache = self._encode(x[:, modality_channel])

        current = present.unsqueeze(1)  # (B, 1, M)
        current_bottleneck = self._unified_bottleneck(cache, current)
        (logits,), skips, decoder_features = self._decode(cache, current, current_bottleneck)
        if not return_features:
            return logits

        batch = x.shape[0]
        subsets = self.subset_presence.to(x.device)
        fused_all = self._unified_bottleneck(cache, subsets.unsqueeze(0).expand(batch, -1, -1))  # (B, 15, C, *s)
        subset_logits: Dict[int, object] = {}
        requested = [] if decode_subsets is None else [int(i) for i in decode_subsets]
        for i in requested:
            if not 0 <= i < len(SUBSETS):
                raise ValueError(f"subset index {i} out of range 0..{len(SUBSETS) - 1}")
        requested = list(dict.fromkeys(requested))  # deduplicate, keep order
        if requested:
            chosen = torch.tensor(requested, device=x.device)
            presence = subsets[chosen].unsqueeze(0).expand(batch, -1, -1)  # (B, K, M)
            per_subset, _, _ = self._decode(cache, presence, fused_all[:, chosen])
            subset_logits = dict(zip(requested, per_subset))
        pooled = cache.specific.flatten(3).mean(3)  # (B, M, C_spec): global average pool
        return {LOGITS: logits, ENCODER: skips, DECODER: decoder_features, PRESENT: present,
                SUBSET_LOGITS: subset_logits, FUSED: fused_all, MODALITY_FEATURES: cache.fused,
                SHARED_FEATURES: cache.shared_skips[-1], SPECIFIC_FEATURES: cache.specific,
                DOMAIN_LOGITS: self.domain_classifier(pooled)}


def _scaled_encoder(configuration_manager, num_output_channels: int, width: float) -> nn.Module:
    """The planned encoder (1 input channel) with every stage's width scaled by ``width`` (at least 1 channel)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    kwargs = copy.deepcopy(dict(configuration_manager.network_arch_init_kwargs))
    kwargs["features_per_stage"] = [max(1, int(round(f * width))) for f in kwargs["features_per_stage"]]
    if kwargs.get("stem_channels") is not None:
        kwargs["stem_channels"] = max(1, int(round(kwargs["stem_channels"] * width)))
    network = get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                     configuration_manager.network_arch_init_kwargs_req_import, 1,
                                     num_output_channels, allow_init=True, deep_supervision=False)
    return network.encoder


def build_ccsd_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                       enable_deep_supervision: bool, specific_width: float = 0.5, missing_slot: str = "shaspec",
                       channel_modalities: Sequence[str] = MODALITIES, shared_width: float = 1.0) -> CCSDNetwork:
    """:class:`CCSDNetwork` on the plans' architecture (PlainConvUNet or ResidualEncoderUNet, 2d or 3d).

    The decoder is that of ``planned_network`` with 1 input channel, at the planned widths (the per-level 1x1
    reductions bring the unified representation to them); the shared encoder is the planned encoder at
    ``shared_width`` x the planned widths (1.0: exactly the planned encoder; it runs on every sequence, so its width
    is the main cost control); each of the M specific encoders is the planned encoder at ``specific_width`` x the
    planned widths. ``num_input_channels`` must equal ``len(channel_modalities)``."""
    channel_modalities = tuple(channel_modalities)
    if num_input_channels != len(channel_modalities):
        raise MissingModError(f"CCSD needs one input channel per modality {channel_modalities}, "
                              f"got num_input_channels={num_input_channels}")
    for name, width in (("specific_width", specific_width), ("shared_width", shared_width)):
        if not width > 0:
            raise ValueError(f"{name} must be > 0, got {width}")
    base = planned_network(plans_manager, configuration_manager, 1, num_output_channels, enable_deep_supervision)
    planned_widths = list(base.encoder.output_channels)
    shared_encoder = base.encoder
    if shared_width != 1.0:
        shared_encoder = _scaled_encoder(configuration_manager, num_output_channels, shared_width)
        # UNetDecoder registers the encoder it was built for (it reads it only for its feature-map size estimate);
        # point it at the encoder that runs, so that no unused planned-width encoder sits in the state_dict (and
        # DDP sees no parameter without a gradient).
        base.decoder.encoder = shared_encoder
    specific = [_scaled_encoder(configuration_manager, num_output_channels, specific_width) for _ in MODALITIES]
    return CCSDNetwork(shared_encoder, specific, base.decoder, channel_modalities, missing_slot,
                       decoder_widths=planned_widths)
