"""MST-KDNet's distillation losses (Zhu et al., MICCAI 2025) as small pure-torch modules.

Every loss here is computed in **float32 with autocast disabled**, whatever the input dtype: the EVD term is about
1e-9 before its weight of 1e8, and squared differences of fp16 attention products underflow to 0 in fp16. Every
loss returns a 0-dim float32 tensor. None of them detaches anything: stop-gradients on the teacher are the
trainer's decision (the official code has none, so by default gradients reach both networks).

Sources: "official" = ``github:Quanato607/MST-KDNet`` at ``2c77373`` (``losses.py``, ``models/evd.py``,
``models/slkd.py``, ``train.py``); "paper" = the MICCAI paper's Eq. 2-11. Every deviation from the official code and
its reason is listed in ``docs/methods.md`` (MST-KDNet losses).

Weights are **not** applied inside the modules (except GSME's internal 1e-4, which the official ``get_GS_loss``
applies itself); the trainer multiplies each term by its entry in ``OFFICIAL_WEIGHTS``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_missingmod.training.kd import bernoulli_kl, float32_autocast_off, softmax_kl

__all__ = [
    "OFFICIAL_WEIGHTS", "SOURCE_LABEL", "TARGET_LABEL", "consistency_weight", "EVDLoss",
    "MultiScaleTransformerLoss", "ContentLoss", "ConsistencyLoss", "LogitStandardisedKD", "GramStyleLoss",
    "generator_adversarial_loss", "discriminator_loss",
]

OFFICIAL_WEIGHTS: Dict[str, float] = dict(
    seg_teacher=0.4,        # configs/brats.yml: 1 - weight_mispath (teacher Dice)
    seg_student=0.6,        # configs/brats.yml: weight_mispath = 0.6 (student Dice)
    evd=1e8,                # train.py: evd_loss * (1e8)                     (paper's alpha)
    mst=0.2,                # train.py: unnetr_loss * (0.2)                  (paper's beta)
    slkd=1.0,               # train.py: + slkd_loss                          (paper's lambda_KD)
    slkd_temperature=7.0,   # train.py: slkd_loss(..., temp=7)               (paper's tau)
    consistency_max=10.0,   # losses.py: get_current_consistency_weight(consistency=10)  (paper's lambda_mse)
    consistency_rampup=0.2,  # losses.py: consistency_rampup=20 epochs of configs/brats.yml's 100
    content=0.2,            # configs/brats.yml: weight_content = 0.2 (not in the paper)
    gram=1.0,               # outer weight of get_GS_loss (commented out in train.py; weight 1 in AdaMM's trainer)
    adversarial=2e-4,       # train.py: loss_adv * 0.0002 (generator side)   (paper's epsilon)
)
"""The official code's loss weights (the paper gives none). Keys as used by ``MSTKDTrainer``."""

SOURCE_LABEL = 0.0
"""Discriminator label of the teacher's (full-set, "source") fused map (official ``source_label = 0``)."""
TARGET_LABEL = 1.0
"""Discriminator label of the student's (missing-set, "target") fused map (official ``target_label = 1``)."""

_STD_EPS = 1e-7  # official slkd.normalize and paper Eq. 6: (l - mu) / (sigma + 1e-7)


# ---------------------------------------------------------------------------------------------------- helpers
def _check_pair(teacher: torch.Tensor, student: torch.Tensor, what: str) -> None:
    if teacher.shape != student.shape:
        raise ValueError(f"{what}: teacher shape {tuple(teacher.shape)} != student shape {tuple(student.shape)}")


def _check_lists(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], what: str) -> None:
    if len(teacher) != len(student) or len(teacher) == 0:
        raise ValueError(f"{what}: need two non-empty lists of the same length, got {len(teacher)} (teacher) and "
                         f"{len(student)} (student)")
    for t, s in zip(teacher, student):
        _check_pair(t, s, what)


def consistency_weight(progress: float, max_weight: float = OFFICIAL_WEIGHTS["consistency_max"],
                       rampup_fraction: float = OFFICIAL_WEIGHTS["consistency_rampup"]) -> float:
    """Weight of the consistency MSE after ``progress`` (fraction of training done, in [0, 1]).

    Official (``losses.get_current_consistency_weight``, Laine & Aila's sigmoid ramp-up):
    ``10 * exp(-5 * (1 - min(e, 20) / 20) ** 2)`` at epoch ``e`` of 100. With ``progress = e / 100`` this is
    ``max_weight * exp(-5 * (1 - min(progress, rampup_fraction) / rampup_fraction) ** 2)``:
    0.0674 at 0, 2.865 at 0.1, 10 from 0.2 on. ``rampup_fraction <= 0`` means no ramp-up (always ``max_weight``).
    """
    if rampup_fraction <= 0:
        return float(max_weight)
    phase = 1.0 - min(max(float(progress), 0.0), rampup_fraction) / rampup_fraction
    return float(max_weight * math.exp(-5.0 * phase * phase))


