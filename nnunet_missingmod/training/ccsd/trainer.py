"""CCSD as nnU-Net trainers: a shared-specific network (ShaSpec backbone) trained with hierarchical modality
self-distillation (HMSD) and decremental modality combination distillation (DMCD).

One network is teacher and students at once: each step encodes every sequence once, decodes the full set (the
teacher, stop-gradient for distillation) and the subsets of one hierarchy level (the students), and distils the
fused features along a per-sample decremental path. ``CCSDTrainer`` holds the defaults; ablations and path
strategies are thin subclasses. Sources of every choice (paper, ShaSpec code, our reconstruction):
``docs/methods.md``.

The network indexes sequences in the dataset's channel order; the modality names only label them. Everything the
step does is symmetric in the sequences (all subsets of a size; a path computed from the features), so it is
correct for any channel order (MSD's FLAIR-first order included).
"""
from __future__ import annotations

from typing import Optional

import torch

from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.base import MaskedBatch, MissingModalityTrainerBase, StepResult, unwrap_network
from nnunet_missingmod.training.ccsd.losses import (
    DEFAULTS, DMCDLoss, HMSDLoss, domain_classification_loss, hierarchy_level_subsets, sample_hierarchy_level,
    shared_alignment_loss)
from nnunet_missingmod.training.ccsd.network import (
    DOMAIN_LOGITS, FUSED, MODALITY_FEATURES, SHARED_FEATURES, SUBSET_LOGITS, build_ccsd_network)
from nnunet_missingmod.training.ccsd.path import decremental_path, gradient_criticality
from nnunet_missingmod.training.distillation import full_resolution
from nnunet_missingmod.training.features import LOGITS


class CCSDTrainer(MissingModalityTrainerBase):
    """CCSD with the defaults of ``docs/methods.md`` (paper where it states them, ShaSpec's code, else ours).

    Class attributes:

    * network: ``specific_width`` (specific encoders' width × the planned widths; cost control), ``shared_width``
      (the shared encoder's, 1.0 = planned; it runs on all four sequences, so it sets most of the cost),
      ``missing_slot`` (``"shaspec"``: a missing sequence's bottleneck slot holds the shared feature of the first
      available one, as ShaSpec's code; ``"literal"``: the shared encoder's output for a zero image, the paper's
      wording);
    * HMSD: ``use_hmsd``, ``hmsd_weight``, ``temperature``, ``hierarchy_levels`` (k drawn uniformly),
      ``max_level_subsets`` (``None``: decode every subset of level k; an int: at most that many, drawn at random);
    * DMCD: ``use_dmcd``, ``dmcd_weight``, ``dmcd_normalise`` (compare channel-L2-normalised features; the raw MSE
      diverges), ``path_strategy`` (``max_criticality`` (paper), ``min_criticality``,
      ``random``, ``gradient`` (paper's Eq. 9));
    * ``student_segmentation``: nnU-Net's loss also on every decoded subset (the paper does not say; without it a
      student learns only from the teacher);
    * ``warmup``: the fraction of the epochs trained on the full set alone (no students, no HMSD/DMCD) before the
      method's terms start (ShaSpec's recipe warms up on all modalities before dropping any);
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
    hierarchy_levels: tuple = DEFAULTS["levels"]
    max_level_subsets: Optional[int] = None
    path_strategy: str = "max_criticality"
    student_segmentation: bool = True
    shared_alignment_weight: float = DEFAULTS["shared_alignment"]
    domain_weight: float = DEFAULTS["domain"]
    warmup: float = 0.0
    # The network sees every sequence; the students are decoded from its cache, so the sampler keeps all.
    full_set_probability = 1.0
    loss_terms = ("seg_full", "seg_students", "hmsd", "dmcd", "shared_alignment", "domain", "level")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # A classmethod (nnU-Net's is static) so that thin subclasses set the network by class attributes.
        return build_ccsd_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  enable_deep_supervision, specific_width=cls.specific_width,
                                  missing_slot=cls.missing_slot, shared_width=cls.shared_width)


    def trainable_subsets(self):
        # What the students cover over training: every subset of the hierarchy levels, and the full set.
        covered = {SUBSETS[i].name for k in self.hierarchy_levels for i in hierarchy_level_subsets(k)}
        return [s.name for s in SUBSETS if s.name in covered or s.is_full]

    def level_subsets(self, level: int) -> tuple:
        """Indices into ``SUBSETS`` of the students decoded this step: level ``level``, subsampled if asked."""
        subsets = hierarchy_level_subsets(level)
        if self.max_level_subsets is None or self.max_level_subsets >= len(subsets):
            return subsets
        order = torch.randperm(len(subsets), generator=self.subset_generator)[:self.max_level_subsets]
        return tuple(subsets[i] for i in sorted(order.tolist()))

    def in_warmup(self) -> bool:
        return self.current_epoch < round(self.warmup * self.num_epochs)

    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        unwrap_network(self.network).set_modality_mask(None)  # all sequences are in the batch
        if self.in_warmup():
            return self._warmup_step(batch)
        level = sample_hierarchy_level(self.subset_generator, levels=self.hierarchy_levels)
        students = self.level_subsets(level)
        out = self.network(batch.data, return_features=True, decode_subsets=students)
        regions = self.label_manager.has_regions

        seg_full = self.loss(out[LOGITS], batch.target)
        seg_students = torch.stack([self.loss(out[SUBSET_LOGITS][i], batch.target) for i in students]).mean()
        loss = seg_full + (seg_students if self.student_segmentation else 0.0)
        terms = {"seg_full": seg_full, "seg_students": seg_students.detach(),
                 "level": torch.tensor(float(level))}

        hmsd = HMSDLoss(temperature=self.temperature, regions=regions)(
            full_resolution(out[LOGITS]), [full_resolution(out[SUBSET_LOGITS][i]) for i in students])
        terms["hmsd"] = hmsd
        if self.use_hmsd:
            loss = loss + self.hmsd_weight * hmsd

        gradient_norms = gradient_criticality(seg_full, out[MODALITY_FEATURES]) \
            if self.use_dmcd and self.path_strategy == "gradient" else None
        path = decremental_path(out[MODALITY_FEATURES].detach(), strategy=self.path_strategy,
                                generator=self.subset_generator, gradient_norms=gradient_norms)
        dmcd = DMCDLoss(normalise=self.dmcd_normalise)(out[FUSED], path.to(out[FUSED].device))
        terms["dmcd"] = dmcd
        if self.use_dmcd:
            loss = loss + self.dmcd_weight * dmcd

        return self._with_auxiliary_terms(loss, terms, out)

    def _with_auxiliary_terms(self, loss, terms, out) -> StepResult:
        terms["shared_alignment"] = shared_alignment_loss(out[SHARED_FEATURES])
        terms["domain"] = domain_classification_loss(out[DOMAIN_LOGITS])
        loss = loss + self.shared_alignment_weight * terms["shared_alignment"] + \
            self.domain_weight * terms["domain"]
        return StepResult(loss, terms)

    def _warmup_step(self, batch: MaskedBatch) -> StepResult:
        """Full set only: nnU-Net's loss on the full-set decode and ShaSpec's auxiliary terms (which keep every
        parameter in the graph, as DDP needs); the method's terms are logged as 0."""
        out = self.network(batch.data, return_features=True, decode_subsets=())
        seg_full = self.loss(out[LOGITS], batch.target)
        zero = seg_full.detach().new_zeros(())
        terms = {"seg_full": seg_full, "seg_students": zero, "hmsd": zero, "dmcd": zero, "level": zero}
        return self._with_auxiliary_terms(seg_full, terms, out)


