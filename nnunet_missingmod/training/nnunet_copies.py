"""Every piece of nnU-Net 2.8.1 code we had to copy, in one place, and checkpoints written atomically.

nnU-Net builds, compiles, optimises and DDP-wraps ``self.network`` in one ``initialize``, writes its checkpoint dict in
one ``save_checkpoint`` and draws its progress plot in one ``plot_progress_png``, leaving no hook for modules beside
the network, keys of ours or a panel of loss terms. Each copy names the nnU-Net function it copies and says what it
adds; everything else of nnU-Net's trainer is used as it is.

Checkpoint layout: ``network_weights`` is always the inference network, so stock ``nnUNetv2_predict`` keeps working;
everything of ours lives under two keys that cannot overwrite nnU-Net's: :data:`CHECKPOINT_CONFIG_KEY` (how the model
was trained, for people and tools) and :data:`CHECKPOINT_EXTRA_KEY` (training state: extra modules, their optimisers
and scalers, the subset sampler's generator, the method's own state).
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, List, Optional, Sequence, Union

import matplotlib.pyplot as plt
import seaborn as sns
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_missingmod.atomic_io import DISK_FULL_FREE_BYTES, atomic_output, free_bytes, remove_stale_temporaries
from nnunet_missingmod.training.extra_modules import unwrap_network
from nnunet_missingmod.training.teacher import plain_weights

CHECKPOINT_CONFIG_KEY = "missingmod_config"
CHECKPOINT_EXTRA_KEY = "missingmod_extra"
_ALIASED_STORAGE_ERROR = "view the same data as different types"


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree):
    """``tree`` (nested dicts, lists, tuples; other leaves kept) with every tensor ``t`` replaced by ``fn(t)``."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((k, map_tensors(fn, v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree


def write_checkpoint(checkpoint: dict, filename: str) -> None:
    """``torch.save(checkpoint, filename)``, written atomically: a crash or a failed save during training leaves the
    previous ``checkpoint_latest.pth`` as it was (nnU-Net 2.8.1 writes in place, and ``--c`` then fails on a
    half-written file). A full disk is a :class:`~nnunet_missingmod.atomic_io.DiskFullError` naming ``filename``:
    torch's zip writer reports it as ``unexpected pos ...`` without the ``OSError`` behind it, so a failed save with
    (almost) no space left is taken for one.

    ``torch.save`` refuses two tensors whose storages start at one address with different dtypes (pytorch#91325;
    e.g. a method state holding ``t`` and ``t.view(torch.int32)``). Rather than lose a run at an epoch end, that
    one error is answered by saving private copies of the tensors: the same values, without the sharing between
    them, which nothing of ours relies on."""
    with atomic_output(filename) as tmp:
        try:
            _save_unaliased(checkpoint, tmp, filename)
        except RuntimeError:
            if free_bytes(os.path.dirname(os.path.abspath(tmp))) >= DISK_FULL_FREE_BYTES:
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename) from None


def _save_unaliased(checkpoint: dict, tmp: str, filename: str) -> None:
    try:
        torch.save(checkpoint, tmp)
    except RuntimeError as e:
        if _ALIASED_STORAGE_ERROR not in str(e):
            raise
        print(f"torch.save refused aliased tensors in {filename} ({e}); saving copies of the tensors instead",
              file=sys.stderr)
        torch.save(map_tensors(lambda t: t.detach().clone(), checkpoint), tmp)


def folders_nnunet_creates(trainer_name: str, plans: dict, configuration: str, fold: int) -> List[str]:
    """The folders of a run (fold folder first), named as nnunetv2 2.8.1 ``nnUNetTrainer.__init__`` names and makes
    them, so that a trainer can tell before that ``__init__`` which of them the attempt will make."""
    if not nnUNet_results.is_set() or "dataset_name" not in plans:
        return []
    dataset_folder = os.path.join(os.fspath(nnUNet_results), plans["dataset_name"])
    trainer_folder = os.path.join(dataset_folder, f"{trainer_name}__{plans.get('plans_name')}__{configuration}")
    return [os.path.join(trainer_folder, f"fold_{fold}"), trainer_folder, dataset_folder]


