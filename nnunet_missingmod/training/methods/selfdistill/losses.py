"""The teacher-to-student distillation of the two-phase and robustify recipes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nnunet_missingmod.training.kd import (
    deep_supervision_weights, float32_autocast_off, full_resolution, logit_kl, soft_dice_loss)

DISTILL_TERMS = ("distill_kl", "distill_dice")


@dataclass(frozen=True)
class DistillationSettings:
    """``kl_weight`` and ``dice_weight`` (≥ 0; both 0: no distillation), the KL's ``temperature`` (> 0) and
    ``every_scale`` (both terms at every deep-supervision scale instead of the full-resolution output only)."""

    kl_weight: float = 0.0
    dice_weight: float = 0.0
    temperature: float = 1.0
    every_scale: bool = False

    def __post_init__(self):
        for name in ("kl_weight", "dice_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"DistillationSettings.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.temperature > 0:
            raise ValueError(f"DistillationSettings.temperature must be > 0, got {self.temperature!r}")

    @property
    def active(self) -> bool:
        return self.kl_weight > 0 or self.dice_weight > 0


class TeacherDistillationLoss(nn.Module):
    """``kl_weight · τ² · mean KL + dice_weight · (1 − soft Dice)`` from the teacher's to the student's output.

    The KL is per region (Bernoulli) for region outputs, over the classes for label outputs
    (:func:`~nnunet_missingmod.training.kd.logit_kl`); the soft Dice
    (:func:`~nnunet_missingmod.training.kd.soft_dice_loss`, per region or foreground class) compares the student's
    probabilities with the teacher's, so every region weighs alike whatever its size. Both are 0 when the outputs
    agree. With ``every_scale`` (and deep-supervision lists) each term is the sum over the scales with nnU-Net's
    weights (:func:`~nnunet_missingmod.training.kd.deep_supervision_weights`); otherwise it is taken on the
    full-resolution output only. Terms are float32 (autocast off).

    Args:
        settings: :class:`DistillationSettings`.
        regions: ``True`` for sigmoid region outputs (nnU-Net's ``label_manager.has_regions``).

    Forward: teacher and student outputs (a list over scales, highest resolution first, or one (B, C, *spatial)
    tensor) → ``(loss, {"distill_kl": kl, "distill_dice": dice})``, the terms unweighted and detached.
    """

    def __init__(self, settings: DistillationSettings, regions: bool):
        super().__init__()
        self.settings = settings
        self.regions = regions

    def forward(self, teacher_output, student_output):
        s = self.settings
        if s.every_scale and isinstance(student_output, (list, tuple)):
            pairs = list(zip(teacher_output, student_output))
            weights = deep_supervision_weights(len(pairs))
        else:
            pairs, weights = [(full_resolution(teacher_output), full_resolution(student_output))], [1.0]
        kl = dice = 0.0
        for weight, (teacher_logits, student_logits) in zip(weights, pairs):
            if weight == 0:
                continue
            teacher_logits = teacher_logits.detach()
            kl = kl + weight * logit_kl(teacher_logits, student_logits, regions=self.regions,
                                        temperature=s.temperature).mean() * s.temperature * s.temperature
            with float32_autocast_off(student_logits):
                dice = dice + weight * soft_dice_loss(teacher_logits.float(), student_logits.float(),
                                                      regions=self.regions)
        loss = s.kl_weight * kl + s.dice_weight * dice
        return loss, {"distill_kl": kl.detach(), "distill_dice": dice.detach()}

    @staticmethod
    def zero_terms(like: torch.Tensor):
        """The terms logged while no teacher distils (phase 1 of two-phase training)."""
        zero = like.detach().new_zeros(())
        return {"distill_kl": zero, "distill_dice": zero}
