"""Build a real trainer on the tiny preprocessed dataset and a batch like nnU-Net's data loader yields; run
``nnUNetv2_train`` with the fault-test trainers (``training/fault_trainers/``)."""
import copy
import os
from pathlib import Path

import torch

from conftest import DATASET_ID, DATASET_NAME, nnunet_env, plans_and_dataset_json

FAULT_TRAINERS = Path(__file__).parent / "training" / "fault_trainers"


def make_trainer(nnunet_root, trainer_class, fold=0, features_per_stage=None):
    """``trainer_class`` initialised on the CPU on the session's tiny plans; ``features_per_stage`` replaces the
    planned U-Net widths."""
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    if features_per_stage is not None:
        plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = \
            list(features_per_stage)
    trainer = trainer_class(plans, "3d_fullres", fold, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def make_batch(trainer, batch_size=2, seed=0):
    """Random normalised data and region targets at every deep-supervision scale."""
    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    n_channels = trainer.num_input_channels
    data = torch.randn(batch_size, n_channels, *patch, generator=g)
    labels = torch.randint(0, 4, (batch_size, 1, *patch), generator=g)
    regions = torch.cat([labels >= 1, labels >= 2, labels == 3], dim=1)
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [round(p * s) for p, s in zip(patch, scale)]
        targets.append(torch.nn.functional.interpolate(regions.float(), size=size, mode="nearest-exact").bool())
    return {"data": data, "target": targets, "keys": [f"case{i}" for i in range(batch_size)]}


def fault_env(nnunet_root: Path, results: Path, **extra: str) -> dict:
    """nnU-Net's environment with its own results folder and the fault-test trainers after the package's."""
    env = nnunet_env(nnunet_root)
    env.update(nnUNet_results=str(results), **extra)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(FAULT_TRAINERS)])
    return env


def train_command(trainer: str, *flags: str) -> list:
    return ["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *flags]


def fold_folder(results: Path, trainer: str) -> Path:
    return results / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


# ---------------------------------------------------------------------------------------------------------------
# A minimal two-network method, defined here (not in the package) to test the base trainer's contract the way a
# method uses it: a jointly trained teacher, a discriminator with its own optimiser, logged terms and own state.
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from nnunet_missingmod.training.base import MissingModalityTrainerBase, SamplingSettings, StepResult  # noqa: E402
from nnunet_missingmod.training.extra_modules import ExtraModule, frozen_parameters  # noqa: E402


class TeacherDiscriminatorTrainer(MissingModalityTrainerBase):
    loss_terms = ("kd", "adv", "disc")
    sampling = SamplingSettings(seed=7)

    def build_extra_modules(self):
        teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        n_out = self.label_manager.num_segmentation_heads
        discriminator = nn.Sequential(nn.Conv3d(n_out, 4, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 1))
        return {"teacher": ExtraModule(teacher, deep_supervision=True),
                "discriminator": ExtraModule(discriminator,
                                             optimizer=lambda p: torch.optim.Adam(p, 1e-3, betas=(0.9, 0.99)))}

    def compute_loss_terms(self, batch):
        student = self.network(batch.masked_data)
        teacher = self.extra_modules["teacher"](batch.data)
        with torch.autocast(self.device.type, enabled=False):
            kd = F.mse_loss(student[0].float(), teacher[0].float())
        with frozen_parameters(self.extra_modules["discriminator"]) as discriminator:
            fake_logits = discriminator(student[0])
            adv = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        loss = self.loss(student, batch.target) + self.loss(teacher, batch.target) + kd + 0.01 * adv
        return StepResult(loss, {"kd": kd, "adv": adv},
                          {"fake": student[0].detach(), "real": teacher[0].detach()})

    def extra_module_loss(self, name, batch, context):
        logits = self.extra_modules[name](torch.cat([context["real"], context["fake"]]))
        n = context["real"].shape[0]
        labels = torch.cat([torch.zeros(n, 1), torch.ones(n, 1)]).to(logits)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return StepResult(loss, {"disc": loss})

    def extra_checkpoint_state(self):
        return {"note": "method state", "optimizer_state": "must not overwrite nnU-Net's key"}

    def load_extra_checkpoint_state(self, state):
        self.restored_method_state = state


def module_parameters(module) -> torch.Tensor:
    """All parameters of a (possibly wrapped) module as one flat detached tensor."""
    return torch.cat([p.detach().flatten() for p in module.parameters()])