# ---------------------------------------------------------------------- ablations (paper, Tables 3 and 6)
class CCSDTrainer_noHMSD(CCSDTrainer):
    """Without hierarchical modality self-distillation (the level's students still get nnU-Net's loss)."""

    use_hmsd = False


class CCSDTrainer_noDMCD(CCSDTrainer):
    """Without decremental modality combination distillation."""

    use_dmcd = False


class CCSDTrainer_noKD(CCSDTrainer):
    """The shared-specific backbone alone: no HMSD, no DMCD (segmentation of the full set and the students, and
    ShaSpec's auxiliary losses)."""

    use_hmsd = False
    use_dmcd = False


class CCSDTrainer_randomPath(CCSDTrainer):
    """DMCD along a random removal order instead of the most critical sequence first."""

    path_strategy = "random"


class CCSDTrainer_minCriticality(CCSDTrainer):
    """DMCD removing the least critical sequence first."""

    path_strategy = "min_criticality"


class CCSDTrainer_gradCriticality(CCSDTrainer):
    """DMCD with criticality = norm of the segmentation loss's gradient w.r.t. each sequence's fused feature
    (the paper's Eq. 9 variant)."""

    path_strategy = "gradient"


class CCSDTrainer_literalSlot(CCSDTrainer):
    """A missing sequence's bottleneck slot holds the shared encoder's output for a zero image (the paper's
    wording) instead of the shared feature of an available sequence (ShaSpec's code)."""

    missing_slot = "literal"


class CCSDTrainer_2subsets(CCSDTrainer):
    """At most 2 subsets of the hierarchy level decoded per step (cheaper: decoding dominates the step's cost)."""

    max_level_subsets = 2


class SmallSize:
    """The sizes of ``CCSDTrainer_small``, shared with its ablations (a mixin, not a trainer): shared encoder at
    half the planned widths (it runs on all four sequences: the largest cost), specific encoders at 1/4, one student
    of the drawn hierarchy level decoded per step."""

    shared_width = 0.5
    specific_width = 0.25
    max_level_subsets = 1


class CCSDTrainer_small(SmallSize, CCSDTrainer):
    """The variant within the cost target (at most 3x a stock step; ``docs/benchmarks.md``), also the CPU one, with
    the sizes of :class:`SmallSize`. The method is otherwise CCSDTrainer's."""


class CCSDTrainer_noHMSD_small(SmallSize, CCSDTrainer_noHMSD):
    """``CCSDTrainer_noHMSD`` sized as ``CCSDTrainer_small``."""


class CCSDTrainer_noDMCD_small(SmallSize, CCSDTrainer_noDMCD):
    """``CCSDTrainer_noDMCD`` sized as ``CCSDTrainer_small``."""


class CCSDTrainer_noKD_small(SmallSize, CCSDTrainer_noKD):
    """``CCSDTrainer_noKD`` sized as ``CCSDTrainer_small``."""


class CCSDTrainer_warmup(CCSDTrainer):
    """The first quarter of the epochs on the full set alone (ShaSpec's warm-up on all modalities), then CCSD."""

    warmup = 0.25


class CCSDTrainer_warmup_small(SmallSize, CCSDTrainer_warmup):
    """``CCSDTrainer_warmup`` sized as ``CCSDTrainer_small``."""
