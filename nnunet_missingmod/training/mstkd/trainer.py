"""MST-KDNet as nnU-Net trainers: a full-modality teacher and a missing-modality student trained together with
multi-scale transformer distillation (MS-TKD), dual-mode logit distillation (DMLD) and global style matching (GSME).

``MSTKDTrainer`` is the method with the official code's defaults; the ablations of the paper's Table 4 and the
variants are thin subclasses whose names say the one setting they change. Every weight and its source is listed in
``docs/methods.md``.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.base import (
    TEACHER, ExtraModule, MaskedBatch, MissingModalityTrainerBase, StepResult, frozen_parameters, map_tensors,
    unwrap_network)
from nnunet_missingmod.training.distillation import TEACHER_ENV, full_resolution, same_state_dict_layout
from nnunet_missingmod.training.dropout import FullSetTrainer
from nnunet_missingmod.training.features import LOGITS
from nnunet_missingmod.training.mstkd.discriminator import style_discriminator_for
from nnunet_missingmod.training.mstkd.losses import (
    OFFICIAL_WEIGHTS, ConsistencyLoss, ContentLoss, EVDLoss, GramStyleLoss, LogitStandardisedKD,
    MultiScaleTransformerLoss, consistency_weight, discriminator_loss, generator_adversarial_loss)
from nnunet_missingmod.training.mstkd.network import (
    ATTENTION, CONTENT, FUSED, GSME_FEATURES, MST_FEATURES, SMALL, VIT_SMALL, TransformerConfig, build_mstkd_network)

__all__ = ["TEACHER_ENV"]  # re-exported: the variable's name is part of the MST-KD trainers' documentation


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


class SmallTransformer:
    """The size of the ``_small`` MST-KD variants (a mixin, not a trainer): the CPU-sized transformer stage
    (embed 96, 4 heads, 4 layers); everything else as the class it is mixed into."""

    transformer = SMALL


class MSTKDTeacherTrainer_small(SmallTransformer, MSTKDTeacherTrainer):
    """``MSTKDTeacherTrainer`` with the CPU-sized transformer of ``MSTKDTrainer_small``."""


class MSTKDTrainer(_MSTKDNetworkMixin, MissingModalityTrainerBase):
    """MST-KDNet (teacher/student) with the official code's defaults.

    * teacher: the same architecture on all sequences; jointly trained with the student by the main optimiser, as
      the official code (one optimiser over both, no stop-gradient); ``detach_teacher = True`` stops the
      distillation gradients at the teacher; ``teacher_source = "checkpoint"`` uses the base trainer's frozen
      teacher from a finished run instead (``_frozenTeacher``: an MST-KDNet run; ``_stockTeacher``: a stock run,
      logit distillation only).
    * student: ``self.network`` (saved as ``network_weights``, used at inference) on the same augmented patch with
      each sample's subset zeroed (uniform over the 15 subsets, full set included, as the official code draws).
    * discriminator: GSME's style discriminator on the fused map, with its own persistent Adam and grad scaler.
    * switches ``use_mstkd``, ``use_gsme``, ``use_slkd``, ``use_content`` (the official code's content MSE, not in
      the paper) select the terms; ``weights`` holds the official weights (``OFFICIAL_WEIGHTS``).
    """

    detach_teacher: bool = False
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

    @property
    def frozen_teacher(self) -> bool:
        return self.teacher_source is not None

    # ------------------------------------------------------------------ modules
    def build_extra_modules(self) -> Dict[str, ExtraModule]:
        if self.frozen_teacher:  # the base's teacher from a finished run
            modules = super().build_extra_modules()
        else:
            teacher = self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
            modules = {TEACHER: ExtraModule(teacher, deep_supervision=True)}
        if self.use_gsme:
            discriminator = style_discriminator_for(unwrap_network(self.network), ndf=self.discriminator_ndf)
            modules["discriminator"] = ExtraModule(discriminator, optimizer=lambda params: torch.optim.Adam(
                params, lr=self.discriminator_lr, betas=self.discriminator_betas))
        return modules

    def check_teacher_network(self, teacher: nn.Module, run) -> None:
        # the feature terms need the teacher's transformer stage: an MST-KDNet network of the student's size
        if self.teaches_features() and not same_state_dict_layout(unwrap_network(self.network), run.network_weights):
            raise MissingModError(
                f"{TEACHER_ENV}={run.path} (trainer {run.trainer_name}) does not fit {type(self).__name__}'s network "
                f"(same plans, configuration and transformer size needed; train it with -tr "
                f"{self.teacher_trainer_name()})")

    @classmethod
    def teaches_features(cls) -> bool:
        """Whether a term distils the teacher's features (EVD, MST, Gram, content, discriminator)."""
        return cls.use_mstkd or cls.use_gsme or cls.use_content

    @classmethod
    def teacher_trainer_name(cls) -> str:
        """The trainer whose finished run a checkpoint teacher of this class comes from: an MST-KDNet run of the
        same transformer size when features are distilled, else stock nnU-Net."""
        if not cls.teaches_features():
            return "nnUNetTrainer"
        return "MSTKDTeacherTrainer_small" if cls.transformer == SMALL else "MSTKDTeacherTrainer"

    # ------------------------------------------------------------------ the step
    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        teacher = self.extra_modules[TEACHER]
        student_out = self.network(batch.masked_data, return_features=True)
        with torch.no_grad() if self.frozen_teacher else torch.enable_grad():
            # a stock teacher (no feature terms) is called as nnU-Net calls it and returns its logits only
            teacher_out = teacher(batch.data, return_features=True) if self.teaches_features() \
                else {LOGITS: teacher(batch.data)}
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

    teacher_source = "checkpoint"


