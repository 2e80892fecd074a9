"""DeMoSeg's mutual-to-self alignment: each present sequence's mutual-feature for another present sequence is pulled
towards that sequence's self-feature (official ``SplitConvCSA.kl_loss_calculate``, ``DeMoSeg/training/network/
CSA_CSABlock.py`` lines 325-396 at 73cd4bb; the paper's knowledge-distillation term)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_missingmod.training.methods.demoseg.network import NUM_QUARTERS, rcr_quarter


def channel_kl(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax_c(target) || softmax_c(student)) averaged over every element, channels included: ``KLDivLoss()``
    with its default ``reduction='mean'`` as the official code (temperature 1). (B, q, *s) each -> (B,)."""
    log_student = F.log_softmax(student.float(), dim=1)
    log_target = F.log_softmax(target.float(), dim=1)
    return (log_target.exp() * (log_target - log_student)).flatten(1).mean(dim=1)


def mutual_self_alignment(decoupled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the sum, over ordered pairs (a, b) of present sequences a != b, of
    ``channel_kl(F_a[b XOR a], F_b[0])`` (a's mutual-feature for b against b's self-feature; neither detached, as
    official). ``decoupled``: (B, M, C_0, *s) branch outputs before CSSA; ``present``: (B, M) bool. A sample with a
    single sequence contributes 0. Official: the same sum times 0.5, summed over the batch (``DeMoSegSettings.
    alignment_weight`` 1.0 is that at nnU-Net's batch size 2)."""
    batch, num_modalities = decoupled.shape[:2]
    quarter = decoupled.shape[2] // NUM_QUARTERS
    total = decoupled.new_zeros(batch, dtype=torch.float32)
    present = present.bool()
    for a in range(num_modalities):
        for b in range(num_modalities):
            if a == b:
                continue
            k = rcr_quarter(b, a)
            mutual = decoupled[:, a, k * quarter:(k + 1) * quarter]
            own = decoupled[:, b, :quarter]
            both = (present[:, a] & present[:, b]).float()
            total = total + both * channel_kl(mutual, own)
    return total.mean()
