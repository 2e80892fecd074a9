"""MST-KDNet's ablations (the paper's Table 4) and variants, generated from one table (``docs/methods.md``,
"MST-KDNet": what each changes and why it exists)."""
from nnunet_missingmod.training.methods.mstkd.network import SMALL
from nnunet_missingmod.training.methods.mstkd.trainer import MSTKDTrainer
from nnunet_missingmod.training.naming import Setting, define_ablations

TABLE = (
    Setting("noMSTKD", "without multi-scale transformer distillation (EVD and MST terms)",
            {"method": {"use_mstkd": False}}),
    Setting("noGSME", "without global style matching (Gram term, adversarial term and discriminator)",
            {"method": {"use_gsme": False}}),
    Setting("noSLKD", "without the logit-standardised KL of DMLD (the consistency MSE stays)",
            {"method": {"use_slkd": False}}),
    Setting("detachedTeacher", "with the distillation gradients stopped at the teacher (the teacher still learns "
            "from its own segmentation loss)", {"method": {"detach_teacher": True}}),
    Setting("frozenTeacher", "with a frozen teacher from the finished run named by nnUNet_missingmod_teacher (train "
            "it with -tr MSTKDTeacherTrainer): only the student and the discriminator learn",
            {"method": {"teacher": "checkpoint"}}),
    Setting("stockTeacher", "with a finished stock nnUNetTrainer run as the frozen teacher, the student starting "
            "from its encoder and decoder; only DMLD's logit terms distil (a stock network has no transformer stage)",
            {"method": {"teacher": "checkpoint", "start_from_teacher": "matching", "use_mstkd": False,
                        "use_gsme": False}}),
    Setting("content", "with the official code's content MSE on the decoder feature (weight 0.2; not in the paper)",
            {"method": {"use_content": True}}),
    Setting("small", "with the CPU-sized transformer (embed 96, 4 heads, 4 layers)",
            {"method": {"transformer": SMALL}}),
)
COMBINATIONS = (
    ("noMSTKD",), ("noGSME",), ("noSLKD",), ("detachedTeacher",), ("frozenTeacher",), ("stockTeacher",),
    ("content",),
    ("noMSTKD", "small"), ("noGSME", "small"), ("noSLKD", "small"), ("frozenTeacher", "small"),
    ("stockTeacher", "small"),
)

define_ablations(MSTKDTrainer, TABLE, COMBINATIONS, __name__)