class MSTKDTrainer_stockTeacher(MSTKDTrainer):
    """The frozen teacher is a finished **stock** ``nnUNetTrainer`` run (``nnUNet_missingmod_teacher``), as accurate
    as stock nnU-Net on complete scans, and the student starts from its encoder and decoder weights (the transformer
    stage and the fused skip start fresh). A stock network has no transformer stage, so only DMLD's logit terms
    (consistency MSE, SLKD) distil; MS-TKD and GSME are off."""

    teacher_source = "checkpoint"
    start_from_teacher = "matching"
    use_mstkd = False
    use_gsme = False


class MSTKDTrainer_content(MSTKDTrainer):
    """Adds the official code's content MSE on the decoder feature (weight 0.2; not in the paper)."""

    use_content = True


class MSTKDTrainer_small(SmallTransformer, MSTKDTrainer):
    """A CPU-sized transformer (embed 96, 4 heads, 4 layers) for demos and tests; everything else as MSTKDTrainer."""


class MSTKDTrainer_noMSTKD_small(SmallTransformer, MSTKDTrainer_noMSTKD):
    """``MSTKDTrainer_noMSTKD`` with the CPU-sized transformer."""


class MSTKDTrainer_noGSME_small(SmallTransformer, MSTKDTrainer_noGSME):
    """``MSTKDTrainer_noGSME`` with the CPU-sized transformer."""


class MSTKDTrainer_noSLKD_small(SmallTransformer, MSTKDTrainer_noSLKD):
    """``MSTKDTrainer_noSLKD`` with the CPU-sized transformer."""


class MSTKDTrainer_frozenTeacher_small(SmallTransformer, MSTKDTrainer_frozenTeacher):
    """``MSTKDTrainer_frozenTeacher`` with the CPU-sized transformer (teacher from ``MSTKDTeacherTrainer_small``):
    the cheapest MST-KD step, since the teacher only runs forward."""


class MSTKDTrainer_stockTeacher_small(SmallTransformer, MSTKDTrainer_stockTeacher):
    """``MSTKDTrainer_stockTeacher`` with the CPU-sized transformer."""


# ---------------------------------------------------------------------- sizes for nnU-Net's BraTS plans on one GPU
class MSTKDTrainer_vitSmall(MSTKDTrainer):
    """MSTKDTrainer with a transformer stage at half the official widths (``VIT_SMALL``: ViT-S, embed 384, 6 heads,
    12 layers; UNETR-decoder channels halved): 4x fewer transformer parameters per network; cost at nnU-Net's
    BraTS plans in ``docs/benchmarks.md``. Everything else, the two jointly trained networks included, as
    MSTKDTrainer."""

    transformer = VIT_SMALL
