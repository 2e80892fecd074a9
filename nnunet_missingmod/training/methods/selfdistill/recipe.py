"""The teacher of the two-phase and robustify recipes: where it comes from, when it distils, how it moves.

* ``"snapshot"`` (two-phase): the run trains on the full set until the switch epoch (``switch`` × the epochs),
  copies its network into the frozen teacher then, and draws subsets afterwards. With ``ema_momentum`` = m the
  teacher then follows the student after every step (``teacher ← m · teacher + (1 − m) · student``, a mean
  teacher). With ``anneal_before_switch`` phase 1 has its own poly schedule that ends at the switch
  (:class:`SwitchAnnealedPolyLRScheduler`), so the snapshot is a converged model; phase 2 follows nnU-Net's.
* ``"checkpoint"``: the network of the finished run named by ``nnUNet_missingmod_teacher``
  (:func:`~nnunet_missingmod.training.teacher.load_checkpoint_teacher`); with ``start_from`` the student starts
  from its weights.

While the teacher is active, the loss adds :class:`~.losses.TeacherDistillationLoss` on every sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_missingmod.modalities import subset_distribution
from nnunet_missingmod.training.base import MaskedBatch, StepResult, settings_config
from nnunet_missingmod.training.extra_modules import TEACHER, ExtraModule, unwrap_network
from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer_cardinality
from nnunet_missingmod.training.methods.selfdistill.losses import (
    DISTILL_TERMS, DistillationSettings, TeacherDistillationLoss)
from nnunet_missingmod.training.teacher import START_FROM_TEACHER, load_checkpoint_teacher

TEACHER_SOURCES = ("snapshot", "checkpoint")


@dataclass(frozen=True)
class TeacherSettings:
    """Where the frozen teacher comes from and how it moves (module docstring); every combination that cannot work
    is refused here, naming the setting and the value."""

    source: str = "snapshot"
    switch: float = 0.5
    start_from: Optional[str] = None
    ema_momentum: Optional[float] = None
    anneal_before_switch: bool = False

    def __post_init__(self):
        if self.source not in TEACHER_SOURCES:
            raise ValueError(f"TeacherSettings.source must be one of {TEACHER_SOURCES}, got {self.source!r}")
        if not 0 < self.switch < 1:
            raise ValueError(f"TeacherSettings.switch must lie in (0, 1), got {self.switch!r}")
        if self.start_from not in START_FROM_TEACHER:
            raise ValueError(f"TeacherSettings.start_from must be one of {START_FROM_TEACHER}, got "
                             f"{self.start_from!r}")
        if self.start_from is not None and self.source != "checkpoint":
            raise ValueError(f"TeacherSettings.start_from={self.start_from!r} needs source 'checkpoint', got "
                             f"{self.source!r}")
        if self.anneal_before_switch and self.source != "snapshot":
            raise ValueError(f"TeacherSettings.anneal_before_switch needs source 'snapshot' (there is no switch "
                             f"otherwise), got {self.source!r}")
        if self.ema_momentum is not None and not (self.source == "snapshot" and 0 <= self.ema_momentum < 1):
            raise ValueError(f"TeacherSettings.ema_momentum needs source 'snapshot' (the teacher must have the "
                             f"student's architecture) and a value in [0, 1), got {self.ema_momentum!r} with source "
                             f"{self.source!r}")


class SwitchAnnealedPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule with phase 1 annealed on its own: before ``switch_epoch`` the learning rate is
    ``initial_lr · (1 − epoch / switch_epoch)^0.9``, from the switch on it is nnU-Net's
    ``initial_lr · (1 − epoch / max_steps)^0.9``. Stepped with the epoch as nnU-Net steps its scheduler, so it has
    no state to checkpoint (``--c`` resumes it from the epoch)."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, switch_epoch: int, exponent: float = 0.9):
        if not 0 < switch_epoch < max_steps:
            raise ValueError(f"the switch epoch must lie inside the run's {max_steps} epochs, got {switch_epoch}")
        self.switch_epoch = switch_epoch
        self.total_steps = max_steps
        super().__init__(optimizer, initial_lr, max_steps, exponent)

    def step(self, current_step=None):
        # nnU-Net's step computes from self.max_steps: set the horizon of the phase the step falls in, then delegate
        epoch = self.ctr if current_step is None or current_step == -1 else current_step
        self.max_steps = self.switch_epoch if epoch < self.switch_epoch else self.total_steps
        super().step(current_step)


class SelfDistillationTrainer(ModalityDropoutTrainer_cardinality):
    """Cardinality dropout with a frozen teacher (:class:`TeacherSettings`) distilled on every sample
    (:class:`~.losses.DistillationSettings`). Not a trainer of its own: the public ones are in ``trainer.py``."""

    teacher: ClassVar[TeacherSettings] = TeacherSettings()
    distillation: ClassVar[DistillationSettings] = DistillationSettings()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for attribute, kind in (("teacher", TeacherSettings), ("distillation", DistillationSettings)):
            if not isinstance(getattr(self, attribute), kind):
                raise TypeError(f"{type(self).__name__}.{attribute} must be a {kind.__name__}, got "
                                f"{getattr(self, attribute)!r}")
        self.teacher_snapshot_epoch: Optional[int] = None  # the epoch whose start the snapshot was taken at
        self.distillation_loss: Optional[TeacherDistillationLoss] = None

    @property
    def loss_terms(self) -> tuple:
        return DISTILL_TERMS if self.distillation.active else ()

    def on_initialized(self) -> None:
        super().on_initialized()
        self.distillation_loss = TeacherDistillationLoss(self.distillation, self.label_manager.has_regions)

    # ------------------------------------------------------------------ the teacher
    def build_extra_modules(self) -> Dict[str, ExtraModule]:
        return {**super().build_extra_modules(),
                TEACHER: ExtraModule(self.build_teacher(), trainable=False, deep_supervision=True)}

    def build_teacher(self):
        if self.teacher.source == "snapshot":  # the student's architecture; weights copied at the switch
            return self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        return load_checkpoint_teacher(self, self.teacher.start_from, self.teacher_trainer_name())

    @classmethod
    def teacher_trainer_name(cls) -> str:
        """The trainer whose finished run a checkpoint teacher comes from: stock nnU-Net."""
        return "nnUNetTrainer"

    def teacher_switch_epoch(self) -> int:
        """The epoch at whose start a snapshot teacher is taken: ``switch`` of the epochs, rounded, at least 1 and at
        most the last epoch (a 1-epoch run snapshots at its start)."""
        return min(max(round(self.teacher.switch * self.num_epochs), 1), max(self.num_epochs - 1, 0))

    def teacher_active(self) -> bool:
        """Whether the teacher distils in this step (a snapshot teacher only after its switch)."""
        return self.teacher.source != "snapshot" or self.teacher_snapshot_epoch is not None

    def subset_weights(self, epoch: int) -> torch.Tensor:
        if self.teacher.source == "snapshot" and epoch < self.teacher_switch_epoch():
            return subset_distribution(self.sampling.strategy, full_set_probability=1.0)  # the full set only
        return super().subset_weights(epoch)

    def make_lr_scheduler(self, optimizer):
        if self.teacher.anneal_before_switch:
            return SwitchAnnealedPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                                 self.teacher_switch_epoch())
        return super().make_lr_scheduler(optimizer)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.teacher.source == "snapshot" and self.teacher_snapshot_epoch is None \
                and self.current_epoch >= self.teacher_switch_epoch():
            self.take_teacher_snapshot()

    def take_teacher_snapshot(self) -> None:
        """Copy the student's current weights into the frozen snapshot teacher."""
        unwrap_network(self.extra_modules[TEACHER]).load_state_dict(unwrap_network(self.network).state_dict())
        self.teacher_snapshot_epoch = self.current_epoch
        self.print_to_log_file(f"teacher snapshot taken at the start of epoch {self.current_epoch}; subsets are "
                               f"drawn from now on")

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """``teacher ← m · teacher + (1 − m) · student`` for every parameter (m = ``ema_momentum``), buffers copied,
        after each optimiser step once the teacher is active; identical on every DDP rank, whose students are."""
        super().after_optimizer_step()
        if self.teacher.ema_momentum is None or not self.teacher_active():
            return
        student = unwrap_network(self.network)
        teacher = unwrap_network(self.extra_modules[TEACHER])
        student_parameters = dict(student.named_parameters())
        for name, weight in teacher.named_parameters():
            weight.lerp_(student_parameters[name].detach(), 1 - self.teacher.ema_momentum)
        student_buffers = dict(student.named_buffers())
        for name, buffer in teacher.named_buffers():
            buffer.copy_(student_buffers[name])

    # ------------------------------------------------------------------ the loss
    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        output = self.network(batch.masked_data)
        loss = self.loss(output, batch.target)
        if not self.distillation.active:
            return StepResult(loss=loss)
        if not self.teacher_active():  # phase 1 of two-phase training: logged as zeros
            return StepResult(loss, TeacherDistillationLoss.zero_terms(loss))
        with torch.no_grad():
            teacher_output = self.extra_modules[TEACHER](batch.data)
        distilled, terms = self.distillation_loss(teacher_output, output)
        return StepResult(loss + distilled, terms)

    # ------------------------------------------------------------------ checkpoints
    def missingmod_config(self) -> dict:
        return {**super().missingmod_config(), "teacher": settings_config(self.teacher),
                "distillation": settings_config(self.distillation)}

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "teacher_snapshot_epoch": self.teacher_snapshot_epoch}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        super().load_extra_checkpoint_state(state)
        self.teacher_snapshot_epoch = state.get("teacher_snapshot_epoch")
