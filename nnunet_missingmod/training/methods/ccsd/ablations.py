"""CCSD's ablations (the paper's Tables 3 and 6) and variants, generated from one table (``docs/methods.md``, "CCSD":
what each changes and why it exists)."""
from nnunet_missingmod.training.methods.ccsd.trainer import CCSDTrainer
from nnunet_missingmod.training.naming import Setting, define_ablations

TABLE = (
    Setting("noHMSD", "without hierarchical modality self-distillation (the level's students still get nnU-Net's "
            "loss)", {"method": {"use_hmsd": False}}),
    Setting("noDMCD", "without decremental modality combination distillation", {"method": {"use_dmcd": False}}),
    Setting("noKD", "the shared-specific backbone alone: no HMSD, no DMCD",
            {"method": {"use_hmsd": False, "use_dmcd": False}}),
    Setting("randomPath", "with DMCD along a random removal order", {"method": {"path_strategy": "random"}}),
    Setting("minCriticality", "with DMCD removing the least critical sequence first",
            {"method": {"path_strategy": "min_criticality"}}),
    Setting("gradCriticality", "with criticality = norm of the segmentation loss's gradient w.r.t. each "
            "sequence's fused feature (the paper's Eq. 9)", {"method": {"path_strategy": "gradient"}}),
    Setting("literalSlot", "with a missing sequence's slot holding the shared encoder's output for a zero image (the "
            "paper's wording)", {"method": {"missing_slot": "literal"}}),
    Setting("2subsets", "decoding at most 2 subsets of the hierarchy level per step",
            {"method": {"max_level_subsets": 2}}),
    Setting("warmup", "with the first quarter of the epochs on the full set alone (ShaSpec's warm-up)",
            {"method": {"warmup": 0.25}}),
    Setting("small", "sized as CCSDTrainer_small",
            {"method": {"shared_width": 0.5, "specific_width": 0.25, "max_level_subsets": 1}}),
)
COMBINATIONS = (
    ("noHMSD",), ("noDMCD",), ("noKD",), ("randomPath",), ("minCriticality",), ("gradCriticality",),
    ("literalSlot",), ("2subsets",), ("warmup",),
    ("noHMSD", "small"), ("noDMCD", "small"), ("noKD", "small"), ("warmup", "small"),
)

define_ablations(CCSDTrainer, TABLE, COMBINATIONS, __name__)
