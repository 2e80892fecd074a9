"""DeMoSeg as nnU-Net trainers: the decoupling network (``network.py``) trained with nnU-Net's loss on one subset
per sample plus the mutual-to-self alignment (``losses.py``).

``DeMoSegTrainer`` holds the defaults (:class:`DeMoSegSettings`), ``DeMoSegTrainer_small`` its CPU size; the paper's
component ablations are generated in ``ablations.py``. Sources of every choice: ``docs/methods.md`` ("DeMoSeg").

What DeMoSeg fixes that nnU-Net plans, and why: the subset sampling (uniform over the 15 subsets per sample, the
official ``torch.randint(0, 15)``; the base sampler's default); the loss (nnU-Net's Dice + CE with deep supervision,
as the official nnU-Net v2 port, plus the alignment term of the paper and the official stand-alone code). The widths,
kernels, strides and stage count stay the planned ones (the official port fixes 32..320, 3x3x3, 5 poolings).

RCR reads which sequence is which from the channel order, so the dataset's channels must be the canonical
T1, T1ce, T2, FLAIR (what ``nnunet-missingmod convert`` writes); another order is refused when the trainer starts.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES, modalities_from_channel_names
from nnunet_missingmod.training.base import (
    MaskedBatch, MissingModalityTrainerBase, StepResult, TrainingRefused, dataset_json_path, settings_config)
from nnunet_missingmod.training.extra_modules import unwrap_network
from nnunet_missingmod.training.features import LOGITS
from nnunet_missingmod.training.methods.demoseg.losses import mutual_self_alignment
from nnunet_missingmod.training.methods.demoseg.network import DECOUPLED, PRESENT, build_demoseg_network
from nnunet_missingmod.training.naming import with_budgets


@dataclass(frozen=True)
class DeMoSegSettings:
    """DeMoSeg's settings (``docs/methods.md``, "DeMoSeg"):

    * ``width``: every planned stage width times this (the first rounded to a multiple of 4: its four quarters);
    * ``cssa``: CSSA layers at all (off: plain planned convolutions in the branches and the backbone);
    * ``backbone_cssa``: every same-width, stride-1 convolution of the U-Net is a CSSA block (official nnU-Net v2
      port); off: CSSA in the decoupling branches only;
    * ``rcr``: a missing sequence's slot is filled by a present one's mutual-feature (off: left zero);
    * ``alignment_weight``: weight of the mutual-to-self alignment (0: the official nnU-Net v2 port's loss);
    * ``cssa_ratio``: hidden width of CSSA's ranking MLP relative to the channels (official 0.25).
    """

    width: float = 1.0
    cssa: bool = True
    backbone_cssa: bool = True
    rcr: bool = True
    alignment_weight: float = 1.0
    cssa_ratio: float = 0.25

    def __post_init__(self):
        for name in ("width", "cssa_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DeMoSegSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.alignment_weight >= 0:
            raise ValueError(f"DeMoSegSettings.alignment_weight must be >= 0, got {self.alignment_weight!r}")


@with_budgets
class DeMoSegTrainer(MissingModalityTrainerBase):
    """DeMoSeg with the defaults of :class:`DeMoSegSettings`."""

    method: ClassVar[DeMoSegSettings] = DeMoSegSettings()
    loss_terms = ("seg", "alignment")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # A classmethod (nnU-Net's is static) so that the network follows the class's settings.
        m = cls.method
        return build_demoseg_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                     enable_deep_supervision, width=m.width, cssa=m.cssa,
                                     backbone_cssa=m.backbone_cssa, rcr=m.rcr, cssa_ratio=m.cssa_ratio)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if not isinstance(self.method, DeMoSegSettings):
            raise TypeError(f"{type(self).__name__}.method must be a DeMoSegSettings, got {self.method!r}")
        try:
            modalities = modalities_from_channel_names(dataset_json.get("channel_names", {}))
        except MissingModError:
            modalities = MODALITIES  # not the four sequences: the base refuses it, naming the problem
        if tuple(modalities) != MODALITIES:  # before nnU-Net's __init__ writes anything
            raise TrainingRefused.announce(
                f"{type(self).__name__} needs the channels in the order {', '.join(MODALITIES)} (RCR lends features "
                f"by sequence); {dataset_json_path(plans)} has {', '.join(modalities)}: convert the dataset with "
                f"nnunet-missingmod convert")
        super().__init__(plans, configuration, fold, dataset_json, device)

    def missingmod_config(self) -> dict:
        return {**super().missingmod_config(), "method": settings_config(self.method)}

    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        network = unwrap_network(self.network)
        network.set_present_channels(batch.channel_mask)  # per sample: exact even for an all-background patch
        try:
            out = self.network(batch.masked_data, return_features=True)
        finally:
            network.set_present_channels(None)
        seg = self.loss(out[LOGITS], batch.target)
        alignment = mutual_self_alignment(out[DECOUPLED], out[PRESENT])
        loss = seg + self.method.alignment_weight * alignment if self.method.alignment_weight else seg
        return StepResult(loss, {"seg": seg, "alignment": alignment})


@with_budgets
class DeMoSegTrainer_small(DeMoSegTrainer):
    """The CPU size: every planned width halved (the four branches run at full resolution: the largest cost)."""

    method = replace(DeMoSegTrainer.method, width=0.5)
