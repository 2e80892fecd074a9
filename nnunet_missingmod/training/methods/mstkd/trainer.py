"""MST-KDNet as nnU-Net trainers: a full-modality teacher and a missing-modality student trained together with
multi-scale transformer distillation (MS-TKD), dual-mode logit distillation (DMLD) and global style matching (GSME).

``MSTKDTrainer`` is the method with the official code's defaults, ``_small`` and ``_vitSmall`` its sizes; the
ablations of the paper's Table 4 and the variants are generated in ``ablations.py`` from :class:`MSTKDSettings`.
Every weight and its source is listed in ``docs/methods.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Dict, Optional, Tuple

import torch
from torch import nn

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.base import MaskedBatch, MissingModalityTrainerBase, StepResult, settings_config
from nnunet_missingmod.training.nnunet_copies import map_tensors
from nnunet_missingmod.training.extra_modules import TEACHER, ExtraModule, frozen_parameters, unwrap_network
from nnunet_missingmod.training.features import LOGITS
from nnunet_missingmod.training.kd import full_resolution
from nnunet_missingmod.training.methods.dropout.trainer import FullSetTrainer
from nnunet_missingmod.training.methods.mstkd.discriminator import style_discriminator_for
from nnunet_missingmod.training.methods.mstkd.losses import (
    OFFICIAL_WEIGHTS, ConsistencyLoss, ContentLoss, EVDLoss, GramStyleLoss, LogitStandardisedKD,
    MultiScaleTransformerLoss, consistency_weight, discriminator_loss, generator_adversarial_loss)
from nnunet_missingmod.training.methods.mstkd.network import (
    ATTENTION, CONTENT, FUSED, GSME_FEATURES, MST_FEATURES, SMALL, VIT_SMALL, TransformerConfig, build_mstkd_network)
from nnunet_missingmod.training.naming import with_budgets
from nnunet_missingmod.training.teacher import START_FROM_TEACHER, TEACHER_ENV, load_checkpoint_teacher, \
    same_state_dict_layout

MSTKD_TEACHERS = ("joint", "checkpoint")


@dataclass(frozen=True)
class MSTKDSettings:
    """MST-KDNet's settings; the defaults are the official code's.

    * ``transformer``: the transformer stage's size (:class:`~.network.TransformerConfig`).
    * ``teacher``: ``"joint"`` (the same architecture on all sequences, trained with the student by the main
      optimiser, as the official code: one optimiser over both, no stop-gradient) or ``"checkpoint"`` (frozen, the
      finished run named by ``nnUNet_missingmod_teacher``); ``start_from_teacher`` (``None``, ``"strict"``,
      ``"matching"``): the student starts from that run's weights.
    * ``detach_teacher``: the distillation gradients stop at a joint teacher.
    * ``use_mstkd``, ``use_gsme``, ``use_slkd``, ``use_content`` (the official code's content MSE, not in the
      paper): which terms are on.
    * ``weight_overrides``: ``((name, value), ...)`` replacing entries of ``OFFICIAL_WEIGHTS``.
    * the discriminator's width ``discriminator_ndf`` and its Adam (official: lr 1e-4, betas (0.9, 0.99)).
    """

    transformer: TransformerConfig = TransformerConfig()
    teacher: str = "joint"
    start_from_teacher: Optional[str] = None
    detach_teacher: bool = False
    use_mstkd: bool = True
    use_gsme: bool = True
    use_slkd: bool = True
    use_content: bool = False
    weight_overrides: Tuple[Tuple[str, float], ...] = ()
    discriminator_ndf: int = 64
    discriminator_lr: float = 1e-4
    discriminator_betas: Tuple[float, float] = (0.9, 0.99)

    def __post_init__(self):
        if self.teacher not in MSTKD_TEACHERS:
            raise ValueError(f"MSTKDSettings.teacher must be one of {MSTKD_TEACHERS}, got {self.teacher!r}")
        if self.start_from_teacher not in START_FROM_TEACHER or \
                (self.start_from_teacher is not None and self.teacher != "checkpoint"):
            raise ValueError(f"MSTKDSettings.start_from_teacher must be one of {START_FROM_TEACHER} and needs teacher "
                             f"'checkpoint', got {self.start_from_teacher!r} with teacher {self.teacher!r}")
        for name, value in self.weight_overrides:
            if name not in OFFICIAL_WEIGHTS or not value >= 0:
                raise ValueError(f"MSTKDSettings.weight_overrides: {name!r}={value!r} is not a weight >= 0 of "
                                 f"{sorted(OFFICIAL_WEIGHTS)}")
        if not (self.discriminator_ndf > 0 and self.discriminator_lr > 0):
            raise ValueError(f"MSTKDSettings: discriminator_ndf and discriminator_lr must be > 0, got "
                             f"{self.discriminator_ndf!r} and {self.discriminator_lr!r}")

    @property
    def weights(self) -> Dict[str, float]:
        return {**OFFICIAL_WEIGHTS, **dict(self.weight_overrides)}

    @property
    def teaches_features(self) -> bool:
        """Whether a term distils the teacher's features (EVD, MST, Gram, content, discriminator)."""
        return self.use_mstkd or self.use_gsme or self.use_content


