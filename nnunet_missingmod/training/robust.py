"""Robust models that keep stock nnU-Net's complete-scan accuracy: cardinality modality dropout with the base
trainer's frozen teacher distilled on every sample.

* ``TwoPhaseDistillTrainer``: one run, equal iterations. It trains on the full set until the switch epoch
  (``teacher_switch`` of the epochs), snapshots its own network as the teacher, then draws subsets (ShaSpec's
  cardinality sampling) and is distilled towards the snapshot's full-set prediction; ``TwoPhaseTrainer`` is the
  same schedule without distillation (what distillation adds).
* ``RobustifyTrainer``: on top of a finished stock run (``nnUNet_missingmod_teacher``): starts from its weights,
  keeps it as the frozen teacher, and trains its budget (e.g. ``RobustifyTrainer_demoSmall``: +200 iterations)
  with subsets, at a tenth of nnU-Net's initial learning rate (the run it continues has already converged).

The distillation is :meth:`~nnunet_missingmod.training.base.MissingModalityTrainerBase.teacher_distillation`: the
per-region KL (τ = 1) and a soft Dice towards the teacher's probabilities, each with weight 1 (the Dice term carries
the small regions, ET above all, that a voxel-mean KL barely weighs). Choices and measurements:
``docs/methods.md`` ("No trade-off") and ``docs/benchmarks.md``.
"""
from nnunet_missingmod.training.dropout import ModalityDropoutTrainer_cardinality
from nnunet_missingmod.training.presence import PresenceConditioning

_DISTILL_TERMS = ("distill_kl", "distill_dice")

# The single-model recipe the measurements recommend (docs/benchmarks.md, "No trade-off"); the demo trains it and
# routes it with stock nnU-Net, bench_train_cost.py times it by this name.
RECOMMENDED_TRAINER = "TwoPhaseDistillTrainer"


class TwoPhaseTrainer(ModalityDropoutTrainer_cardinality):
    """Full set until the switch (half of the epochs), cardinality dropout afterwards; no distillation."""

    teacher_source = "snapshot"


class TwoPhaseDistillTrainer(TwoPhaseTrainer):
    """Two-phase training with self-distillation towards the snapshot at the switch: the candidate default."""

    distillation_weight = 1.0
    distillation_dice_weight = 1.0
    loss_terms = _DISTILL_TERMS


class TwoPhaseDistillTrainer_switch25(TwoPhaseDistillTrainer):
    """Switch after a quarter of the epochs."""

    teacher_switch = 0.25


class TwoPhaseDistillTrainer_switch75(TwoPhaseDistillTrainer):
    """Switch after three quarters of the epochs."""

    teacher_switch = 0.75


class TwoPhaseDistillTrainer_klOnly(TwoPhaseDistillTrainer):
    """The plain form: the per-region KL alone, no soft-Dice term."""

    distillation_dice_weight = 0.0


class TwoPhaseDistillTrainer_weight3(TwoPhaseDistillTrainer):
    """Both distillation terms weighted 3 instead of 1."""

    distillation_weight = 3.0
    distillation_dice_weight = 3.0


class TwoPhaseDistillTrainer_tau2(TwoPhaseDistillTrainer):
    """The KL at temperature 2 instead of 1 (scaled by τ², as Hinton et al.): softer targets, more weight on the
    teacher's uncertain voxels (the tumour's borders)."""

    distillation_temperature = 2.0


class TwoPhaseDistillTrainer_tau2Weight3(TwoPhaseDistillTrainer_tau2):
    """``_tau2`` with both distillation terms weighted 3 (``_weight3``'s setting)."""

    distillation_weight = 3.0
    distillation_dice_weight = 3.0


class TwoPhaseDistillTrainer_tau4(TwoPhaseDistillTrainer):
    """The KL at temperature 4 (τ² scaling): softer still than ``_tau2``."""

    distillation_temperature = 4.0


class TwoPhaseDistillTrainer_tau2EveryScale(TwoPhaseDistillTrainer_tau2):
    """``_tau2`` with both terms at every deep-supervision scale (``_everyScale``'s setting)."""

    distillation_every_scale = True


class TwoPhaseDistillTrainer_annealedSnapshot(TwoPhaseDistillTrainer):
    """Phase 1 anneals its learning rate to zero at the switch (its own poly schedule), so the teacher is a
    converged full-set model instead of a snapshot taken at half nnU-Net's learning rate; phase 2 follows nnU-Net's
    schedule from the switch on."""

    anneal_before_switch = True


class TwoPhaseDistillTrainer_tau2AnnealedSnapshot(TwoPhaseDistillTrainer_tau2):
    """``_tau2`` with phase 1 annealed to the switch (``_annealedSnapshot``'s setting)."""

    anneal_before_switch = True


class TwoPhaseDistillTrainer_uniform(TwoPhaseDistillTrainer):
    """Uniform sampling over the 15 subsets after the switch instead of cardinality sampling."""

    subset_sampling = "uniform"


class TwoPhaseDistillTrainer_keepFull50(TwoPhaseDistillTrainer):
    """After the switch, half of the samples keep every sequence (the other half draw a proper subset by
    cardinality): twice the full-set supervision of phase 2, for the regions that only the full set shows well."""

    full_set_probability = 0.5


class TwoPhaseDistillTrainer_everyScale(TwoPhaseDistillTrainer):
    """Both distillation terms at every deep-supervision scale, weighted as nnU-Net's loss weighs the scales
    (instead of the full-resolution output only): the coarse scales carry the shape of the whole tumour."""

    distillation_every_scale = True


class TwoPhaseDistillTrainer_emaTeacher(TwoPhaseDistillTrainer):
    """After the switch the teacher follows the student as an exponential moving average (momentum 0.99, a time
    constant of 100 iterations; Tarvainen & Valpola's mean teacher) instead of staying frozen at the snapshot: a
    teacher that keeps improving where the half-trained snapshot stops, at the risk of drifting with the student."""

    teacher_ema_momentum = 0.99


class TwoPhaseDistillTrainer_presence(PresenceConditioning, TwoPhaseDistillTrainer):
    """Two-phase self-distillation with presence-conditioned norms (:mod:`nnunet_missingmod.training.presence`):
    phase 1 learns the full set's pattern, phase 2 the other patterns while the distillation holds the full-set
    prediction near the snapshot's."""


class RobustifyTrainer(ModalityDropoutTrainer_cardinality):
    """Robustify a finished model: start from ``nnUNet_missingmod_teacher``'s weights (same architecture needed),
    keep that model as the frozen teacher, and train with cardinality dropout and distillation on every sample."""

    teacher_source = "checkpoint"
    start_from_teacher = "strict"
    distillation_weight = 1.0
    distillation_dice_weight = 1.0
    loss_terms = _DISTILL_TERMS
    nnunet_overrides = {"initial_lr": 1e-3}


class RobustifyTrainer_klOnly(RobustifyTrainer):
    """Robustify with the per-region KL alone."""

    distillation_dice_weight = 0.0


class RobustifyTrainer_presence(PresenceConditioning, RobustifyTrainer):
    """Robustify with presence-conditioned norms: starts from every tensor of the stock run (the per-pattern
    tables start at zero, so the start is the stock model exactly)."""

    start_from_teacher = "matching"
