"""nnU-Net's local logger, extended by one series per extra loss term (``train_<term>``)."""
from __future__ import annotations

import math
from typing import Iterable

from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_missingmod.training.nnunet_copies import plot_progress_with_loss_terms


def loss_term_key(term: str) -> str:
    """The logger key (and progress-plot label) of a loss term: ``train_<term>``."""
    return f"train_{term}"


class LossTermLocalLogger(LocalLogger):
    """Logs one value per epoch for each extra loss term and plots them in a fourth panel of ``progress.png``."""

    def __init__(self, loss_terms: Iterable[str], verbose: bool = False):
        super().__init__(verbose)
        self.loss_terms = tuple(loss_terms)
        self._add_missing_term_series()

    def _add_missing_term_series(self) -> None:
        # A checkpoint written before a term existed has no series for it; pad with NaN so that the series stay
        # aligned with the epochs (the plot uses the shortest series).
        n_epochs = len(self.my_fantastic_logging["train_losses"])
        for term in self.loss_terms:
            self.my_fantastic_logging.setdefault(loss_term_key(term), [math.nan] * n_epochs)

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        self._add_missing_term_series()

    def plot_progress_png(self, output_folder):
        if not self.loss_terms:
            return super().plot_progress_png(output_folder)
        plot_progress_with_loss_terms(self.my_fantastic_logging, [loss_term_key(t) for t in self.loss_terms],
                                      output_folder)
