"""One package per missing-modality method, each of the same shape: ``trainer.py`` (its public trainers),
``ablations.py`` (one table of named settings from which the ablation classes are generated), and the method's own
``network.py`` / ``losses.py`` where it has them. ``nnunet_missingmod.training.naming`` registers them."""
