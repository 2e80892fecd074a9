"""MST-KDNet as nnU-Net trainers: a full-modality teacher and a missing-modality student trained together with
multi-scale transformer distillation (MS-TKD), dual-mode logit distillation (DMLD) and global style matching (GSME).

``MSTKDTrainer`` is the method with the official code's defaults; the ablations of the paper's Table 4 and the
variants are thin subclasses whose names say the one setting they change. Every weight and its source is listed in
``docs/methods.md``.
"""
from __future__ import annotations

import os
from typing import Dict

import torch
from torch import nn

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.base import (
    ExtraModule, MaskedBatch, MissingModalityTrainerBase, StepResult, frozen_parameters, map_tensors,
    unwrap_network)
from nnunet_missingmod.training.features import LOGITS
from nnunet_missingmod.training.mstkd.discriminator import style_discriminator_for
from nnunet_missingmod.training.mstkd.losses import (
    OFFICIAL_WEIGHTS, ConsistencyLoss, ContentLoss, EVDLoss, GramStyleLoss, LogitStandardisedKD,
    MultiScaleTransformerLoss, consistency_weight, discriminator_loss, full_resolution, generator_adversarial_loss)
from nnunet_missingmod.training.mstkd.network import (
    ATTENTION, CONTENT, FUSED, GSME_FEATURES, MST_FEATURES, SMALL, VIT_SMALL, TransformerConfig, build_mstkd_network)
from nnunet_missingmod.training.dropout import FullSetTrainer

TEACHER_ENV = "nnUNet_missingmod_teacher"
"""Environment variable naming the checkpoint (``checkpoint_final.pth``) of a finished run whose network the
``_frozenTeacher`` variants load as their frozen teacher."""


class _MSTKDNetworkMixin:
    """The MST-KDNet network (planned U-Net + the official transformer stage) for any trainer."""

    transformer: TransformerConfig = TransformerConfig()

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        # A classmethod (nnU-Net's is static) so that thin subclasses choose the transformer size by a class
        # attribute; nnU-Net calls it on the class at inference and on the instance in training, both work.
        return build_mstkd_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, transformer=cls.transformer)


class MSTKDTeacherTrainer(_MSTKDNetworkMixin, FullSetTrainer):
    """The MST-KDNet network trained on all sequences, nothing else: the teacher that ``MSTKDTrainer_frozenTeacher``
    loads (``export nnUNet_missingmod_teacher=.../fold_0/checkpoint_final.pth``)."""


class MSTKDTeacherTrainer_small(MSTKDTeacherTrainer):
    """``MSTKDTeacherTrainer`` with the CPU-sized transformer of ``MSTKDTrainer_small``."""

    transformer = SMALL


