"""CCSD as nnU-Net trainers: a shared-specific network (ShaSpec backbone) trained with hierarchical modality
self-distillation (HMSD) and decremental modality combination distillation (DMCD).

One network is teacher and students at once: each step encodes every sequence once, decodes the full set (the
teacher, stop-gradient for distillation) and the subsets of one hierarchy level (the students), and distils the
fused features along a per-sample decremental path. ``CCSDTrainer`` holds the defaults (:class:`CCSDSettings`) and
``CCSDTrainer_small`` its CPU size; the ablations are generated in ``ablations.py``. Sources of every choice (paper,
ShaSpec code, our reconstruction): ``docs/methods.md``.

The network reorders the dataset's channels to the canonical modalities (T1, T1ce, T2, FLAIR) by their names
(``network.py``); everything the step does is symmetric in the sequences (all subsets of a size; a path computed from
the features), so any channel order works (MSD's FLAIR-first order included).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Optional, Tuple

import torch

from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.base import (
    MaskedBatch, MissingModalityTrainerBase, SamplingSettings, StepResult, settings_config)
from nnunet_missingmod.training.extra_modules import unwrap_network
from nnunet_missingmod.training.features import LOGITS
from nnunet_missingmod.training.kd import full_resolution
from nnunet_missingmod.training.methods.ccsd.losses import (
    DEFAULTS, DMCDLoss, HMSDLoss, domain_classification_loss, hierarchy_level_subsets, sample_hierarchy_level,
    shared_alignment_loss)
from nnunet_missingmod.training.methods.ccsd.network import (
    DOMAIN_LOGITS, FUSED, MISSING_SLOT_CHOICES, MODALITY_FEATURES, SHARED_FEATURES, SUBSET_LOGITS,
    build_ccsd_network)
from nnunet_missingmod.training.methods.ccsd.path import PATH_STRATEGIES, decremental_path, gradient_criticality
from nnunet_missingmod.training.naming import with_budgets


@dataclass(frozen=True)
class CCSDSettings:
    """CCSD's settings: the paper where it states them, ShaSpec's code, else ours (``docs/methods.md``).

    * network: ``specific_width`` (specific encoders' width × the planned widths), ``shared_width`` (the shared
      encoder's, 1.0 = planned; it runs on all four sequences, so it sets most of the cost), ``missing_slot``
      (``"shaspec"``: a missing sequence's bottleneck slot holds the shared feature of the first available one, as
      ShaSpec's code; ``"literal"``: the shared encoder's output for a zero image, the paper's wording);
    * HMSD: ``use_hmsd``, ``hmsd_weight``, ``temperature``, ``hierarchy_levels`` (k drawn uniformly),
      ``max_level_subsets`` (``None``: decode every subset of level k; an int: at most that many, drawn at random);
    * DMCD: ``use_dmcd``, ``dmcd_weight``, ``dmcd_normalise`` (compare channel-L2-normalised features; the raw MSE
      diverges), ``path_strategy`` (one of ``path.PATH_STRATEGIES``; ``max_criticality`` is the paper's);
    * ``student_segmentation``: nnU-Net's loss also on every decoded subset (the paper does not say; without it a
      student learns only from the teacher);
    * ``warmup``: the fraction of the epochs trained on the full set alone before the method's terms start;
    * ShaSpec's auxiliary losses: ``shared_alignment_weight`` (L1 between shared features, 0.1) and
      ``domain_weight`` (modality classification of specific features, 0.02). Both stay in the graph even at
      weight 0, so every parameter gets a gradient each step and DDP needs no ``find_unused_parameters``.
    """

    specific_width: float = 0.5
    shared_width: float = 1.0
    missing_slot: str = "shaspec"
    use_hmsd: bool = True
    use_dmcd: bool = True
    hmsd_weight: float = DEFAULTS["hmsd"]
    dmcd_weight: float = DEFAULTS["dmcd"]
    dmcd_normalise: bool = DEFAULTS["dmcd_normalise"]
    temperature: float = DEFAULTS["temperature"]
    hierarchy_levels: Tuple[int, ...] = DEFAULTS["levels"]
    max_level_subsets: Optional[int] = None
    path_strategy: str = "max_criticality"
    student_segmentation: bool = True
    shared_alignment_weight: float = DEFAULTS["shared_alignment"]
    domain_weight: float = DEFAULTS["domain"]
    warmup: float = 0.0

    def __post_init__(self):
        def refuse(name, expected):
            raise ValueError(f"CCSDSettings.{name} must be {expected}, got {getattr(self, name)!r}")
        for name in ("specific_width", "shared_width", "temperature"):
            if not getattr(self, name) > 0:
                refuse(name, "> 0")
        for name in ("hmsd_weight", "dmcd_weight", "shared_alignment_weight", "domain_weight"):
            if not getattr(self, name) >= 0:
                refuse(name, ">= 0")
        if self.missing_slot not in MISSING_SLOT_CHOICES:
            refuse("missing_slot", f"one of {MISSING_SLOT_CHOICES}")
        if self.path_strategy not in PATH_STRATEGIES:
            refuse("path_strategy", f"one of {PATH_STRATEGIES}")
        if not self.hierarchy_levels or not set(self.hierarchy_levels) <= {1, 2, 3}:
            refuse("hierarchy_levels", "a non-empty tuple of levels in 1..3")
        if self.max_level_subsets is not None and not self.max_level_subsets >= 1:
            refuse("max_level_subsets", "None or >= 1")
        if not 0 <= self.warmup < 1:
            refuse("warmup", "in [0, 1)")


@with_budgets
class CCSDTrainer(MissingModalityTrainerBase):
    """CCSD with the defaults of :class:`CCSDSettings`."""

    method: ClassVar[CCSDSettings] = CCSDSettings()
    # The network sees every sequence; the students are decoded from its cache, so the sampler keeps all.
    sampling = SamplingSettings(full_set_probability=1.0)
    loss_terms = ("seg_full", "seg_students", "hmsd", "dmcd", "shared_alignment", "domain", "level")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # A classmethod (nnU-Net's is static) so that the network follows the class's settings.
        m = cls.method
        return build_ccsd_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  enable_deep_supervision, specific_width=m.specific_width,
                                  missing_slot=m.missing_slot, shared_width=m.shared_width)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not isinstance(self.method, CCSDSettings):
            raise TypeError(f"{type(self).__name__}.method must be a CCSDSettings, got {self.method!r}")

    def on_initialized(self) -> None:
        super().on_initialized()
        self.hmsd_loss = HMSDLoss(temperature=self.method.temperature, regions=self.label_manager.has_regions)
        self.dmcd_loss = DMCDLoss(normalise=self.method.dmcd_normalise)

    def missingmod_config(self) -> dict:
        return {**super().missingmod_config(), "method": settings_config(self.method)}

    def trainable_subsets(self):
        # What the students cover over training: every subset of the hierarchy levels, and the full set.
        covered = {SUBSETS[i].name for k in self.method.hierarchy_levels for i in hierarchy_level_subsets(k)}
        return [s.name for s in SUBSETS if s.name in covered or s.is_full]

    def level_subsets(self, level: int) -> tuple:
        """Indices into ``SUBSETS`` of the students decoded this step: level ``level``, subsampled if asked."""
        subsets = hierarchy_level_subsets(level)
        if self.method.max_level_subsets is None or self.method.max_level_subsets >= len(subsets):
            return subsets
        order = torch.randperm(len(subsets), generator=self.subset_generator)[:self.method.max_level_subsets]
        return tuple(subsets[i] for i in sorted(order.tolist()))

    def in_warmup(self) -> bool:
        return self.current_epoch < round(self.method.warmup * self.num_epochs)

    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        unwrap_network(self.network).set_present_channels(None)  # all sequences are in the batch
        if self.in_warmup():
            return self._warmup_step(batch)
        level = sample_hierarchy_level(self.subset_generator, levels=self.method.hierarchy_levels)
        students = self.level_subsets(level)
        out = self.network(batch.data, return_features=True, decode_subsets=students)

        seg_full = self.loss(out[LOGITS], batch.target)
        seg_students = torch.stack([self.loss(out[SUBSET_LOGITS][i], batch.target) for i in students]).mean()
        loss = seg_full + (seg_students if self.method.student_segmentation else 0.0)
        terms = {"seg_full": seg_full, "seg_students": seg_students.detach(),
                 "level": torch.tensor(float(level))}

        hmsd = self.hmsd_loss(full_resolution(out[LOGITS]), [full_resolution(out[SUBSET_LOGITS][i]) for i in students])
        terms["hmsd"] = hmsd
        if self.method.use_hmsd:
            loss = loss + self.method.hmsd_weight * hmsd

        gradient_norms = gradient_criticality(seg_full, out[MODALITY_FEATURES]) \
            if self.method.use_dmcd and self.method.path_strategy == "gradient" else None
        path = decremental_path(out[MODALITY_FEATURES].detach(), strategy=self.method.path_strategy,
                                generator=self.subset_generator, gradient_norms=gradient_norms)
        dmcd = self.dmcd_loss(out[FUSED], path.to(out[FUSED].device))
        terms["dmcd"] = dmcd
        if self.method.use_dmcd:
            loss = loss + self.method.dmcd_weight * dmcd

        return self._with_auxiliary_terms(loss, terms, out)

    def _with_auxiliary_terms(self, loss, terms, out) -> StepResult:
        terms["shared_alignment"] = shared_alignment_loss(out[SHARED_FEATURES])
        terms["domain"] = domain_classification_loss(out[DOMAIN_LOGITS])
        loss = loss + self.method.shared_alignment_weight * terms["shared_alignment"] + \
            self.method.domain_weight * terms["domain"]
        return StepResult(loss, terms)

    def _warmup_step(self, batch: MaskedBatch) -> StepResult:
        """Full set only: nnU-Net's loss on the full-set decode and ShaSpec's auxiliary terms (which keep every
        parameter in the graph, as DDP needs); the method's terms are logged as 0."""
        out = self.network(batch.data, return_features=True, decode_subsets=())
        seg_full = self.loss(out[LOGITS], batch.target)
        zero = seg_full.detach().new_zeros(())
        terms = {"seg_full": seg_full, "seg_students": zero, "hmsd": zero, "dmcd": zero, "level": zero}
        return self._with_auxiliary_terms(seg_full, terms, out)


@with_budgets
class CCSDTrainer_small(CCSDTrainer):
    """The size within the cost target (at most 3x a stock step; ``docs/benchmarks.md``), also the CPU one: shared
    encoder at half the planned widths (it runs on all four sequences: the largest cost), specific encoders at 1/4,
    one student of the drawn hierarchy level decoded per step. The method is otherwise CCSDTrainer's."""

    method = replace(CCSDTrainer.method, shared_width=0.5, specific_width=0.25, max_level_subsets=1)
