"""Modality dropout: stock nnU-Net with each sample trained on a random subset of the sequences, the stock baseline
itself, and presence-conditioned norms."""
