"""nnU-Net's local logger, extended by one series per extra loss term (``train_<term>``)."""
from __future__ import annotations

import math
from typing import Iterable

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402


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
        # Copied from nnunetv2 2.8.1 LocalLogger.plot_progress_png (three stock panels), plus a fourth panel with
        # the loss terms: the stock method draws and saves in one go, so there is no hook to add a panel.
        log = self.my_fantastic_logging
        epoch = min(len(i) for i in log.values()) - 1
        sns.set(font_scale=2.5)
        fig, ax_all = plt.subplots(4, 1, figsize=(30, 72))
        x_values = list(range(epoch + 1))
        ax = ax_all[0]
        ax2 = ax.twinx()
        ax.plot(x_values, log['train_losses'][:epoch + 1], color='b', ls='-', label="loss_tr", linewidth=4)
        ax.plot(x_values, log['val_losses'][:epoch + 1], color='r', ls='-', label="loss_val", linewidth=4)
        ax2.plot(x_values, log['mean_fg_dice'][:epoch + 1], color='g', ls='dotted', label="pseudo dice", linewidth=3)
        ax2.plot(x_values, log['ema_fg_dice'][:epoch + 1], color='g', ls='-', label="pseudo dice (mov. avg.)",
                 linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.2, 1))

        ax = ax_all[1]
        durations = [i - j for i, j in zip(log['epoch_end_timestamps'], log['epoch_start_timestamps'])]
        ax.plot(x_values, durations[:epoch + 1], color='b', ls='-', label="epoch duration", linewidth=4)
        ax.set(ylim=[0, ax.get_ylim()[1]])
        ax.set_xlabel("epoch")
        ax.set_ylabel("time [s]")
        ax.legend(loc=(0, 1))

        ax = ax_all[2]
        ax.plot(x_values, log['lrs'][:epoch + 1], color='b', ls='-', label="learning rate", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.legend(loc=(0, 1))

        ax = ax_all[3]
        for term in self.loss_terms:
            ax.plot(x_values, log[loss_term_key(term)][:epoch + 1], ls='-', label=loss_term_key(term), linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss term")
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.legend(loc=(0, 1), ncol=4)

        plt.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close()
