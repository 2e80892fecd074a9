"""MST-KDNet's network (Zhu et al., MICCAI 2025) on an nnU-Net encoder/decoder.

The official network (``Quanato607/MST-KDNet``, ``models/MSTKDNet.py`` + ``models/unetr.py``) is a small residual U-Net
whose 1/8-resolution stage ``c3d`` goes through a ViT with a UNETR-style decoder (``out = UNETR(c3d) + c3d``), and
whose GSME features are ``[c3d, style, content]`` with ``style = conv1x1(cat[pool(c2d), c3d, out])``. Here the U-Net is
the one the nnU-Net plans describe (:func:`~nnunet_missingmod.training.features.planned_network`) and the same
transformer stage is inserted at the encoder stage with cumulative stride ``TransformerConfig.stage_stride``:

* ``f_enc``  = output of that encoder stage, (B, C, *s);
* ``f_t``    = ``f_enc + header(UNETR(f_enc))``, fed to the deeper encoder stages (official: ``content`` is computed
  from ``out``);
* ``fused``  = ``conv1x1(cat[maxpool(previous stage), f_enc, f_t])`` (official ``style``), the skip of that stage, so
  the decoder stage there computes ``stage(cat[up(deep), fused])``, the nnU-Net form of the official
  ``convco(cat[style, content])``;
* ``content`` = the decoder's upsampled deep feature at that stage (``transpconv`` output, (B, C, *s), before it meets
  the skip), or, when the stage is the bottleneck, ``content_block(f_t)`` followed by
  ``conv1x1(cat[fused, content])`` as the bottleneck (exactly the official layout).

``network(x)`` returns what the planned network returns; ``network(x, return_features=True)`` returns a dict with the
:mod:`~nnunet_missingmod.training.features` keys plus :data:`ATTENTION`, :data:`MST_FEATURES`, :data:`GSME_FEATURES`,
:data:`FUSED` and :data:`CONTENT`. ``docs/methods.md`` ("MST-KDNet network on nnU-Net") lists every deviation from
the official code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_missingmod.training.features import DECODER, ENCODER, LOGITS, decode_with_features, planned_network

ATTENTION = "attention"          # list over extract layers of (B, heads, N, N) post-softmax, pre-dropout, fp32
MST_FEATURES = "mst_features"    # [z3, z6, z9, z12] UNETR-decoder maps (official ``unetr_fs``)
GSME_FEATURES = "gsme_features"  # [f_enc, fused, content], all (B, C, *s) (official ``Global_style``)
FUSED = "fused"                  # the fused enc&t map the style discriminator judges (= GSME_FEATURES[1])
CONTENT = "content"              # f_dec, for the content MSE (= GSME_FEATURES[2])


@dataclass(frozen=True)
class TransformerConfig:
    """Transformer stage hyper-parameters; the defaults are the official ``UNETR`` ones (ViT-B, token patch 4 at 1/8).

    ``decoder_channels`` are the channels of the four multi-scale features (z3, z6, z9, z12), official (64, 128, 256,
    512). ``stage_stride``: the encoder stage whose cumulative stride is this on every axis that the plans downsample
    that far; see :func:`select_transformer_stage` for the fallback.
    """
    embed_dim: int = 768
    num_heads: int = 12
    num_layers: int = 12
    mlp_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    extract_layers: Tuple[int, ...] = (3, 6, 9, 12)
    max_token_patch: int = 4
    stage_stride: int = 8
    decoder_channels: Tuple[int, int, int, int] = (64, 128, 256, 512)

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        # The UNETR-style decoder has one branch per extracted layer (z3, z6, z9, z12 in the official code).
        if len(self.extract_layers) != 4 or len(self.decoder_channels) != 4:
            raise ValueError("extract_layers and decoder_channels must have 4 entries (one per multi-scale feature)")
        if list(self.extract_layers) != sorted(set(self.extract_layers)) or not \
                (1 <= self.extract_layers[0] and self.extract_layers[-1] <= self.num_layers):
            raise ValueError(f"extract_layers {self.extract_layers} must be increasing, within 1..{self.num_layers}")
        if self.max_token_patch < 1 or self.stage_stride < 1:
            raise ValueError("max_token_patch and stage_stride must be >= 1")


# A CPU-sized transformer for tests and smoke runs (not a method setting).
SMALL = TransformerConfig(embed_dim=96, num_heads=4, num_layers=4, mlp_dim=192, extract_layers=(1, 2, 3, 4),
                          decoder_channels=(16, 32, 64, 128))


# Half the official widths (ViT-S: embed 384, 6 heads, MLP 1536, 12 layers; UNETR-decoder channels halved), for
# nnU-Net's BraTS plans on one GPU (``MSTKDTrainer_vitSmall``; costs in docs/benchmarks.md).
VIT_SMALL = TransformerConfig(embed_dim=384, num_heads=6, mlp_dim=1536, decoder_channels=(32, 64, 128, 256))


def cumulative_strides(strides: Sequence[Sequence[int]]) -> List[Tuple[int, ...]]:
    """Per-stage cumulative stride per axis, e.g. [[1,1],[2,2],[2,2]] -> [(1,1),(2,2),(4,4)]."""
    result, current = [], None
    for stride in strides:
        current = tuple(stride) if current is None else tuple(c * s for c, s in zip(current, stride))
        result.append(current)
    return result


def select_transformer_stage(strides: Sequence[Sequence[int]], stage_stride: int = 8) -> int:
    """The encoder stage that gets the transformer (never stage 0, which has no previous stage to pool).

    1. The first stage whose cumulative stride equals ``min(stage_stride, bottleneck's cumulative stride)`` on every
       axis ("stride 8 on every axis where possible": an axis the plans never downsample 8x must be fully
       downsampled). For plans that stop at 1/4 this is the bottleneck.
    2. Otherwise (anisotropic plans, e.g. (2, 8, 8) then (4, 16, 16)): the deepest stage whose cumulative stride is
       <= ``stage_stride`` on every axis, so the map is never coarser than intended.
    3. Otherwise stage 1.
    """
    if len(strides) < 2:
        raise ValueError("the transformer stage needs an encoder with at least 2 stages")
    cumulative = cumulative_strides(strides)
    target = tuple(min(stage_stride, c) for c in cumulative[-1])
    for index in range(1, len(cumulative)):
        if cumulative[index] == target:
            return index
    not_coarser = [i for i in range(1, len(cumulative)) if all(c <= stage_stride for c in cumulative[i])]
    return not_coarser[-1] if not_coarser else 1


def token_patch_size(stage_size: Sequence[int], max_token_patch: int = 4) -> Tuple[int, ...]:
    """Per axis the largest of (max_token_patch, 2, 1) that divides the stage's feature-map size on that axis."""
    candidates = sorted({max_token_patch, 2, 1}, reverse=True)
    return tuple(next(p for p in candidates if size % p == 0) for size in stage_size)


class _Ops:
    """conv/transposed-conv/norm/nonlin factories of one dimensionality, taken from the planned encoder."""

    def __init__(self, encoder: nn.Module, dims: int):
        self.dims = dims
        self.conv = encoder.conv_op
        self.transposed_conv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        self.max_pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
        self.norm, self.norm_kwargs = encoder.norm_op, dict(encoder.norm_op_kwargs or {})
        self.nonlin, self.nonlin_kwargs = encoder.nonlin, dict(encoder.nonlin_kwargs or {})

    def conv_norm_act(self, in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
        """conv 3 (padding 1) - norm - nonlin (official ``Conv3DBlock``; norm/nonlin from the plans)."""
        layers = [self.conv(in_channels, out_channels, 3, stride=stride, padding=1)]
        if self.norm is not None:
            layers.append(self.norm(out_channels, **self.norm_kwargs))
        if self.nonlin is not None:
            layers.append(self.nonlin(**self.nonlin_kwargs))
        return nn.Sequential(*layers)

    def upsample(self, in_channels: int, out_channels: int, factor: Sequence[int]) -> nn.Module:
        """Transposed conv with kernel = stride = factor (official ``SingleDeconv3DBlock``, factor 2)."""
        return self.transposed_conv(in_channels, out_channels, tuple(factor), stride=tuple(factor))

    def upsample_block(self, in_channels: int, out_channels: int, factor: Sequence[int]) -> nn.Sequential:
        """Upsample then conv-norm-nonlin (official ``Deconv3DBlock``)."""
        return nn.Sequential(self.upsample(in_channels, out_channels, factor),
                             self.conv_norm_act(out_channels, out_channels))


class TokenEmbedding(nn.Module):
    """Non-overlapping patch embedding plus a learned positional embedding (zero-initialised, as official).

    Args:
        token_grid: tokens per axis at the configured patch; the positional embedding has prod(token_grid) rows.
    Shapes: (B, C, *s) -> tokens (B, N, E) with N = prod(s / token_patch), and the token grid.
    """

    def __init__(self, ops: _Ops, in_channels: int, embed_dim: int, token_patch: Sequence[int],
                 token_grid: Sequence[int], dropout: float):
        super().__init__()
        self.token_grid = tuple(int(g) for g in token_grid)
        self.projection = ops.conv(in_channels, embed_dim, tuple(token_patch), stride=tuple(token_patch))
        self.position = nn.Parameter(torch.zeros(1, math.prod(self.token_grid), embed_dim))
        self.dropout = nn.Dropout(dropout)

    def positional_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """(1, prod(grid), E): the learned table, (bi/tri)linearly resized when ``grid`` is not the configured grid
        (another input size than the planned patch; nnU-Net itself always feeds the planned patch)."""
        grid = tuple(int(g) for g in grid)
        if grid == self.token_grid:
            return self.position
        embed_dim = self.position.shape[-1]
        table = self.position.transpose(1, 2).reshape(1, embed_dim, *self.token_grid)
        mode = "trilinear" if len(grid) == 3 else "bilinear"
        table = F.interpolate(table, size=grid, mode=mode, align_corners=False)
        return table.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        x = self.projection(x)
        grid = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)
        return self.dropout(tokens + self.positional_embedding(grid)), grid


class SelfAttention(nn.Module):
    """Multi-head self-attention; optionally returns the post-softmax, pre-dropout probabilities (as official).

    Shapes: tokens (B, N, E) -> (B, N, E) and probabilities (B, heads, N, N) in fp32, or None when not asked (then
    the fused ``scaled_dot_product_attention`` kernel is used and no N x N map is kept).
    """

    def __init__(self, embed_dim: int, num_heads: int, attention_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.projection = nn.Linear(embed_dim, embed_dim)
        self.attention_dropout_p = attention_dropout
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.projection_dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        batch, length, embed_dim = tokens.shape
        q, k, v = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if need_weights:
            # Logits and softmax in float32 with autocast off (under autocast the matmul would run in half precision
            # whatever its input dtype): the EVD loss works on ~1e-9 products of these maps.
            with torch.autocast(device_type=q.device.type, enabled=False):
                scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)
                probabilities = scores.softmax(dim=-1)
            context = self.attention_dropout(probabilities).to(v.dtype) @ v
        else:
            probabilities = None
            context = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attention_dropout_p if self.training else 0.0)
        context = context.transpose(1, 2).reshape(batch, length, embed_dim)
        return self.projection_dropout(self.projection(context)), probabilities