class _MSTKDNetwork:
    """The MST-KDNet network (planned U-Net + the official transformer stage) of ``cls.method.transformer``."""

    method: ClassVar[MSTKDSettings] = MSTKDSettings()

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        # A classmethod (nnU-Net's is static) so that the size comes from the class's settings; nnU-Net calls it on
        # the class at inference and on the instance in training, both work.
        return build_mstkd_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, transformer=cls.method.transformer)


class MSTKDTeacherTrainer(_MSTKDNetwork, FullSetTrainer):
    """The MST-KDNet network trained on all sequences, nothing else: the teacher that ``MSTKDTrainer_frozenTeacher``
    loads (``export nnUNet_missingmod_teacher=.../fold_0/checkpoint_final.pth``)."""


class MSTKDTeacherTrainer_small(MSTKDTeacherTrainer):
    """``MSTKDTeacherTrainer`` with the CPU-sized transformer of ``MSTKDTrainer_small``."""

    method = replace(MSTKDTeacherTrainer.method, transformer=SMALL)


@with_budgets
class MSTKDTrainer(_MSTKDNetwork, MissingModalityTrainerBase):
    """MST-KDNet (teacher/student) with the official code's defaults (:class:`MSTKDSettings`).

    * teacher: an extra module (:data:`~nnunet_missingmod.training.extra_modules.TEACHER`), jointly trained or
      frozen from a finished run;
    * student: ``self.network`` (saved as ``network_weights``, used at inference) on the same augmented patch with
      each sample's subset zeroed (uniform over the 15 subsets, full set included, as the official code draws);
    * discriminator: GSME's style discriminator on the fused map, with its own persistent Adam and grad scaler.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not isinstance(self.method, MSTKDSettings):
            raise TypeError(f"{type(self).__name__}.method must be an MSTKDSettings, got {self.method!r}")
        self.weights = self.method.weights

    @property
    def loss_terms(self) -> tuple:
        m = self.method
        terms = ["seg_teacher", "seg_student", "consistency", "consistency_weight"]
        if m.use_slkd:
            terms.append("slkd")
        if m.use_mstkd:
            terms += ["evd", "mst"]
        if m.use_gsme:
            terms += ["gram", "adversarial", "discriminator"]
        if m.use_content:
            terms.append("content")
        return tuple(terms)

    @property
    def frozen_teacher(self) -> bool:
        return self.method.teacher == "checkpoint"

    def on_initialized(self) -> None:
        super().on_initialized()
        regions = self.label_manager.has_regions
        self.consistency_loss = ConsistencyLoss(regions=regions)
        self.slkd_loss = LogitStandardisedKD(temperature=self.weights["slkd_temperature"], regions=regions)
        self.evd_loss, self.mst_loss = EVDLoss(), MultiScaleTransformerLoss()
        self.content_loss, self.gram_loss = ContentLoss(), GramStyleLoss()

    # ------------------------------------------------------------------ modules
    def build_extra_modules(self) -> Dict[str, ExtraModule]:
        modules = super().build_extra_modules()
        if self.frozen_teacher:
            teacher = load_checkpoint_teacher(self, self.method.start_from_teacher, self.teacher_trainer_name(),
                                              self.check_teacher_network)
            modules[TEACHER] = ExtraModule(teacher, trainable=False, deep_supervision=True)
        else:
            teacher = self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
            modules[TEACHER] = ExtraModule(teacher, deep_supervision=True)
        if self.method.use_gsme:
            discriminator = style_discriminator_for(unwrap_network(self.network), ndf=self.method.discriminator_ndf)
            modules["discriminator"] = ExtraModule(discriminator, optimizer=lambda params: torch.optim.Adam(
                params, lr=self.method.discriminator_lr, betas=self.method.discriminator_betas))
        return modules

    def check_teacher_network(self, teacher: nn.Module, run) -> None:
        # the feature terms need the teacher's transformer stage: an MST-KDNet network of the student's size
        if self.method.teaches_features and not same_state_dict_layout(unwrap_network(self.network),
                                                                       run.network_weights):
            raise MissingModError(
                f"{TEACHER_ENV}={run.path} (trainer {run.trainer_name}) does not fit {type(self).__name__}'s network "
                f"(same plans, configuration and transformer size needed; train it with -tr "
                f"{self.teacher_trainer_name()})")

    @classmethod
    def teacher_trainer_name(cls) -> str:
        """The trainer whose finished run a checkpoint teacher of this class comes from: an MST-KDNet run of the
        same transformer size when features are distilled, else stock nnU-Net."""
        if not cls.method.teaches_features:
            return "nnUNetTrainer"
        return "MSTKDTeacherTrainer_small" if cls.method.transformer == SMALL else "MSTKDTeacherTrainer"

    def missingmod_config(self) -> dict:
        return {**super().missingmod_config(), "method": settings_config(self.method)}

    # ------------------------------------------------------------------ the step
    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        teacher = self.extra_modules[TEACHER]
        student_out = self.network(batch.masked_data, return_features=True)
        with torch.no_grad() if self.frozen_teacher else torch.enable_grad():
            # a stock teacher (no feature terms) is called as nnU-Net calls it and returns its logits only
            teacher_out = teacher(batch.data, return_features=True) if self.method.teaches_features \
                else {LOGITS: teacher(batch.data)}
        stop_at_teacher = self.method.detach_teacher or self.frozen_teacher
        kd_teacher = map_tensors(torch.Tensor.detach, teacher_out) if stop_at_teacher else teacher_out
        w = self.weights

        seg_teacher = self.loss(teacher_out[LOGITS], batch.target)
        seg_student = self.loss(student_out[LOGITS], batch.target)
        terms = {"seg_teacher": seg_teacher.detach(), "seg_student": seg_student}
        loss = w["seg_student"] * seg_student
        if not self.frozen_teacher:
            loss = loss + w["seg_teacher"] * seg_teacher

        teacher_logits, student_logits = full_resolution(kd_teacher[LOGITS]), full_resolution(student_out[LOGITS])
        ramp = consistency_weight(self.training_progress(), max_weight=w["consistency_max"],
                                  rampup_fraction=w["consistency_rampup"])
        terms["consistency"] = self.consistency_loss(teacher_logits, student_logits)
        terms["consistency_weight"] = torch.tensor(ramp)
        loss = loss + ramp * terms["consistency"]
        if self.method.use_slkd:
            terms["slkd"] = self.slkd_loss(teacher_logits, student_logits)
            loss = loss + w["slkd"] * terms["slkd"]
        if self.method.use_mstkd:
            terms["evd"] = self.evd_loss(kd_teacher[ATTENTION], student_out[ATTENTION])
            terms["mst"] = self.mst_loss(kd_teacher[MST_FEATURES], student_out[MST_FEATURES])
            loss = loss + w["evd"] * terms["evd"] + w["mst"] * terms["mst"]
        if self.method.use_content:
            terms["content"] = self.content_loss(kd_teacher[CONTENT], student_out[CONTENT])
            loss = loss + w["content"] * terms["content"]
        context = {}
        if self.method.use_gsme:
            terms["gram"] = self.gram_loss(kd_teacher[GSME_FEATURES], student_out[GSME_FEATURES])
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


class MSTKDTrainer_small(MSTKDTrainer):
    """A CPU-sized transformer (embed 96, 4 heads, 4 layers) for demos and tests; everything else as MSTKDTrainer."""

    method = replace(MSTKDTrainer.method, transformer=SMALL)


class MSTKDTrainer_vitSmall(MSTKDTrainer):
    """MSTKDTrainer with a transformer stage at half the official widths (``VIT_SMALL``: ViT-S, embed 384, 6 heads,
    12 layers; UNETR-decoder channels halved): 4x fewer transformer parameters per network; cost at nnU-Net's
    BraTS plans in ``docs/benchmarks.md``. Everything else, the two jointly trained networks included, as
    MSTKDTrainer."""

    method = replace(MSTKDTrainer.method, transformer=VIT_SMALL)


with_budgets(MSTKDTrainer_small)
with_budgets(MSTKDTrainer_vitSmall)
