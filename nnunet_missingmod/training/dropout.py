"""Modality-dropout baseline: stock nnU-Net, each sample trained on a random subset of the sequences; and the
stock baseline itself with our budget variants."""
from nnunet_missingmod.training.base import MissingModalityTrainerBase
from nnunet_missingmod.training.presence import PresenceConditioning


class FullSetTrainer(MissingModalityTrainerBase):
    """Stock nnU-Net training on all sequences: ``nnUNetTrainer``'s network, loss, optimiser, schedule and
    augmentation, with every sample keeping every channel (the channel mask is all ones, so the network sees
    exactly what ``nnUNetTrainer`` feeds it). It exists so that the stock baseline gets the same budget variants
    (``FullSetTrainer_demoSmall``, ...) as our trainers for equal-iteration comparisons."""

    full_set_probability = 1.0


class ModalityDropoutTrainer(MissingModalityTrainerBase):
    """Stock nnU-Net (network, loss, schedule) with per-sample modality dropout in ``train_step``.

    Each sample draws one of the 15 non-empty subsets uniformly, the full set included, as MST-KDNet's official
    code draws its student's subset (``random.randint(0, 14)``); the missing channels are zeroed after augmentation,
    exactly as the predictor zero-fills a missing sequence. Validation during training and the final validation
    use all sequences, as stock nnU-Net does; ``nnunet-missingmod evaluate`` measures every subset.
    """


class ModalityDropoutTrainer_cardinality(ModalityDropoutTrainer):
    """Draws the number of kept sequences uniformly in 1..4, then a subset of that size (ShaSpec's sampling):
    single sequences are drawn 1/4 of the time instead of 4/15."""

    subset_sampling = "cardinality"


class ModalityDropoutTrainer_keepFull50(ModalityDropoutTrainer):
    """Keeps all sequences for half of the samples; the other half draw uniformly among the 14 proper subsets."""

    full_set_probability = 0.5


class ModalityDropoutTrainer_cardinalityPresence(PresenceConditioning, ModalityDropoutTrainer_cardinality):
    """Cardinality dropout with a per-presence-pattern scale and shift after every instance norm
    (:mod:`nnunet_missingmod.training.presence`): the network is told which sequences it has."""
