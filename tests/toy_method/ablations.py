"""The toy method's ablations, generated from one table."""
from nnunet_missingmod.training.naming import Setting, define_ablations
from toy_method.trainer import ToyTrainer

TABLE = (
    Setting("noConsistency", "without the consistency term: modality dropout through the gain network",
            {"method": {"consistency_weight": 0.0}}),
    Setting("fixedGain", "with the input gains fixed at 1 (the planned network's own input)",
            {"method": {"learn_gain": False}}),
)
COMBINATIONS = (("noConsistency",), ("fixedGain",), ("noConsistency", "fixedGain"))

define_ablations(ToyTrainer, TABLE, COMBINATIONS, __name__)
