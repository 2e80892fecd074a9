"""Robust models that keep stock nnU-Net's complete-scan accuracy: cardinality modality dropout with a frozen
teacher distilled on every sample (two-phase self-distillation, robustify a finished stock model)."""
