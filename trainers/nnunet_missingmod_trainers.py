"""Re-exports every trainer of nnunet_missingmod for nnU-Net's ``nnUNet_extTrainer`` lookup (see __init__.py)."""
from nnunet_missingmod.training.naming import trainer_registry

globals().update(trainer_registry())