class TransformerBlock(nn.Module):
    """Pre-LN block (LayerNorm eps 1e-6): x + MHSA(LN(x)), then x + FFN(LN(x)), FFN = Linear-ReLU-Dropout-Linear."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.attention = SelfAttention(config.embed_dim, config.num_heads, config.attention_dropout, config.dropout)
        self.mlp_norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(config.embed_dim, config.mlp_dim), nn.ReLU(inplace=True),
                                 nn.Dropout(config.dropout), nn.Linear(config.mlp_dim, config.embed_dim))

    def forward(self, tokens: torch.Tensor, need_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        attended, probabilities = self.attention(self.attention_norm(tokens), need_weights)
        tokens = tokens + attended
        return tokens + self.mlp(self.mlp_norm(tokens)), probabilities


class MultiScaleTokenDecoder(nn.Module):
    """Compact UNETR-style decoder of the four extracted hidden states (official ``UNETR.decoder*``).

    With token patch p per axis, ``up_mid = p / min(p, 2)`` takes the token grid g to the "mid" level and
    ``up_stage = min(p, 2)`` the mid level to the stage resolution s = g * p (official p = 4: 2 and 2).
    With decoder_channels (c1, c2, c3, c4) the multi-scale features are (official shapes for s = 20x24x16):

    * z12: (B, c4, *mid)   = up(t12)                                     (512 @ 10x12x8)
    * z9:  (B, c3, *s)     = up(conv(cat[upblock(t9), z12]))              (256 @ 20x24x16)
    * z6:  (B, c2, *2s)    = up2(conv(cat[upblocks(t6), z9]))             (128 @ 40x48x32)
    * z3:  (B, c1, *s)     = conv_stride2(cat[upblocks(t3), z6])          (64 @ 20x24x16)

    and the header (B, C, *s) = conv1x1(conv(cat[conv(f_enc), z3])). One conv block per fusion instead of the
    official 2-3 (compact; the official decoder holds about half of its 150 M transformer-stage parameters).
    """

    def __init__(self, ops: _Ops, embed_dim: int, stage_channels: int, token_patch: Sequence[int],
                 decoder_channels: Sequence[int]):
        super().__init__()
        c1, c2, c3, c4 = decoder_channels
        up_stage = tuple(min(p, 2) for p in token_patch)
        up_mid = tuple(p // u for p, u in zip(token_patch, up_stage))
        double = (2,) * ops.dims
        self.z12_up = ops.upsample(embed_dim, c4, up_mid)
        self.z9_up = ops.upsample_block(embed_dim, c4, up_mid)
        self.z9_fuse = nn.Sequential(ops.conv_norm_act(2 * c4, c4), ops.upsample(c4, c3, up_stage))
        self.z6_up = nn.Sequential(ops.upsample_block(embed_dim, c4, up_mid), ops.upsample_block(c4, c3, up_stage))
        self.z6_fuse = nn.Sequential(ops.conv_norm_act(2 * c3, c3), ops.upsample(c3, c2, double))
        self.z3_up = nn.Sequential(ops.upsample_block(embed_dim, c4, up_mid), ops.upsample_block(c4, c3, up_stage),
                                   ops.upsample_block(c3, c2, double))
        self.z3_fuse = ops.conv_norm_act(2 * c2, c1, stride=2)
        self.stage_branch = ops.conv_norm_act(stage_channels, c1)
        self.header = nn.Sequential(ops.conv_norm_act(2 * c1, c1), ops.conv(c1, stage_channels, 1))

    def forward(self, stage_map: torch.Tensor, hidden: Sequence[torch.Tensor]
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """stage_map (B, C, *s); hidden: 4 token maps (B, E, *g) -> header (B, C, *s), [z3, z6, z9, z12]."""
        t3, t6, t9, t12 = hidden
        z12 = self.z12_up(t12)
        z9 = self.z9_fuse(torch.cat([self.z9_up(t9), z12], 1))
        z6 = self.z6_fuse(torch.cat([self.z6_up(t6), z9], 1))
        z3 = self.z3_fuse(torch.cat([self.z3_up(t3), z6], 1))
        header = self.header(torch.cat([self.stage_branch(stage_map), z3], 1))
        return header, [z3, z6, z9, z12]


class TransformerStage(nn.Module):
    """ViT over one encoder stage's feature map plus the UNETR-style decoder (official ``UNETR(c3d)``).

    Shapes: stage map (B, C, *s) -> header (B, C, *s), multi-scale features [z3, z6, z9, z12] (see
    :class:`MultiScaleTokenDecoder`), attention maps: list of len(extract_layers) (B, heads, N, N) or [].
    A stage map not divisible by the token patch (only for inputs other than the planned patch) is zero-padded at
    the end of each axis and the header cropped back.
    """

    def __init__(self, ops: _Ops, config: TransformerConfig, stage_channels: int, stage_size: Sequence[int]):
        super().__init__()
        self.config = config
        self.token_patch = token_patch_size(stage_size, config.max_token_patch)
        self.token_grid = tuple(s // p for s, p in zip(stage_size, self.token_patch))
        self.embedding = TokenEmbedding(ops, stage_channels, config.embed_dim, self.token_patch, self.token_grid,
                                        config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.decoder = MultiScaleTokenDecoder(ops, config.embed_dim, stage_channels, self.token_patch,
                                              config.decoder_channels)

    def forward(self, stage_map: torch.Tensor, need_attention: bool = False
                ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        size = tuple(stage_map.shape[2:])
        padding = [(-s) % p for s, p in zip(size, self.token_patch)]
        if any(padding):
            pad = []
            for amount in reversed(padding):  # F.pad wants the last axis first
                pad += [0, amount]
            stage_map = F.pad(stage_map, pad)
        tokens, grid = self.embedding(stage_map)
        hidden, attention = [], []
        for depth, block in enumerate(self.blocks, start=1):
            extract = depth in self.config.extract_layers
            tokens, probabilities = block(tokens, need_attention and extract)
            if extract:
                hidden.append(tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid))
                if need_attention:
                    attention.append(probabilities)
        header, multi_scale = self.decoder(stage_map, hidden)
        if any(padding):
            header = header[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
        return header, multi_scale, attention


class MSTKDNetwork(nn.Module):
    """The planned nnU-Net U-Net with MST-KDNet's transformer stage and GSME features (see the module docstring).

    Attributes useful to the trainer: ``transformer_stage`` (encoder stage index), ``fused_shape`` ((C, *s) of the
    fused/GSME maps at the planned patch, for :class:`~.discriminator.StyleDiscriminator`), ``encoder``, ``decoder``
    (nnU-Net toggles ``decoder.deep_supervision``).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, patch_size: Sequence[int],
                 transformer: TransformerConfig = TransformerConfig()):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        dims = len(patch_size)
        ops = _Ops(encoder, dims)
        strides = [tuple(s) if isinstance(s, (list, tuple)) else (s,) * dims for s in encoder.strides]
        channels = list(encoder.output_channels)
        self.num_stages = len(strides)
        self.transformer_stage = select_transformer_stage(strides, transformer.stage_stride)
        k = self.transformer_stage
        # Stage sizes as the stride-s, padding k//2 convs produce them: ceil(size / stride).
        stage_size = list(patch_size)
        for stride in strides[:k + 1]:
            stage_size = [-(-size // s) for size, s in zip(stage_size, stride)]
        self.fused_shape = (channels[k], *stage_size)
        self.is_bottleneck = k == self.num_stages - 1
        self.transformer = TransformerStage(ops, transformer, channels[k], stage_size)
        # Official c2d_p = MaxPool(c2d): the previous stage brought to this stage's resolution.
        self.previous_pool = ops.max_pool(tuple(strides[k]), stride=tuple(strides[k]), ceil_mode=True)
        self.style_fusion = ops.conv(channels[k - 1] + 2 * channels[k], channels[k], 1)
        if self.is_bottleneck:
            # Official: content = 4 BasicBlocks(f_t); bottleneck = conv1x1(cat[style, content]).
            self.content_block = nn.Sequential(ops.conv_norm_act(channels[k], channels[k]),
                                               ops.conv_norm_act(channels[k], channels[k]))
            self.content_fusion = ops.conv(2 * channels[k], channels[k], 1)
        # Decoder stage s works at encoder stage num_stages - 2 - s.
        self._content_decoder_stage = -1 if self.is_bottleneck else self.num_stages - 2 - k

    def _decode(self, skips: List[torch.Tensor]):
        """``decode_with_features`` plus the transposed-conv output at the transformer stage (the content map)."""
        logits, features, upsampled = decode_with_features(self.decoder, skips, return_upsampled=True)
        content = upsampled[self._content_decoder_stage] if self._content_decoder_stage >= 0 else None
        return logits, features, content

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x (B, C_in, *patch) -> logits as the planned network returns them (list over deep-supervision scales,
        highest resolution first, or one (B, C_out, *patch) tensor), or with ``return_features`` a dict:
        LOGITS, ENCODER (skips as the decoder consumes them: the transformer stage's entry is ``fused``, or the
        fused bottleneck), DECODER, ATTENTION (len(extract_layers) x (B, heads, N, N), fp32), MST_FEATURES
        ([z3, z6, z9, z12]), GSME_FEATURES ([f_enc, fused, content], each (B, C, *s)), FUSED, CONTENT."""
        stem = getattr(self.encoder, "stem", None)
        h = stem(x) if stem is not None else x
        skips: List[torch.Tensor] = []
        f_enc = fused = content = None
        multi_scale: List[torch.Tensor] = []
        attention: List[torch.Tensor] = []
        for index, stage in enumerate(self.encoder.stages):
            h = stage(h)
            if index != self.transformer_stage:
                skips.append(h)
                continue
            f_enc = h
            header, multi_scale, attention = self.transformer(f_enc, return_features)
            f_t = f_enc + header
            fused = self.style_fusion(torch.cat([self.previous_pool(skips[-1]), f_enc, f_t], 1))
            if self.is_bottleneck:
                content = self.content_block(f_t)
                h = self.content_fusion(torch.cat([fused, content], 1))
                skips.append(h)
            else:
                skips.append(fused)
                h = f_t  # deeper stages see the transformer-enhanced map
        logits, decoder_features, upsampled_content = self._decode(skips)
        if not return_features:
            return logits
        if upsampled_content is not None:
            content = upsampled_content
        return {LOGITS: logits, ENCODER: skips, DECODER: decoder_features, ATTENTION: attention,
                MST_FEATURES: multi_scale, GSME_FEATURES: [f_enc, fused, content], FUSED: fused, CONTENT: content}


def build_mstkd_network(plans_manager, configuration_manager, num_input_channels: int, num_output_channels: int,
                        enable_deep_supervision: bool, transformer: TransformerConfig = TransformerConfig()
                        ) -> MSTKDNetwork:
    """:class:`MSTKDNetwork` on the encoder/decoder of the network the plans describe (PlainConvUNet,
    ResidualEncoderUNet, 2d or 3d), with the transformer sized for ``configuration_manager.patch_size``."""
    base = planned_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                           enable_deep_supervision)
    return MSTKDNetwork(base.encoder, base.decoder, configuration_manager.patch_size, transformer)
