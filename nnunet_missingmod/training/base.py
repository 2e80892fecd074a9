"""The base trainer that owns the missing-modality mechanism; method trainers are thin subclasses.

What it owns (and subclasses only configure through class attributes or override in one hook):

* the dataset's channel → modality mapping (from ``dataset.json``, through :mod:`nnunet_missingmod.modalities`);
* one subset per sample, drawn on the device in ``train_step`` after augmentation, so a missing channel is exactly
  0 in normalised space, as the predictor zero-fills it;
* ``compute_loss_terms``: the one hook a method overrides (a teacher/student trainer runs its teacher on ``data`` and
  its student on the masked data there); every extra term it returns is logged per epoch and plotted;
* the optimiser step (AMP, gradient clipping) around that hook, and ``after_optimizer_step`` for a second player
  such as a discriminator;
* checkpoint extras: ``extra_checkpoint_state`` / ``load_extra_checkpoint_state``; ``network_weights`` is always the
  network that inference needs, so stock ``nnUNetv2_predict`` keeps working;
* training budgets: every concrete subclass ``X`` gets a sibling ``X_debug`` (1 epoch, 2 training iterations,
  1 validation iteration), generated here, so no variant is written by hand.

The ``__init__`` signature must stay exactly nnU-Net's: it records its arguments by introspection.
"""
from __future__ import annotations

import sys
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import torch
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context

from nnunet_missingmod import __version__
from nnunet_missingmod.modalities import (
    SUBSETS, apply_channel_mask, modalities_from_channel_names, sample_channel_masks)
from nnunet_missingmod.training.logging import LossTermLocalLogger, loss_term_key

DEBUG_SUFFIX = "_debug"
DEBUG_BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
CHECKPOINT_CONFIG_KEY = "missingmod_config"

TRAINER_MODULES = ("nnunet_missingmod.training.dropout",)
"""Modules that define trainers; importing them registers their classes (see ``__init_subclass__``)."""
_TRAINERS: Dict[str, type] = {}


