"""The toy method's one loss."""
from __future__ import annotations

import torch
from torch import nn


class MaskedConsistencyLoss(nn.Module):
    """Mean squared difference between the probabilities of the output on the masked input (the student) and those
    on the full input (the target, stop-gradient), at temperature τ.

    ``L = mean_(b, c, voxels) (p_full − p_masked)²`` with ``p = σ(z / τ)`` per region (nnU-Net's region training) or
    ``p = softmax(z / τ)`` over the classes (label training). 0 when both outputs agree; in [0, 1]. Computed in float32
    with autocast off (inputs cast once).

    Args:
        temperature: τ > 0 (1: the network's own probabilities; larger: softer).
        regions: ``True`` for sigmoid region outputs (``label_manager.has_regions``), ``False`` for softmax labels.

    Raises:
        ValueError: ``temperature`` is not > 0.
    """

    def __init__(self, temperature: float = 1.0, regions: bool = True):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"MaskedConsistencyLoss: temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.regions = bool(regions)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        scaled = logits.float() / self.temperature
        return torch.sigmoid(scaled) if self.regions else torch.softmax(scaled, dim=1)

    def forward(self, full_logits: torch.Tensor, masked_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            full_logits: (B, C, *spatial) output on the full input; detached here.
            masked_logits: (B, C, *spatial) output on the input with the missing sequences zeroed.
        Returns:
            float32 scalar.
        Raises:
            ValueError: the shapes differ.
        """
        if full_logits.shape != masked_logits.shape:
            raise ValueError(f"MaskedConsistencyLoss: full output {tuple(full_logits.shape)} != masked output "
                             f"{tuple(masked_logits.shape)}")
        with torch.autocast(device_type=masked_logits.device.type, enabled=False):
            target = self.probabilities(full_logits.detach())
            return (self.probabilities(masked_logits) - target).pow(2).mean()
