"""DeMoSeg's component ablations (one component removed at a time, as the paper's ablation study) and variants,
generated from one table (``docs/methods.md``, "DeMoSeg": what each changes and why it exists)."""
from nnunet_missingmod.training.methods.demoseg.trainer import DeMoSegTrainer
from nnunet_missingmod.training.naming import Setting, define_ablations

TABLE = (
    Setting("noCSSA", "without CSSA: plain planned convolutions in the decoupling branches and the backbone",
            {"method": {"cssa": False}}),
    Setting("plainBackbone", "with CSSA in the decoupling branches only (the backbone is the planned U-Net)",
            {"method": {"backbone_cssa": False}}),
    Setting("noRCR", "without RCR compensation: a missing sequence's slot stays zero", {"method": {"rcr": False}}),
    Setting("noAlign", "without the mutual-to-self alignment (the official nnU-Net v2 port's loss)",
            {"method": {"alignment_weight": 0.0}}),
    Setting("small", "sized as DeMoSegTrainer_small", {"method": {"width": 0.5}}),
)
COMBINATIONS = (
    ("noCSSA",), ("plainBackbone",), ("noRCR",), ("noAlign",),
    ("noCSSA", "small"), ("plainBackbone", "small"), ("noRCR", "small"), ("noAlign", "small"),
)

define_ablations(DeMoSegTrainer, TABLE, COMBINATIONS, __name__)
