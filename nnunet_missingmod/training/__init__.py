"""Trainers of this package (``base``: the mechanism; one module per method). Nothing is imported here, so that
the command line starts fast; :func:`nnunet_missingmod.training.registry.trainer_registry` imports them all."""
