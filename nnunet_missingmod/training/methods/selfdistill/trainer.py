"""The self-distillation recipes (``docs/methods.md``, "Self-distillation"):

* ``TwoPhaseDistillTrainer``: one run, equal iterations. It trains on the full set until the switch epoch (half of
  the epochs), snapshots its own network as the teacher, then draws subsets (ShaSpec's cardinality sampling) and is
  distilled towards the snapshot's full-set prediction; ``TwoPhaseTrainer`` is the same schedule without
  distillation (what distillation adds).
* ``RobustifyTrainer``: on top of a finished stock run (``nnUNet_missingmod_teacher``): starts from its weights,
  keeps it as the frozen teacher, and trains its budget (e.g. ``RobustifyTrainer_200iters``: +200 iterations) with
  subsets, at a tenth of nnU-Net's initial learning rate (the run it continues has already converged).

The distillation is :class:`~.losses.TeacherDistillationLoss`: the per-region KL (τ = 1) and a soft Dice towards the
teacher's probabilities, each with weight 1 (the Dice term carries the small regions, ET above all, that a
voxel-mean KL barely weighs).
"""
from types import MappingProxyType

from nnunet_missingmod.training.methods.selfdistill.losses import DistillationSettings
from nnunet_missingmod.training.methods.selfdistill.recipe import SelfDistillationTrainer, TeacherSettings
from nnunet_missingmod.training.naming import with_budgets

SELF_DISTILLATION_TRAINER = "TwoPhaseDistillTrainer"
"""The self-distillation recipe that the demo, the robustness benchmark and the GPU check train beside
``ModalityDropoutTrainer_cardinality`` (the pick of the single-set runs; the robustness benchmark ranks it no higher
than ``_cardinality``, docs/benchmarks.md)."""
_KL_AND_DICE = DistillationSettings(kl_weight=1.0, dice_weight=1.0)


class TwoPhaseTrainer(SelfDistillationTrainer):
    """Full set until the switch (half of the epochs), cardinality dropout afterwards; no distillation."""

    teacher = TeacherSettings(source="snapshot")


@with_budgets
class TwoPhaseDistillTrainer(TwoPhaseTrainer):
    """Two-phase training with self-distillation towards the snapshot at the switch: one model for every subset."""

    distillation = _KL_AND_DICE


@with_budgets
class RobustifyTrainer(SelfDistillationTrainer):
    """Robustify a finished model: start from ``nnUNet_missingmod_teacher``'s weights (same architecture needed),
    keep that model as the frozen teacher, and train with cardinality dropout and distillation on every sample."""

    teacher = TeacherSettings(source="checkpoint", start_from="strict")
    distillation = _KL_AND_DICE
    nnunet_overrides = MappingProxyType({"initial_lr": 1e-3})
