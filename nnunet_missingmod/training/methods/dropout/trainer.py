"""The dropout baselines: stock nnU-Net training (``FullSetTrainer``) and stock nnU-Net with per-sample modality
dropout (``ModalityDropoutTrainer``, ``ModalityDropoutTrainer_cardinality``)."""
from nnunet_missingmod.training.base import MissingModalityTrainerBase, SamplingSettings
from nnunet_missingmod.training.naming import with_budgets


@with_budgets
class FullSetTrainer(MissingModalityTrainerBase):
    """Stock nnU-Net training on all sequences: ``nnUNetTrainer``'s network, loss, optimiser, schedule and
    augmentation, with every sample keeping every channel (the channel mask is all ones, so the network sees
    exactly what ``nnUNetTrainer`` feeds it). It exists so that the stock baseline gets the same budget siblings
    (``FullSetTrainer_200iters``, ...) as our trainers for equal-iteration comparisons."""

    sampling = SamplingSettings(full_set_probability=1.0)


@with_budgets
class ModalityDropoutTrainer(MissingModalityTrainerBase):
    """Stock nnU-Net (network, loss, schedule) with per-sample modality dropout in ``train_step``.

    Each sample draws one of the 15 non-empty subsets uniformly, the full set included, as MST-KDNet's official
    code draws its student's subset (``random.randint(0, 14)``); the missing channels are zeroed after augmentation,
    exactly as the predictor zero-fills a missing sequence. Validation during training and the final validation
    use all sequences, as stock nnU-Net does; ``nnunet-missingmod evaluate`` measures every subset.
    """


@with_budgets
class ModalityDropoutTrainer_cardinality(ModalityDropoutTrainer):
    """Draws the number of kept sequences uniformly in 1..4, then a subset of that size (ShaSpec's sampling):
    single sequences are drawn 1/4 of the time instead of 4/15."""

    sampling = SamplingSettings(strategy="cardinality")