def _zscore(x: torch.Tensor, dim) -> torch.Tensor:
    """(x - mean) / (std + 1e-7) along ``dim`` with the unbiased std (``torch.std``, as the official ``normalize``
    and the logit-standardisation paper's code)."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    n = 1
    for d in dims:
        n *= x.shape[d]
    if n < 2:
        raise ValueError(f"logit standardisation needs at least 2 values along dims {dims}, got shape "
                         f"{tuple(x.shape)}")
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + _STD_EPS)


# ---------------------------------------------------------------------------------------------------- MS-TKD
class EVDLoss(nn.Module):
    """Extreme value distillation (MS-TKD alpha term; paper Eq. 2-4, official ``models/evd.py:EVD``).

    Per network, stack the L extracted attention maps and take the elementwise max, min and mean **over the layer
    axis** (official; the paper says "along the C dimension"). Each map is multiplied by each statistic:
    ``EV_{s,l} = A_l * stat_s`` and the loss is

        L_EVD = sum_{s in (max, min, mean)} sum_{l=1..L} mean((EV^T_{s,l} - EV^S_{s,l})^2)

    (3L terms: 12 for the official L = 4 extract layers [3, 6, 9, 12]). Unweighted: the trainer applies
    alpha = ``OFFICIAL_WEIGHTS["evd"]`` = 1e8 (the term is ~1e-9 for unrelated maps, so alpha * L ~ 0.5).

    Args (forward):
        teacher_attention, student_attention: lists of L tensors (B, heads, N, N) (any equal shapes), any float
            dtype.
    Returns:
        0-dim float32 tensor, computed in float32 with autocast off.
    """

    def forward(self, teacher_attention: Sequence[torch.Tensor],
                student_attention: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_lists(teacher_attention, student_attention, "EVDLoss")
        with float32_autocast_off(teacher_attention[0]):
            # One cast per input: every use below then sums its gradient in float32 before the single cast back.
            teacher_attention = [a.float() for a in teacher_attention]
            student_attention = [a.float() for a in student_attention]
            stats_t = self._statistic_maps(teacher_attention)
            stats_s = self._statistic_maps(student_attention)
            loss = teacher_attention[0].new_zeros((), dtype=torch.float32)
            for stat_t, stat_s in zip(stats_t, stats_s):
                for a_t, a_s in zip(teacher_attention, student_attention):
                    loss = loss + F.mse_loss(a_t * stat_t, a_s * stat_s, reduction="mean")
        return loss

    @staticmethod
    def _statistic_maps(attention: Sequence[torch.Tensor]):
        stacked = torch.stack([a.float() for a in attention], dim=0)  # (L, B, heads, N, N)
        return stacked.amax(dim=0), stacked.amin(dim=0), stacked.mean(dim=0)


class MultiScaleTransformerLoss(nn.Module):
    """Multi-scale transformer feature loss (MS-TKD beta term; paper Eq. 4, official ``losses.Unetr_Loss``).

        L_MST = sum_i w_i * mean((z^T_i - z^S_i)^2)

    over the UNETR-decoder features ``[z3, z6, z9, z12]`` (each pair of equal shape, any shapes across i).
    Unweighted outside: the trainer applies beta = ``OFFICIAL_WEIGHTS["mst"]`` = 0.2.

    Args:
        weight_factors: per-feature weights w_i; default (official) all 1.
    Forward: two equal-length lists of tensors (B, C_i, *spatial_i). Returns a 0-dim float32 tensor.
    """

    def __init__(self, weight_factors: Optional[Sequence[float]] = None):
        super().__init__()
        self.weight_factors = None if weight_factors is None else [float(w) for w in weight_factors]

    def forward(self, teacher_features: Sequence[torch.Tensor],
                student_features: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_lists(teacher_features, student_features, "MultiScaleTransformerLoss")
        weights = self.weight_factors or [1.0] * len(teacher_features)
        if len(weights) != len(teacher_features):
            raise ValueError(f"MultiScaleTransformerLoss: {len(weights)} weight factors for "
                             f"{len(teacher_features)} features")
        with float32_autocast_off(teacher_features[0]):
            loss = teacher_features[0].new_zeros((), dtype=torch.float32)
            for w, t, s in zip(weights, teacher_features, student_features):
                loss = loss + w * F.mse_loss(s.float(), t.float(), reduction="mean")
        return loss


class ContentLoss(nn.Module):
    """Content MSE between the teacher's and the student's f_dec maps (official ``unet_Co_loss_divide``:
    ``F.mse_loss(content_full, content_missing)``, weight ``OFFICIAL_WEIGHTS["content"]`` = 0.2; not in the paper).

    Forward: teacher, student (B, C, *spatial), equal shapes. Returns a 0-dim float32 tensor (mean over all
    elements)."""

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        _check_pair(teacher, student, "ContentLoss")
        with float32_autocast_off(teacher):
            return F.mse_loss(teacher.float(), student.float(), reduction="mean")


# ---------------------------------------------------------------------------------------------------- DMLD
def _probabilities(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if regions else torch.softmax(logits, dim=1)


class ConsistencyLoss(nn.Module):
    """DMLD logit-discrepancy MSE (paper Eq. 5, official ``unet_Co_loss_divide`` ``*_mse_loss``).

    Like the official code, on **probabilities**, not logits: sigmoid for region outputs (``regions=True``),
    softmax over the channel axis for label outputs. One mean-over-voxels MSE per channel, **summed over channels**
    (the official sums its per-channel terms):

        L = sum_c mean_{b, x} (p^T_{b,c,x} - p^S_{b,c,x})^2

    The official 4th term ``bg_mse_loss = dice_loss(teacher BG, GT BG)`` (a teacher Dice, not an MSE) is **not**
    reproduced; the background channel of a softmax output gets its MSE like the others (what the slot's name
    intends). Weight: ``consistency_weight(progress)`` (ramp-up to 10), applied by the trainer.

    Args:
        regions: True for nnU-Net region (sigmoid) outputs (``label_manager.has_regions``), False for softmax.
    Forward: teacher_logits, student_logits (B, C, *spatial), the full-resolution output. Returns 0-dim float32.
    """

    def __init__(self, regions: bool = True):
        super().__init__()
        self.regions = bool(regions)

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        _check_pair(teacher_logits, student_logits, "ConsistencyLoss")
        with float32_autocast_off(teacher_logits):
            p_t = _probabilities(teacher_logits.float(), self.regions)
            p_s = _probabilities(student_logits.float(), self.regions)
            per_channel = (p_t - p_s).square().transpose(0, 1).flatten(1).mean(dim=1)
            return per_channel.sum()


class LogitStandardisedKD(nn.Module):
    """DMLD logit-standardised KL distillation (SLKD; paper Eq. 6-8, official ``models/slkd.py``).

    Teacher = target distribution: ``tau^2 * KL(q_T || q_S)`` (the official call swaps the arguments and computes
    KL(q_S || q_T)). Gradients reach whichever inputs are not detached.

    * ``regions=False`` (softmax label outputs): each voxel's logit vector is z-scored **over the class axis**
      (the paper's and Sun et al.'s logit standardisation; the official code z-scores along the last spatial
      axis), ``q = softmax(z / tau)`` over classes, and

          L = tau^2 * mean_{b, x} sum_c q^T log(q^T / q^S)

      i.e. mean over voxels (official: sum / B (batchmean) / numel, which divides by B * C a second time).
    * ``regions=True`` (sigmoid region outputs): each channel's logits are z-scored **over the spatial positions**,
      per sample and channel (closest to the official spatial-axis z-score; z-scoring the Bernoulli pair [0, z]
      would collapse it to +-1), then a per-region Bernoulli KL

          L = tau^2 * mean_{b, c, x} KL(Bern(sigmoid(z^T / tau)) || Bern(sigmoid(z^S / tau))).

    The z-score uses the unbiased std and ``(std + 1e-7)`` as the official ``normalize``.

    Args:
        temperature: tau, official 7 (``OFFICIAL_WEIGHTS["slkd_temperature"]``).
        regions: selects the form (nnU-Net ``label_manager.has_regions``).
    Forward: teacher_logits, student_logits (B, C, *spatial), the full-resolution output. Returns 0-dim float32.
    """

    def __init__(self, temperature: float = OFFICIAL_WEIGHTS["slkd_temperature"], regions: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"LogitStandardisedKD: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.regions = bool(regions)

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        _check_pair(teacher_logits, student_logits, "LogitStandardisedKD")
        if teacher_logits.dim() < 3:
            raise ValueError(f"LogitStandardisedKD: expected (B, C, *spatial) logits, got shape "
                             f"{tuple(teacher_logits.shape)}")
        tau = self.temperature
        with float32_autocast_off(teacher_logits):
            t, s = teacher_logits.float(), student_logits.float()
            if self.regions:
                spatial = tuple(range(2, t.dim()))
                kl = bernoulli_kl(_zscore(t, spatial) / tau, _zscore(s, spatial) / tau)
                return kl.mean() * tau * tau
            kl = softmax_kl(_zscore(t, 1) / tau, _zscore(s, 1) / tau, dim=1)  # (B, *spatial)
            return kl.mean() * tau * tau


# ---------------------------------------------------------------------------------------------------- GSME
class GramStyleLoss(nn.Module):
    """GSME feature term (theta; paper Eq. 10-11, official ``losses.get_GS_loss``, commented out in the shipped
    ``train.py``).

    Input per network: 3 feature maps ``[f_enc, fused (enc&t), f_dec]`` (official ``[c3d, style, c4d]``), each
    (B, C, *spatial) with S = prod(spatial). Pairs (i, i-1): (f0, f2), (f1, f0), (f2, f1). Mixed Gram matrices

        per_sample=True  (default): M_b = X1_b X2_b^T / (C * S)         (B, C, C), X_b = f[b].view(C, S)
        per_sample=False (official): M = X1 X2^T / (B * C * S)         (B*C, B*C), X = f.view(B*C, S)

    and the loss

        L = scale * sum_pairs sum (M^T - M^S)^2 / (4 * C^2 * S_n^2)   [ / B for per_sample, i.e. mean over samples ]

    with ``scale`` = 1e-4 (official internal factor; the outer weight ``OFFICIAL_WEIGHTS["gram"]`` is 1) and S_n the
    normaliser size: the full spatial size S by default; ``ignore_depth=True`` uses the official
    ``size(2) * size(3)`` (H * W, ignoring depth; 3d inputs only differ). With B = 1 and ``ignore_depth=True`` both
    forms equal the official value. The official B*C x B*C Gram mixes different samples (meaningless cross-sample
    products once each sample has its own missing subset); the per-sample form avoids that.

    Returns a 0-dim float32 tensor (float32 matmuls with autocast off).
    """

    def __init__(self, scale: float = 1e-4, per_sample: bool = True, ignore_depth: bool = False):
        super().__init__()
        self.scale = float(scale)
        self.per_sample = bool(per_sample)
        self.ignore_depth = bool(ignore_depth)

    def _mixes(self, features: Sequence[torch.Tensor]):
        b, c = features[0].shape[:2]
        s = features[0][0, 0].numel()
        out = []
        for i in range(len(features)):
            x1, x2 = features[i].float(), features[i - 1].float()
            if self.per_sample:
                x1, x2 = x1.reshape(b, c, s), x2.reshape(b, c, s)
                out.append(torch.bmm(x1, x2.transpose(1, 2)) / (c * s))
            else:
                x1, x2 = x1.reshape(b * c, s), x2.reshape(b * c, s)
                out.append(x1 @ x2.t() / (b * c * s))
        return out

    def forward(self, teacher_features: Sequence[torch.Tensor],
                student_features: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_lists(teacher_features, student_features, "GramStyleLoss")
        shape = teacher_features[0].shape
        if len(teacher_features) < 2 or any(f.shape != shape for f in teacher_features) or len(shape) < 3:
            raise ValueError("GramStyleLoss: need >= 2 feature maps per network, all of one shape (B, C, *spatial); "
                             f"got {[tuple(f.shape) for f in teacher_features]}")
        b, c, spatial = shape[0], shape[1], shape[2:]
        size = math.prod(spatial[:2]) if self.ignore_depth else math.prod(spatial)
        with float32_autocast_off(teacher_features[0]):
            # One cast per input (each map enters two Gram products); the casts in _mixes are then no-ops.
            teacher_features = [f.float() for f in teacher_features]
            student_features = [f.float() for f in student_features]
            loss = teacher_features[0].new_zeros((), dtype=torch.float32)
            for m_t, m_s in zip(self._mixes(teacher_features), self._mixes(student_features)):
                loss = loss + (m_t - m_s).square().sum() / (4.0 * c ** 2 * float(size) ** 2)
            if self.per_sample:
                loss = loss / b
        return loss * self.scale


def _bce_against(logits: torch.Tensor, label: float) -> torch.Tensor:
    with float32_autocast_off(logits):
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def generator_adversarial_loss(student_logits: torch.Tensor) -> torch.Tensor:
    """GSME generator term (epsilon = ``OFFICIAL_WEIGHTS["adversarial"]`` = 2e-4, applied by the trainer):
    ``BCEWithLogits(D(fused_student), SOURCE_LABEL = 0)``, the official non-saturating form (paper Eq. 9 writes the
    saturating log terms). The trainer calls D (with its parameters frozen) and passes its logits, any shape
    (official (B, 1, 1, 1, 1); ours (B, 1)). Returns a 0-dim float32 tensor (mean over logits)."""
    return _bce_against(student_logits, SOURCE_LABEL)


def discriminator_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """GSME discriminator loss: ``BCE(D(fused_teacher), 0) + BCE(D(fused_student), 1)`` (official, weight 1). The
    trainer detaches the fused maps before D (official ``style_f.detach()``) and keeps **one persistent** optimiser
    for D (the official code re-creates its Adam every iteration). Returns a 0-dim float32 tensor."""
    return _bce_against(teacher_logits, SOURCE_LABEL) + _bce_against(student_logits, TARGET_LABEL)
