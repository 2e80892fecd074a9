"""Trainers for the fault tests of ``nnUNetv2_train`` (kill and resume, out of memory), found by nnU-Net's own
lookup: the tests put this folder into ``nnUNet_extTrainer`` after the package's. They are test code, not part of
the package: they change only what a test needs to be fast and reproducible, never the method's step.

* Reproducible: nnU-Net 2.8.1 seeds nothing. The initial weights are drawn after one seed and every epoch starts by
  seeding Python's, NumPy's and torch's global generators from its epoch number, so the data loader (with
  ``nnUNet_n_proc_DA=0``, in the main process) and the augmentation draw the same batches in every run. The subset
  sampler (``subset_generator``, seeded once from ``sampling.seed = 7`` in each class) is deliberately *not*
  re-seeded: after ``--c`` it continues only if the checkpoint restored it.
* Fast: 2 epochs of 2 iterations (1 validation iteration), a checkpoint at every epoch end (``save_every = 1``),
  no final validation (the sliding-window prediction of the validation cases is not what these tests check).
* Killable mid-epoch at a known step: with ``nnUNet_missingmod_test_pause_at=EPOCH:ITERATION`` the run writes the
  file named by ``nnUNet_missingmod_test_paused`` just before that training step and sleeps there, so a test
  SIGKILLs it at exactly that point.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from nnunet_missingmod.training.methods.ccsd.trainer import CCSDTrainer_small
from nnunet_missingmod.training.methods.demoseg.trainer import DeMoSegTrainer_small
from nnunet_missingmod.training.methods.dropout.trainer import (
    ModalityDropoutTrainer, ModalityDropoutTrainer_cardinality)
from nnunet_missingmod.training.methods.mstkd.trainer import MSTKDTrainer_small
from nnunet_missingmod.training.methods.selfdistill.trainer import TwoPhaseDistillTrainer

PAUSE_AT_ENV = "nnUNet_missingmod_test_pause_at"
PAUSED_FILE_ENV = "nnUNet_missingmod_test_paused"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _KillableRun:
    """Mixed in before a trainer of ours (see the module docstring)."""

    budget = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}

    def initialize(self):
        # nnUNetv2_train -device cpu runs torch on every core; multi-threaded CPU kernels sum in an order that varies
        # between processes (the last bits of the weights differ after one step), one thread sums in one order.
        torch.set_num_threads(1)
        seed_everything(0)  # the same initial weights in every run
        super().initialize()
        self.save_every = 1

    def on_train_epoch_start(self):
        seed_everything(1000 + self.current_epoch)
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        if os.environ.get(PAUSE_AT_ENV) == f"{self.current_epoch}:{self._iteration_in_epoch}":
            with open(os.environ[PAUSED_FILE_ENV], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)  # until the test kills the process
        return super().train_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (fault-test trainer)")


def _seeded(sampling):
    """``sampling`` with seed 7: the same draws in every process, so only a restored sampler continues where the
    killed run was."""
    return replace(sampling, seed=7)


class KillableDropoutTrainer(_KillableRun, ModalityDropoutTrainer_cardinality):
    """Modality dropout (the base's sampler alone)."""

    sampling = _seeded(ModalityDropoutTrainer_cardinality.sampling)


class KillableMSTKDTrainer(_KillableRun, MSTKDTrainer_small):
    """MST-KD: a jointly trained teacher and a discriminator with its own Adam."""

    sampling = _seeded(MSTKDTrainer_small.sampling)


class KillableCCSDTrainer(_KillableRun, CCSDTrainer_small):
    """CCSD: one shared-specific network; the level and the path are drawn from the subset sampler."""

    sampling = _seeded(CCSDTrainer_small.sampling)


class KillableDeMoSegTrainer(_KillableRun, DeMoSegTrainer_small):
    """DeMoSeg: the subsets drawn per sample are told to the network (RCR)."""

    sampling = _seeded(DeMoSegTrainer_small.sampling)


class KillableTwoPhaseDistillTrainer(_KillableRun, TwoPhaseDistillTrainer):
    """Two-phase: 3 epochs, the snapshot taken at the start of epoch 1, so the checkpoint at the end of epoch 1
    holds it and a kill in epoch 2 happens in phase 2."""

    budget = {"num_epochs": 3, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
    sampling = _seeded(TwoPhaseDistillTrainer.sampling)
    teacher = replace(TwoPhaseDistillTrainer.teacher, switch=1 / 3)


class OutOfMemoryNetwork(nn.Module):
    """The planned network on a GPU too small for it: every forward runs out of memory. Keeps the network's decoder,
    whose ``deep_supervision`` nnU-Net toggles."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.decoder = network.decoder

    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 10.75 GiB total "
                                          "capacity; 9.80 GiB already allocated)")


class OutOfMemoryDropoutTrainer(ModalityDropoutTrainer):
    """Modality dropout whose network runs out of GPU memory in the first training step."""

    budget = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}

    @staticmethod
    def build_network_architecture(*args, **kwargs) -> nn.Module:
        return OutOfMemoryNetwork(ModalityDropoutTrainer.build_network_architecture(*args, **kwargs))
