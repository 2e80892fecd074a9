"""nnU-Net v2 plugin for brain-tumour segmentation when MRI sequences are missing."""
__version__ = "0.1.0"
