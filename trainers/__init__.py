"""Re-export shims for nnU-Net's ``nnUNet_extTrainer`` lookup; installed as ``nnunet_missingmod.ext_trainers``.

nnU-Net imports every module of this folder as a top-level module and drops it from ``sys.modules`` after the
lookup, so classes *defined* here could not be pickled and would differ between lookups. The modules here therefore
only re-export classes that live in the installed package. No logic belongs here.
"""
