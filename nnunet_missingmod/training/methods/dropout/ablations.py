"""Ablations of the dropout baseline, generated from one table (``docs/methods.md``, "Modality dropout")."""
from nnunet_missingmod.training.methods.dropout.presence import PresenceConditioning
from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
from nnunet_missingmod.training.naming import Setting, define_ablations

TABLE = (
    Setting("cardinality", "with ShaSpec's cardinality sampling", {"sampling": {"strategy": "cardinality"}}),
    Setting("keepFull50", "keeping all sequences for half of the samples (the others draw a proper subset)",
            {"sampling": {"full_set_probability": 0.5}}),
    Setting("presence", "with a per-presence-pattern scale and shift after every instance norm (presence.py): the "
            "network is told which sequences it has", mixin=PresenceConditioning),
)
COMBINATIONS = (("keepFull50",), ("cardinality", "presence"))

define_ablations(ModalityDropoutTrainer, TABLE, COMBINATIONS, __name__)
