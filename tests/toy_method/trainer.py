"""The toy method as nnU-Net trainers: modality dropout through :class:`~toy_method.network.ChannelGainNetwork`,
with :class:`~toy_method.losses.MaskedConsistencyLoss` towards the full-input output added to nnU-Net's loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from nnunet_missingmod.training.base import MaskedBatch, MissingModalityTrainerBase, StepResult, settings_config
from nnunet_missingmod.training.kd import full_resolution
from nnunet_missingmod.training.naming import with_budgets
from toy_method.losses import MaskedConsistencyLoss
from toy_method.network import ChannelGainNetwork


@dataclass(frozen=True)
class ToySettings:
    """``consistency_weight`` (≥ 0; 0: nnU-Net's loss alone), the consistency's ``temperature`` (> 0), and
    ``learn_gain`` (the input gains are trained, or stay 1)."""

    consistency_weight: float = 1.0
    temperature: float = 1.0
    learn_gain: bool = True

    def __post_init__(self):
        if not self.consistency_weight >= 0:
            raise ValueError(f"ToySettings.consistency_weight must be >= 0, got {self.consistency_weight!r}")
        if not self.temperature > 0:
            raise ValueError(f"ToySettings.temperature must be > 0, got {self.temperature!r}")


@with_budgets
class ToyTrainer(MissingModalityTrainerBase):
    """nnU-Net's loss on each sample's subset plus ``consistency_weight`` × the consistency with the full input."""

    method: ClassVar[ToySettings] = ToySettings()
    loss_terms = ("seg", "consistency")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # A classmethod (nnU-Net's is static) so that the network follows the class's settings; nnU-Net's predictor
        # calls it on the class, the trainer on the instance.
        planned = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        return ChannelGainNetwork(planned, num_input_channels, learn_gain=cls.method.learn_gain)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not isinstance(self.method, ToySettings):
            raise TypeError(f"{type(self).__name__}.method must be a ToySettings, got {self.method!r}")

    def on_initialized(self) -> None:
        super().on_initialized()
        self.consistency_loss = MaskedConsistencyLoss(self.method.temperature, regions=self.label_manager.has_regions)

    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        masked = self.network(batch.masked_data)
        seg = self.loss(masked, batch.target)
        with torch.no_grad():
            full = self.network(batch.data)
        consistency = self.consistency_loss(full_resolution(full), full_resolution(masked))
        loss = seg + self.method.consistency_weight * consistency
        return StepResult(loss, {"seg": seg.detach(), "consistency": consistency.detach()})

    def missingmod_config(self) -> dict:
        return {**super().missingmod_config(), "method": settings_config(self.method)}
