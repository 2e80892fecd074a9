"""Trainers of this package. Importing this package defines (and registers) every trainer and its variants."""
from nnunet_missingmod.training.base import MissingModalityTrainerBase, trainer_registry  # noqa: F401
from nnunet_missingmod.training import dropout  # noqa: F401