def plot_progress_with_loss_terms(log: dict, term_keys: Sequence[str], output_folder: str) -> None:
    # Copied from nnunetv2 2.8.1 LocalLogger.plot_progress_png (three stock panels), plus a fourth panel with the
    # loss terms: the stock method draws and saves in one go, so there is no hook to add a panel. Saved atomically
    # (a full disk is a DiskFullError naming progress.png; the earlier plot stays).
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
    for key in term_keys:
        ax.plot(x_values, log[key][:epoch + 1], ls='-', label=key, linewidth=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.legend(loc=(0, 1), ncol=4)

    plt.tight_layout()
    try:
        with atomic_output(join(output_folder, "progress.png")) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


class NnUNetCopies:
    """Trainer mixin (in front of ``nnUNetTrainer``): nnU-Net 2.8.1's ``initialize``, ``configure_optimizers``,
    ``save_checkpoint`` and ``load_checkpoint``, each extended where nnU-Net has no hook. Needs the trainer to
    provide the extra-module lifecycle (:class:`~nnunet_missingmod.training.extra_modules.ExtraModuleLifecycle`),
    ``missingmod_config()``, ``missingmod_state()`` and ``load_missingmod_state(state)``."""

    def initialize(self):
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.initialize. Added: the extra modules get the network's treatment
        # in the same order; the DDP wrap is one method (wrap_modules_for_ddp) that tests call on the CPU. The old
        # build_network_architecture signature (deprecated in 2.8.1) is not supported.
        if self.was_initialized:
            raise RuntimeError("You have called self.initialize even though the trainer was already initialized. "
                               "That should not happen.")
        self._set_batch_size_and_oversample()
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        self.network = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision).to(self.device)
        self.build_extra_modules_on_device()
        if self._do_i_compile():
            self.print_to_log_file('Using torch.compile...')
            self.network = torch.compile(self.network)
            self.compile_extra_modules()

        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self.configure_extra_optimizers()
        if self.is_ddp:
            self.wrap_modules_for_ddp()
        self.loss = self._build_loss()
        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.was_initialized = True
        self.logger.update_config({"hparas": {
            "initial_lr": self.initial_lr, "weight_decay": self.weight_decay,
            "oversample_foreground_percent": self.oversample_foreground_percent,
            "probabilistic_oversampling": self.probabilistic_oversampling,
            "num_iterations_per_epoch": self.num_iterations_per_epoch,
            "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch, "num_epochs": self.num_epochs,
            "enable_deep_supervision": self.enable_deep_supervision,
            "batch_size": self.configuration_manager.batch_size}})
        self.on_initialized()

    def on_train_start(self):
        # Added before nnU-Net's on_train_start: the temporary files (partial checkpoints, empty reserved names) that
        # a killed run of this fold left behind are removed; those of a live process are not touched.
        if self.local_rank == 0:
            for path in remove_stale_temporaries(self.output_folder):
                self.print_to_log_file(f"removed {path}, left by a training that was killed")
        super().on_train_start()

    def on_initialized(self) -> None:
        """Called at the end of ``initialize()``: build what needs the network and the label manager (losses)."""

    def configure_optimizers(self):
        # nnunetv2 2.8.1 nnUNetTrainer.configure_optimizers (SGD, Nesterov 0.99, poly), over the network and the
        # extra modules that join the main optimiser; the schedule from make_lr_scheduler.
        optimizer = torch.optim.SGD(self.jointly_optimised_parameters(), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, self.make_lr_scheduler(optimizer)

    def make_lr_scheduler(self, optimizer):
        """nnU-Net's poly schedule; a method with another schedule overrides this."""
        return PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def save_checkpoint(self, filename: str) -> None:
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.save_checkpoint (it builds and saves the dict in one go, so
        # there is no hook for extra keys); added: our two keys, and the file is written by write_checkpoint
        # (atomically) instead of torch.save.
        if self.local_rank == 0:
            if not self.disable_checkpointing:
                checkpoint = {
                    'network_weights': unwrap_network(self.network).state_dict(),
                    'optimizer_state': self.optimizer.state_dict(),
                    'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                    'logging': self.logger.get_checkpoint(),
                    '_best_ema': self._best_ema,
                    'current_epoch': self.current_epoch + 1,
                    'init_args': self.my_init_kwargs,
                    'trainer_name': self.__class__.__name__,
                    'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
                    CHECKPOINT_CONFIG_KEY: self.missingmod_config(),
                    CHECKPOINT_EXTRA_KEY: self.missingmod_state(),
                }
                write_checkpoint(checkpoint, filename)
            else:
                self.print_to_log_file('No checkpoint written, checkpointing is disabled')

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.load_checkpoint (which raises UnboundLocalError for a dict and
        # would make us read the file twice); added: our state, checked before anything changes and read from the
        # same loaded dict.
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        where = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint"
        extra: Optional[dict] = checkpoint.get(CHECKPOINT_EXTRA_KEY)
        self.check_extra_modules_state(extra, where, CHECKPOINT_EXTRA_KEY)
        network = unwrap_network(self.network)
        weights = plain_weights(checkpoint['network_weights'], network.state_dict().keys())
        self.my_init_kwargs = checkpoint['init_args']
        self.current_epoch = checkpoint['current_epoch']
        self.logger.load_checkpoint(checkpoint['logging'])
        self._best_ema = checkpoint['_best_ema']
        self.inference_allowed_mirroring_axes = checkpoint.get('inference_allowed_mirroring_axes',
                                                               self.inference_allowed_mirroring_axes)
        network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint['optimizer_state'])
        if self.grad_scaler is not None and checkpoint['grad_scaler_state'] is not None:
            self.grad_scaler.load_state_dict(checkpoint['grad_scaler_state'])
        if extra is not None:
            self.load_missingmod_state(extra)
