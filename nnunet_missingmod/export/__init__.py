"""``nnunet-missingmod export``: a trained model folder with inference weights only, loadable by stock nnU-Net
wherever the trainer's network is nnU-Net's own U-Net (:mod:`nnunet_missingmod.export.slim`)."""
