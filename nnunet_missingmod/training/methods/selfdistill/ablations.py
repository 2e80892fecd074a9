"""Ablations of the self-distillation recipes, generated from one table per trainer (``docs/methods.md``,
"Self-distillation": what each changes and the runs that measured it)."""
from nnunet_missingmod.training.methods.dropout.presence import PresenceConditioning
from nnunet_missingmod.training.methods.selfdistill.trainer import RobustifyTrainer, TwoPhaseDistillTrainer
from nnunet_missingmod.training.naming import Setting, define_ablations

TWO_PHASE_TABLE = (
    Setting("tau2", "with the KL at temperature 2 (scaled by τ², as Hinton et al.): softer targets",
            {"distillation": {"temperature": 2.0}}),
    Setting("tau4", "with the KL at temperature 4", {"distillation": {"temperature": 4.0}}),
    Setting("weight3", "with both distillation terms weighted 3 instead of 1",
            {"distillation": {"kl_weight": 3.0, "dice_weight": 3.0}}),
    Setting("klOnly", "with the per-region KL alone, no soft-Dice term", {"distillation": {"dice_weight": 0.0}}),
    Setting("everyScale", "with both terms at every deep-supervision scale, weighted as nnU-Net's loss weighs them",
            {"distillation": {"every_scale": True}}),
    Setting("switch25", "switching after a quarter of the epochs", {"teacher": {"switch": 0.25}}),
    Setting("switch75", "switching after three quarters of the epochs", {"teacher": {"switch": 0.75}}),
    Setting("annealedSnapshot", "with phase 1 annealed to a learning rate of zero at the switch (its own poly "
            "schedule)", {"teacher": {"anneal_before_switch": True}}),
    Setting("emaTeacher", "with a mean teacher after the switch (EMA momentum 0.99, Tarvainen & Valpola)",
            {"teacher": {"ema_momentum": 0.99}}),
    Setting("uniform", "with uniform sampling over the 15 subsets after the switch",
            {"sampling": {"strategy": "uniform"}}),
    Setting("keepFull50", "keeping every sequence for half of the samples after the switch",
            {"sampling": {"full_set_probability": 0.5}}),
    Setting("presence", "with presence-conditioned norms (dropout/presence.py)", mixin=PresenceConditioning),
)
TWO_PHASE_COMBINATIONS = (
    ("tau2",), ("tau4",), ("weight3",), ("klOnly",), ("everyScale",), ("switch25",), ("switch75",),
    ("annealedSnapshot",), ("emaTeacher",), ("uniform",), ("keepFull50",), ("presence",),
    ("tau2", "weight3"), ("tau2", "everyScale"), ("tau2", "annealedSnapshot"),
)

ROBUSTIFY_TABLE = (
    Setting("klOnly", "with the per-region KL alone", {"distillation": {"dice_weight": 0.0}}),
    Setting("presence", "with presence-conditioned norms, starting from every tensor of the stock run (the "
            "per-pattern tables start at zero, so the start is the stock model exactly)",
            {"teacher": {"start_from": "matching"}}, mixin=PresenceConditioning),
)
ROBUSTIFY_COMBINATIONS = (("klOnly",), ("presence",))

define_ablations(TwoPhaseDistillTrainer, TWO_PHASE_TABLE, TWO_PHASE_COMBINATIONS, __name__)
define_ablations(RobustifyTrainer, ROBUSTIFY_TABLE, ROBUSTIFY_COMBINATIONS, __name__)