def trainer_registry() -> Dict[str, type]:
    """Every concrete trainer of this package (with its generated ``_debug`` sibling), by class name."""
    import importlib
    for module in TRAINER_MODULES:
        importlib.import_module(module)
    return dict(_TRAINERS)


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP and ``torch.compile`` wrappers."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class MissingModalityTrainerBase(nnUNetTrainer):
    """Stock nnU-Net training where each sample sees a random subset of the MRI sequences.

    Class attributes (set them in thin subclasses whose names say what they change):

    * ``subset_sampling``: ``"uniform"`` over the 15 subsets, full set included (MST-KDNet's official code), or
      ``"cardinality"``: number of sequences uniform in 1..4, then a subset of that size (ShaSpec).
    * ``full_set_probability``: ``None`` (the full set is just one of the candidates), or the probability that a
      sample keeps all sequences; the others then draw among the 14 proper subsets.
    * ``subset_seed``: ``None`` (a fresh seed per process, so DDP ranks draw different subsets) or an int for
      reproducible draws (rank r uses ``subset_seed + r``).
    * ``loss_terms``: names of the extra terms ``compute_loss_terms`` returns (logged as ``train_<term>``).
    * ``budget``: overrides of nnU-Net's epoch and iteration counts (used by the generated ``_debug`` variants).
    """

    subset_sampling: str = "uniform"
    full_set_probability: Optional[float] = None
    subset_seed: Optional[int] = None
    loss_terms: tuple = ()
    budget: Optional[Dict[str, int]] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.channel_modalities = modalities_from_channel_names(dataset_json["channel_names"])
        for attribute, value in (self.budget or {}).items():
            setattr(self, attribute, value)
        self.logger.local_logger = LossTermLocalLogger(self.loss_terms)
        self.subset_generator = torch.Generator()
        if self.subset_seed is None:
            self.subset_generator.seed()
        else:
            self.subset_generator.manual_seed(self.subset_seed + self.local_rank)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("nnunet_missingmod."):  # not subclasses written by users or tests
            _TRAINERS[cls.__name__] = cls
        if not cls.__name__.endswith(DEBUG_SUFFIX):
            _define_budget_variant(cls, DEBUG_SUFFIX, DEBUG_BUDGET)

    # ------------------------------------------------------------------ masks
    def sample_channel_masks(self, batch_size: int) -> torch.Tensor:
        """(B, C) bool on the trainer's device: which channels each sample keeps."""
        return sample_channel_masks(batch_size, self.channel_modalities, self.subset_sampling,
                                    self.full_set_probability, self.subset_generator, self.device)

    # ------------------------------------------------------------------ the training step
    def compute_loss_terms(self, data: torch.Tensor, channel_mask: torch.Tensor, target) -> Dict[str, torch.Tensor]:
        """The hook a method overrides. Runs under autocast on CUDA.

        Args:
            data: (B, C, *patch) augmented, normalised batch with all channels.
            channel_mask: (B, C) bool, ``True`` = the sample keeps that channel.
            target: nnU-Net's target (a list over deep-supervision scales, or a tensor).
        Returns:
            ``{"loss": total to back-propagate, <term>: tensor for each name in loss_terms}``.
        """
        output = self.network(apply_channel_mask(data, channel_mask))
        return {"loss": self.loss(output, target)}

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """Parameters whose gradient norm is clipped before the optimiser step (those the optimiser updates)."""
        return self.network.parameters()

    def after_optimizer_step(self, data: torch.Tensor, channel_mask: torch.Tensor, target) -> Dict[str, torch.Tensor]:
        """Hook for a second player (e.g. a discriminator update) after the main step; returns extra terms to log."""
        return {}

    def train_step(self, batch: dict) -> dict:
        # Same order of operations as nnunetv2 2.8.1 nnUNetTrainer.train_step, with the forward and loss delegated
        # to compute_loss_terms and the mask drawn on the device.
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        channel_mask = self.sample_channel_masks(data.shape[0])

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = self.compute_loss_terms(data, channel_mask, target)
        loss = terms["loss"]
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
            self.optimizer.step()
        terms.update(self.after_optimizer_step(data, channel_mask, target))
        return {name: value.detach().float().cpu().numpy() for name, value in terms.items()}

    def autocast(self):
        """Autocast on CUDA only, as nnU-Net does (slow on CPU, unsupported on MPS)."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.loss_terms:
            return
        outputs = collate_outputs(train_outputs)
        for term in self.loss_terms:
            value = self._mean_over_ranks(outputs[term])
            self.logger.log(loss_term_key(term), value, self.current_epoch)
            self.print_to_log_file(loss_term_key(term), np.round(value, decimals=6))

    def _mean_over_ranks(self, values) -> float:
        if not self.is_ddp:
            return float(np.mean(values))
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, values)
        return float(np.vstack(gathered).mean())

    # ------------------------------------------------------------------ checkpoints
    def extra_checkpoint_state(self) -> dict:
        """Training-only state saved beside nnU-Net's keys; names start with their concern (``teacher_``, ...)."""
        return {}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what :meth:`extra_checkpoint_state` saved."""

    def missingmod_config(self) -> dict:
        """How this model was trained for missing sequences; the predictor reads it."""
        return {
            "package_version": __version__,
            "channel_modalities": list(self.channel_modalities),
            "subset_sampling": self.subset_sampling,
            "full_set_probability": self.full_set_probability,
            "trained_subsets": [s.name for s in SUBSETS],
        }

    def save_checkpoint(self, filename: str) -> None:
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.save_checkpoint (it builds and saves the dict in one go, so
        # there is no hook for extra keys); added: the missingmod config and extra_checkpoint_state().
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
                }
                checkpoint.update(self.extra_checkpoint_state())
                torch.save(checkpoint, filename)
            else:
                self.print_to_log_file('No checkpoint written, checkpointing is disabled')

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if not isinstance(filename_or_checkpoint, str):
            # nnunetv2 2.8.1 raises UnboundLocalError for a dict (fixed upstream later); nnU-Net itself always
            # passes a path, so we only support that.
            raise TypeError("load_checkpoint takes the path of a checkpoint file")
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        self.load_extra_checkpoint_state(checkpoint)


def _define_budget_variant(cls: type, suffix: str, budget: Dict[str, int]) -> type:
    """Define ``<cls.__name__><suffix>`` in ``cls``'s module, so that it pickles and nnU-Net finds it by name."""
    name = cls.__name__ + suffix
    variant = type(name, (cls,), {
        "budget": {**(cls.budget or {}), **budget},
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__ + suffix,
        "__doc__": f"{cls.__name__} with a smoke-test budget: {budget}.",
    })
    setattr(sys.modules[cls.__module__], name, variant)
    return variant