class MSTKDTrainer(_MSTKDNetworkMixin, MissingModalityTrainerBase):
    """MST-KDNet (teacher/student) with the official code's defaults.

    * teacher: the same architecture on all sequences; jointly trained with the student by the main optimiser, as
      the official code (one optimiser over both, no stop-gradient); ``detach_teacher = True`` stops the
      distillation gradients at the teacher; ``frozen_teacher`` loads a finished run instead (see ``_frozenTeacher``).
    * student: ``self.network`` (saved as ``network_weights``, used at inference) on the same augmented patch with
      each sample's subset zeroed (uniform over the 15 subsets, full set included, as the official code draws).
    * discriminator: GSME's style discriminator on the fused map, with its own persistent Adam and grad scaler.
    * switches ``use_mstkd``, ``use_gsme``, ``use_slkd``, ``use_content`` (the official code's content MSE, not in
      the paper) select the terms; ``weights`` holds the official weights (``OFFICIAL_WEIGHTS``).
    """

    detach_teacher: bool = False
    frozen_teacher: bool = False
    use_mstkd: bool = True
    use_gsme: bool = True
    use_slkd: bool = True
    use_content: bool = False
    weights: Dict[str, float] = dict(OFFICIAL_WEIGHTS)
    discriminator_ndf: int = 64
    discriminator_lr: float = 1e-4  # official: Adam(1e-4, betas=(0.9, 0.99)) for the discriminator
    discriminator_betas = (0.9, 0.99)

    @property
    def loss_terms(self) -> tuple:
        terms = ["seg_teacher", "seg_student", "consistency", "consistency_weight"]
        if self.use_slkd:
            terms.append("slkd")
        if self.use_mstkd:
            terms += ["evd", "mst"]
        if self.use_gsme:
            terms += ["gram", "adversarial", "discriminator"]
        if self.use_content:
            terms.append("content")
        return tuple(terms)

    # ------------------------------------------------------------------ modules
    def build_extra_modules(self) -> Dict[str, ExtraModule]:
        teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        modules = {"teacher": ExtraModule(teacher, trainable=not self.frozen_teacher, deep_supervision=True)}
        if self.frozen_teacher:
            self._load_frozen_teacher(teacher)
        if self.use_gsme:
            discriminator = style_discriminator_for(unwrap_network(self.network), ndf=self.discriminator_ndf)
            modules["discriminator"] = ExtraModule(discriminator, optimizer=lambda params: torch.optim.Adam(
                params, lr=self.discriminator_lr, betas=self.discriminator_betas))
        return modules

    def _load_frozen_teacher(self, teacher: nn.Module) -> None:
        path = os.environ.get(TEACHER_ENV)
        if not path:
            raise MissingModError(f"{type(self).__name__} needs a trained teacher: set {TEACHER_ENV} to the "
                                  f"checkpoint_final.pth of a finished run of {type(self).__name__}'s network "
                                  f"(e.g. nnUNetv2_train ... -tr {self.teacher_trainer_name()})")
        if os.path.isdir(path):
            path = os.path.join(path, "checkpoint_final.pth")
        if not os.path.isfile(path):
            raise MissingModError(f"{TEACHER_ENV}={path}: no such checkpoint file")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        try:
            teacher.load_state_dict(checkpoint["network_weights"], strict=True)
        except (KeyError, RuntimeError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MissingModError(
                f"{TEACHER_ENV}={path} (trainer {checkpoint.get('trainer_name', '?')}) does not fit "
                f"{type(self).__name__}'s network (same plans, configuration and transformer size needed; "
                f"train it with -tr {self.teacher_trainer_name()}): {first_line}") from None

    @classmethod
    def teacher_trainer_name(cls) -> str:
        """The trainer whose finished run a ``_frozenTeacher`` variant of this class loads (same network size)."""
        return "MSTKDTeacherTrainer_small" if cls.transformer == SMALL else "MSTKDTeacherTrainer"

    # ------------------------------------------------------------------ the step
    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        teacher = self.extra_modules["teacher"]
        student_out = self.network(batch.masked_data, return_features=True)
        with torch.no_grad() if self.frozen_teacher else torch.enable_grad():
            teacher_out = teacher(batch.data, return_features=True)
        stop_at_teacher = self.detach_teacher or self.frozen_teacher
        kd_teacher = map_tensors(torch.Tensor.detach, teacher_out) if stop_at_teacher else teacher_out
        w = self.weights
        regions = self.label_manager.has_regions

        seg_teacher = self.loss(teacher_out[LOGITS], batch.target)
        seg_student = self.loss(student_out[LOGITS], batch.target)
        terms = {"seg_teacher": seg_teacher.detach(), "seg_student": seg_student}
        loss = w["seg_student"] * seg_student
        if not self.frozen_teacher:
            loss = loss + w["seg_teacher"] * seg_teacher

        teacher_logits, student_logits = full_resolution(kd_teacher[LOGITS]), full_resolution(student_out[LOGITS])
        ramp = consistency_weight(self.training_progress(), max_weight=w["consistency_max"],
                                  rampup_fraction=w["consistency_rampup"])
        terms["consistency"] = ConsistencyLoss(regions=regions)(teacher_logits, student_logits)
        terms["consistency_weight"] = torch.tensor(ramp)
        loss = loss + ramp * terms["consistency"]
        if self.use_slkd:
            terms["slkd"] = LogitStandardisedKD(temperature=w["slkd_temperature"], regions=regions)(
                teacher_logits, student_logits)
            loss = loss + w["slkd"] * terms["slkd"]
        if self.use_mstkd:
            terms["evd"] = EVDLoss()(kd_teacher[ATTENTION], student_out[ATTENTION])
            terms["mst"] = MultiScaleTransformerLoss()(kd_teacher[MST_FEATURES], student_out[MST_FEATURES])
            loss = loss + w["evd"] * terms["evd"] + w["mst"] * terms["mst"]
        if self.use_content:
            terms["content"] = ContentLoss()(kd_teacher[CONTENT], student_out[CONTENT])
            loss = loss + w["content"] * terms["content"]
        context = {}
        if self.use_gsme:
            terms["gram"] = GramStyleLoss()(kd_teacher[GSME_FEATURES], student_out[GSME_FEATURES])
            with frozen_parameters(self.extra_modules["discriminator"]) as discriminator:
                terms["adversarial"] = generator_adversarial_loss(discriminator(student_out[FUSED]))
            loss = loss + w["gram"] * terms["gram"] + w["adversarial"] * terms["adversarial"]
            context = {"teacher_fused": teacher_out[FUSED].detach(), "student_fused": student_out[FUSED].detach()}
        return StepResult(loss, terms, context)

    def extra_module_loss(self, name: str, batch: MaskedBatch, context) -> StepResult:
        # One forward over teacher and student maps: a DDP-wrapped discriminator must run once per backward.
        n = context["teacher_fused"].shape[0]
        logits = self.extra_modules[name](torch.cat([context["teacher_fused"], context["student_fused"]]))
        loss = discriminator_loss(logits[:n], logits[n:])
        return StepResult(loss, {"discriminator": loss})


# ---------------------------------------------------------------------- ablations (paper, Table 4) and variants
class MSTKDTrainer_noMSTKD(MSTKDTrainer):
    """Without multi-scale transformer distillation (EVD and MST terms)."""

    use_mstkd = False


class MSTKDTrainer_noGSME(MSTKDTrainer):
    """Without global style matching (Gram term, adversarial term and discriminator)."""

    use_gsme = False


class MSTKDTrainer_noSLKD(MSTKDTrainer):
    """Without the logit-standardised KL of DMLD (the consistency MSE stays)."""

    use_slkd = False


class MSTKDTrainer_detachedTeacher(MSTKDTrainer):
    """Distillation gradients stop at the teacher (the teacher still learns from its own segmentation loss)."""

    detach_teacher = True


class MSTKDTrainer_frozenTeacher(MSTKDTrainer):
    """A frozen teacher loaded from the finished run named by ``nnUNet_missingmod_teacher`` (train it with
    ``-tr MSTKDTeacherTrainer``); only the student and the discriminator learn."""

    frozen_teacher = True


class MSTKDTrainer_content(MSTKDTrainer):
    """Adds the official code's content MSE on the decoder feature (weight 0.2; not in the paper)."""

    use_content = True


class MSTKDTrainer_small(MSTKDTrainer):
    """A CPU-sized transformer (embed 96, 4 heads, 4 layers) for demos and tests; everything else as MSTKDTrainer."""

    transformer = SMALL


class MSTKDTrainer_noMSTKD_small(MSTKDTrainer_noMSTKD):
    """``MSTKDTrainer_noMSTKD`` with the CPU-sized transformer."""

    transformer = SMALL


class MSTKDTrainer_noGSME_small(MSTKDTrainer_noGSME):
    """``MSTKDTrainer_noGSME`` with the CPU-sized transformer."""

    transformer = SMALL


class MSTKDTrainer_noSLKD_small(MSTKDTrainer_noSLKD):
    """``MSTKDTrainer_noSLKD`` with the CPU-sized transformer."""

    transformer = SMALL


class MSTKDTrainer_frozenTeacher_small(MSTKDTrainer_frozenTeacher):
    """``MSTKDTrainer_frozenTeacher`` with the CPU-sized transformer (teacher from ``MSTKDTeacherTrainer_small``):
    the cheapest MST-KD step, since the teacher only runs forward."""

    transformer = SMALL


# ---------------------------------------------------------------------- sizes for nnU-Net's BraTS plans on one GPU
class MSTKDTrainer_vitSmall(MSTKDTrainer):
    """MSTKDTrainer with a transformer stage at half the official widths (``VIT_SMALL``: ViT-S, embed 384, 6 heads,
    12 layers; UNETR-decoder channels halved): 4x fewer transformer parameters per network; cost at nnU-Net's
    BraTS plans in ``docs/benchmarks.md``. Everything else, the two jointly trained networks included, as
    MSTKDTrainer."""

    transformer = VIT_SMALL
