"""A module that records what the predictor tells a network's presence-aware modules (the presence contract of
``nnunet_missingmod.modalities``)."""
from torch import nn


class PresenceRecorder(nn.Module):
    """Implements ``PresenceAware``: ``told`` lists every mask set (as lists of bools; ``None`` when cleared)."""

    def __init__(self):
        super().__init__()
        self.told = []

    def set_present_channels(self, mask) -> None:
        self.told.append(None if mask is None else mask.tolist())


def record_presence(network: nn.Module) -> PresenceRecorder:
    """Attach a recorder to ``network`` (outside its state dict: it has no parameters) and return it."""
    recorder = PresenceRecorder()
    network.add_module("presence_recorder", recorder)
    return recorder
