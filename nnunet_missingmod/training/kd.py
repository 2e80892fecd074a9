"""Distillation terms that several methods share (the two-phase and robustify recipes, MST-KD, CCSD): what two
methods need alike lives here once, and no method package imports another.

* :func:`full_resolution`: the highest-resolution output of a deep-supervision list;
  :func:`deep_supervision_weights`: nnU-Net's weights of the scales of such a list;
* :func:`float32_autocast_off`: the context in which loss terms run in float32 (terms of ~1e-9 before their weight
  vanish in half precision);
* :func:`bernoulli_kl`, :func:`softmax_kl`, :func:`logit_kl`: the KL from teacher to student logits, per region
  (sigmoid outputs, nnU-Net's region training) or over the classes (softmax label outputs), with a temperature;
* :func:`soft_dice_loss`: a Dice towards the teacher's probabilities (every region weighs alike, whatever its size).
"""
from __future__ import annotations

from typing import List, Union

import torch
import torch.nn.functional as F


def full_resolution(output):
    """``output[0]`` for a deep-supervision list/tuple (highest resolution first, as nnU-Net orders it), else
    ``output``. Logit distillation acts on this output only (``docs/methods.md``)."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def deep_supervision_weights(num_scales: int) -> List[float]:
    """nnU-Net 2.8.1's deep-supervision loss weights (``nnUNetTrainer._build_loss``): ``1 / 2**i`` for scale ``i``
    (0 = full resolution), the lowest scale 0 (when there is more than one), normalised to sum 1. Distillation at
    every scale weighs the scales as nnU-Net's own loss does."""
    if num_scales < 1:
        raise ValueError(f"deep_supervision_weights: need at least one scale, got {num_scales}")
    weights = [1 / 2 ** i for i in range(num_scales)]
    if num_scales > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def float32_autocast_off(like: Union[torch.Tensor, torch.device]):
    """Autocast switched off on the device of ``like``: inside it, matmuls and reductions run in the dtype of their
    inputs, so a loss that casts its inputs to float32 once is computed in float32."""
    device = like.device if isinstance(like, torch.Tensor) else torch.device(like)
    return torch.autocast(device_type=device.type, enabled=False)


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(Bern(σ(a)) ‖ Bern(σ(b)))`` from logits ``a`` (teacher) and ``b`` (student), stable through
    ``logsigmoid``. Any shape (same for both); returns that shape. Call in float32."""
    log_p, log_not_p = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_q, log_not_q = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)


def softmax_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``KL(softmax(a) ‖ softmax(b))`` over ``dim`` (the class axis), from logits; ``dim`` is summed out:
    (B, C, *spatial) -> (B, *spatial). Call in float32."""
    log_p = F.log_softmax(teacher_logits, dim=dim)
    log_q = F.log_softmax(student_logits, dim=dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim=dim)


def logit_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
             temperature: float = 1.0) -> torch.Tensor:
    """Voxel-wise KL from teacher to student at temperature τ, in float32 with autocast off (inputs cast once).

    Args:
        teacher_logits, student_logits: (B, C, *spatial), equal shapes, any float dtype.
        regions: ``True`` for sigmoid region outputs (``label_manager.has_regions``): per-region Bernoulli KL,
            returns (B, C, *spatial); ``False`` for softmax label outputs: KL over the class axis, returns
            (B, *spatial).
        temperature: τ > 0; the logits are divided by it (no τ² factor: callers scale).
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"logit_kl: teacher shape {tuple(teacher_logits.shape)} != student shape "
                         f"{tuple(student_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"logit_kl: temperature must be > 0, got {temperature}")
    with float32_autocast_off(teacher_logits):
        t = teacher_logits.float() / temperature
        s = student_logits.float() / temperature
        return bernoulli_kl(t, s) if regions else softmax_kl(t, s, dim=1)


def soft_dice_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
                   smooth: float = 1e-5) -> torch.Tensor:
    """``1 − mean_c 2 Σ p_c q_c / (Σ p_c² + Σ q_c²)``, sums over the batch and voxels (a batch Dice as nnU-Net's),
    with ``p`` the teacher's and ``q`` the student's probabilities: sigmoid per region (``regions``) or softmax
    without the background class. The squared denominators (V-Net's form) make it 0 exactly when ``q = p``, and each
    region weighs alike whatever its size. (B, C, *spatial) float32 logits -> 0-dim tensor in [0, 1]."""
    if regions:
        p, q = torch.sigmoid(teacher_logits), torch.sigmoid(student_logits)
    else:
        p, q = torch.softmax(teacher_logits, 1)[:, 1:], torch.softmax(student_logits, 1)[:, 1:]
    axes = [0] + list(range(2, p.dim()))
    dice = (2 * (p * q).sum(axes) + smooth) / ((p * p).sum(axes) + (q * q).sum(axes) + smooth)
    return 1 - dice.mean()


