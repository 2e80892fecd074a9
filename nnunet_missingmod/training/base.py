"""The base trainer that owns the missing-modality mechanism; method trainers are thin subclasses.

What it owns (subclasses configure it through class attributes and a few hooks):

* the dataset's channel → modality mapping (from ``dataset.json``, through :mod:`nnunet_missingmod.modalities`);
* one subset per sample, drawn on the device in ``train_step`` after augmentation from
  :meth:`~MissingModalityTrainerBase.subset_weights` (a curriculum is an override of that method), so a missing
  channel is exactly 0 in normalised space, as the predictor zero-fills it;
* **extra modules** (a teacher, a discriminator) declared by :meth:`~MissingModalityTrainerBase.build_extra_modules`
  and treated as nnU-Net treats ``self.network``: built in ``initialize()`` before the optimisers, compiled when
  nnU-Net compiles, DDP-wrapped under DDP, ``train()``/``eval()`` with the epochs, deep supervision toggled, saved
  and restored. A module either joins the main optimiser (a jointly trained teacher), or has its own optimiser,
  LR schedule and grad scaler (a discriminator), or is frozen (a pre-trained teacher);
* the training step: ``compute_loss_terms`` (the method's losses, under autocast), the main optimiser step (AMP,
  gradient clipping), then one step per extra module with its own optimiser (``extra_module_loss``), which receives
  what the main step computed (``StepResult.context``, e.g. the fused maps a discriminator judges); running out of
  GPU memory in it ends ``nnUNetv2_train`` with one message (:class:`TrainingOutOfMemory`);
* logging: every term a method returns is logged per epoch as ``train_<term>`` and plotted;
* checkpoints: ``network_weights`` is always the inference network, so stock ``nnUNetv2_predict`` keeps working;
  everything else of ours lives under one key (:data:`CHECKPOINT_EXTRA_KEY`) that cannot overwrite nnU-Net's keys;
* a frozen **teacher** (``teacher_source``): a finished run's network (``nnUNet_missingmod_teacher``), or a
  snapshot of the run's own network taken at a switch epoch (two-phase training), distilled into the student on
  every sample (:meth:`~MissingModalityTrainerBase.teacher_distillation`);
* training budgets: every concrete subclass ``X`` gets one sibling per entry of :data:`BUDGETS` (``X_debug``,
  ``X_demoSmall``, ``X_demoMedium``, ``X_demoLarge``), so no variant is written by hand.

The ``__init__`` signature must stay exactly nnU-Net's: it records its arguments by introspection.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_missingmod import __version__
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.io_checks import atomic_output, is_out_of_memory, training_out_of_memory_message
from nnunet_missingmod.modalities import (
    SUBSETS, apply_channel_mask, check_subset_weights, modalities_from_channel_names, sample_subset_indices,
    subset_channel_masks, subset_distribution)
from nnunet_missingmod.training.distillation import (
    TEACHER_ENV, build_network_of_run, check_teacher_fits, deep_supervision_weights, float32_autocast_off,
    full_resolution, load_finished_run, load_network_weights, logit_kl, plain_weights, soft_dice_loss)
from nnunet_missingmod.training.budgets import BUDGET_VARIANTS, BUDGETS, DEBUG_SUFFIX  # noqa: F401 (re-exported)
from nnunet_missingmod.training.logging import LossTermLocalLogger, loss_term_key
from nnunet_missingmod.training.registry import register_trainer

CHECKPOINT_CONFIG_KEY = "missingmod_config"
CHECKPOINT_EXTRA_KEY = "missingmod_extra"
"""All training state of ours beyond nnU-Net's keys: extra modules, their optimisers and scalers, the subset
sampler's generator, and the method's own state (``extra_checkpoint_state``)."""


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and ``torch.compile`` wrappers."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Use ``module`` without accumulating gradients into its parameters (gradients still flow to its input), e.g.
    the discriminator inside the generator's adversarial loss. Yields the plain module: a forward through the DDP
    wrapper would expect gradients for parameters that get none."""
    plain = unwrap_network(module)
    flags = [p.requires_grad for p in plain.parameters()]
    for p in plain.parameters():
        p.requires_grad_(False)
    try:
        yield module if isinstance(module, OptimizedModule) else plain
    finally:
        for p, flag in zip(plain.parameters(), flags):
            p.requires_grad_(flag)


_ALIASED_STORAGE_ERROR = "view the same data as different types"


class SwitchAnnealedPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule with phase 1 annealed on its own: before ``switch_epoch`` the learning rate is
    ``initial_lr · (1 − epoch / switch_epoch)^0.9``, from the switch on it is nnU-Net's
    ``initial_lr · (1 − epoch / max_steps)^0.9``. Stepped with the epoch as nnU-Net steps its scheduler, so it has
    no state to checkpoint (``--c`` resumes it from the epoch)."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, switch_epoch: int, exponent: float = 0.9):
        if not 0 < switch_epoch < max_steps:
            raise ValueError(f"the switch epoch must lie inside the run's {max_steps} epochs, got {switch_epoch}")
        self.switch_epoch = switch_epoch
        super().__init__(optimizer, initial_lr, max_steps, exponent)

    def step(self, current_step=None):
        # copied from nnU-Net 2.8.1's PolyLRScheduler.step; only the horizon before the switch differs
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        if current_step < self.switch_epoch:
            new_lr = self.initial_lr * (1 - current_step / self.switch_epoch) ** self.exponent
        else:
            new_lr = self.initial_lr * (1 - current_step / self.max_steps) ** self.exponent
        for param_group in self.optimizer.param_groups:
            param_group['lr'] = new_lr
        self._last_lr = [group['lr'] for group in self.optimizer.param_groups]


def write_checkpoint(checkpoint: dict, filename: str) -> None:
    """``torch.save(checkpoint, filename)``, written atomically: a crash or a failed save during training leaves the
    previous ``checkpoint_latest.pth`` as it was (nnU-Net 2.8.1 writes in place, and ``--c`` then fails on a
    half-written file).

    ``torch.save`` refuses two tensors whose storages start at one address with different dtypes (pytorch#91325;
    e.g. a method state holding ``t`` and ``t.view(torch.int32)``). Rather than lose a run at an epoch end, that
    one error is answered by saving private copies of the tensors: the same values, without the sharing between
    them, which nothing of ours relies on."""
    with atomic_output(filename) as tmp:
        try:
            torch.save(checkpoint, tmp)
        except RuntimeError as e:
            if _ALIASED_STORAGE_ERROR not in str(e):
                raise
            print(f"torch.save refused aliased tensors in {filename} ({e}); saving copies of the tensors instead",
                  file=sys.stderr)
            torch.save(map_tensors(lambda t: t.detach().clone(), checkpoint), tmp)


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree):
    """``tree`` (nested dicts, lists, tuples; other leaves kept) with every tensor ``t`` replaced by ``fn(t)``."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((k, map_tensors(fn, v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree


TEACHER = "teacher"
"""Name of the teacher among the extra modules (the base's frozen teacher, or a method's own)."""
_TEACHER_SOURCES = (None, "checkpoint", "snapshot")


VERBOSE_ENV = "nnUNet_missingmod_verbose"
"""``1``: a training step that runs out of GPU memory prints its traceback before the message (``nnUNetv2_train``
has no ``--verbose``)."""


class TrainingOutOfMemory(SystemExit):
    """The GPU ran out of memory in a training step; ``message`` says what ran and the fixes in order. A
    ``SystemExit`` (code 2, as our commands on bad input): nnU-Net's ``nnUNetv2_train`` has no error handling of its
    own, and Python ends on a ``SystemExit`` without a traceback; the message is printed before it is raised."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(self.exit_code)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class ExtraModule:
    """A module the base trainer owns beside ``self.network`` (see ``build_extra_modules``).

    * ``optimizer``: ``None`` → its parameters join the main optimiser (nnU-Net's SGD and poly schedule; e.g. the
      jointly trained MST-KDNet teacher); a factory ``params -> torch.optim.Optimizer`` → its own optimiser, its
      own grad scaler on CUDA, stepped after the main step with the loss of ``extra_module_loss``.
    * ``lr_scheduler``: optional factory ``optimizer -> scheduler`` for an own optimiser; stepped each epoch with
      ``scheduler.step(epoch)`` like nnU-Net's.
    * ``trainable``: ``False`` → frozen: always in eval mode, no gradients, no optimiser, not DDP-wrapped.
    * ``deep_supervision``: toggled together with the network's (the module has ``decoder.deep_supervision``).
    """

    module: nn.Module
    optimizer: Optional[Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]] = None
    lr_scheduler: Optional[Callable[[torch.optim.Optimizer], Any]] = None
    trainable: bool = True
    deep_supervision: bool = False

    @property
    def joins_main_optimizer(self) -> bool:
        return self.trainable and self.optimizer is None


@dataclass
class MaskedBatch:
    """One augmented training batch and the subsets drawn for it.

    * ``data``: (B, C, *patch) normalised, all channels present (a teacher's input);
    * ``channel_mask``: (B, C) bool, ``True`` = the sample keeps that channel;
    * ``subset_indices``: (B,) long, each sample's subset as an index into ``modalities.SUBSETS``;
    * ``target``: nnU-Net's target (a list over deep-supervision scales, or a tensor).
    """

    data: torch.Tensor
    channel_mask: torch.Tensor
    subset_indices: torch.Tensor
    target: Union[torch.Tensor, List[torch.Tensor]]

    @property
    def masked_data(self) -> torch.Tensor:
        """(B, C, *patch): ``data`` with each sample's missing channels zeroed (a student's input)."""
        return apply_channel_mask(self.data, self.channel_mask)


@dataclass
class StepResult:
    """What a loss hook returns: ``loss`` to back-propagate, ``terms`` to log (names listed in ``loss_terms``),
    ``context`` handed to the next hook (e.g. detached fused maps for the discriminator)."""

    loss: torch.Tensor
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)
    context: Dict[str, Any] = field(default_factory=dict)


class MissingModalityTrainerBase(nnUNetTrainer):
    """Stock nnU-Net training where each sample sees a random subset of the MRI sequences.

    Class attributes (set them in thin subclasses whose names say what they change):

    * ``subset_sampling``: ``"uniform"`` over the 15 subsets, full set included (MST-KDNet's official code), or
      ``"cardinality"``: number of sequences uniform in 1..4, then a subset of that size (ShaSpec).
    * ``full_set_probability``: ``None`` (the full set is just one of the candidates), or the probability that a
      sample keeps all sequences; the others then draw among the 14 proper subsets.
    * ``subset_seed``: ``None`` (a fresh seed per process, so DDP ranks draw different subsets) or an int for
      reproducible draws (rank r uses ``subset_seed + r``).
    * ``loss_terms``: names of the terms the hooks return in ``StepResult.terms`` (logged as ``train_<term>``).
    * ``budget``: overrides of nnU-Net's epoch and iteration counts (used by the generated ``_debug`` variants);
      an attribute nnU-Net does not have fails loudly.
    * ``nnunet_overrides``: other nnU-Net attributes set after its ``__init__`` (e.g. ``initial_lr``), checked
      the same way.

    The teacher (``teacher_source``; a frozen extra module named :data:`TEACHER`):

    * ``None``: no teacher of the base (a method may build its own);
    * ``"checkpoint"``: the network of the finished run named by ``nnUNet_missingmod_teacher`` (a fold folder or
      its checkpoint), of any trainer, stock ``nnUNetTrainer`` included, trained with the same plans and
      configuration; ``start_from_teacher`` = ``"strict"`` (the student starts from its weights and must have the
      same architecture), ``"matching"`` (from the weights whose names and shapes match) or ``None``;
    * ``"snapshot"`` (two-phase): the run trains on the full set until epoch ``teacher_switch_epoch()``
      (``teacher_switch`` × the epochs), copies its network into the teacher then, and draws subsets afterwards.
      With ``teacher_ema_momentum`` = m the teacher then follows the student after every step
      (``teacher ← m · teacher + (1 − m) · student``, a mean teacher) instead of staying frozen at the snapshot.
      With ``anneal_before_switch`` phase 1 has its own poly schedule that ends at the switch
      (:class:`SwitchAnnealedPolyLRScheduler`), so the snapshot is a converged model rather than one taken at half
      the learning rate; phase 2 follows nnU-Net's schedule as before.

    With ``distillation_weight > 0`` the default loss adds :meth:`teacher_distillation` on every sample while the
    teacher is active: a KL at ``distillation_temperature`` on the full-resolution output (per region for region
    outputs, over the classes for label outputs; τ² · voxel mean) and, with ``distillation_dice_weight > 0``, a
    soft Dice towards the teacher's probabilities, which weighs each region alike whatever its size. With
    ``distillation_every_scale`` both terms are taken at every deep-supervision scale, weighted as nnU-Net's loss
    weighs them (:func:`~nnunet_missingmod.training.distillation.deep_supervision_weights`).
    """

    subset_sampling: str = "uniform"
    full_set_probability: Optional[float] = None
    subset_seed: Optional[int] = None
    loss_terms: tuple = ()
    budget: Optional[Dict[str, int]] = None
    nnunet_overrides: Optional[Dict[str, Any]] = None
    teacher_source: Optional[str] = None
    teacher_switch: float = 0.5
    start_from_teacher: Optional[str] = None
    distillation_weight: float = 0.0
    distillation_temperature: float = 1.0
    distillation_dice_weight: float = 0.0
    distillation_every_scale: bool = False
    teacher_ema_momentum: Optional[float] = None
    anneal_before_switch: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.channel_modalities = modalities_from_channel_names(dataset_json["channel_names"])
        for source in ("budget", "nnunet_overrides"):
            for attribute, value in (getattr(self, source) or {}).items():
                if not hasattr(self, attribute):  # a renamed nnU-Net attribute must not silently train 1000 epochs
                    raise AttributeError(f"{type(self).__name__}.{source} sets {attribute!r}, which nnUNetTrainer "
                                         f"does not have ({source}: {getattr(self, source)})")
                setattr(self, attribute, value)
        self.logger.local_logger = LossTermLocalLogger(self.loss_terms)
        self.subset_generator = torch.Generator()
        if self.subset_seed is None:
            self.subset_generator.seed()
        else:
            self.subset_generator.manual_seed(self.subset_seed + self.local_rank)
        self.subset_masks = subset_channel_masks(self.channel_modalities, device=self.device)
        self.extra_specs: Dict[str, ExtraModule] = {}
        self.extra_modules: Dict[str, nn.Module] = {}
        self.extra_optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.extra_lr_schedulers: Dict[str, Any] = {}
        self.extra_grad_scalers: Dict[str, Any] = {}
        self._iteration_in_epoch = 0
        self.teacher_snapshot_epoch: Optional[int] = None  # the epoch whose start the snapshot was taken at
        if self.teacher_source not in _TEACHER_SOURCES:
            raise ValueError(f"{type(self).__name__}.teacher_source must be one of {_TEACHER_SOURCES}, got "
                             f"{self.teacher_source!r}")
        if self.start_from_teacher not in (None, "strict", "matching"):
            raise ValueError(f"{type(self).__name__}.start_from_teacher must be None, 'strict' or 'matching'")
        if self.anneal_before_switch and self.teacher_source != "snapshot":
            raise ValueError(f"{type(self).__name__}.anneal_before_switch needs teacher_source 'snapshot' (there is "
                             f"no switch otherwise), got {self.teacher_source!r}")
        if self.teacher_ema_momentum is not None and not (self.teacher_source == "snapshot"
                                                          and 0 <= self.teacher_ema_momentum < 1):
            raise ValueError(f"{type(self).__name__}.teacher_ema_momentum needs teacher_source 'snapshot' (the "
                             f"teacher must have the student's architecture) and a value in [0, 1), got "
                             f"{self.teacher_ema_momentum!r} with teacher_source {self.teacher_source!r}")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("nnunet_missingmod."):  # not subclasses written by users or tests
            register_trainer(cls)
        if cls.budget is None:  # budget variants are leaves: no X_debug_demoSmall
            for suffix, budget in BUDGET_VARIANTS.items():
                _define_budget_variant(cls, suffix, budget)

    # ------------------------------------------------------------------ subsets
    def subset_weights(self, epoch: int) -> torch.Tensor:
        """(15,) weights over :data:`~nnunet_missingmod.modalities.SUBSETS` for ``epoch`` (need not sum to 1).
        Override for a curriculum; the default follows ``subset_sampling`` and ``full_set_probability``, and draws
        only the full set before a snapshot teacher's switch epoch."""
        if self.teacher_source == "snapshot" and epoch < self.teacher_switch_epoch():
            return subset_distribution(self.subset_sampling, full_set_probability=1.0)
        return subset_distribution(self.subset_sampling, self.full_set_probability)

    def sample_subset_indices(self, batch_size: int) -> torch.Tensor:
        """(B,) long on the trainer's device: each sample's subset, drawn from ``subset_weights(current_epoch)``."""
        weights = self.subset_weights(self.current_epoch)
        return sample_subset_indices(batch_size, weights=weights, generator=self.subset_generator).to(self.device)

    def sample_channel_masks(self, batch_size: int) -> torch.Tensor:
        """(B, C) bool on the trainer's device: which channels each sample keeps."""
        return self.subset_masks[self.sample_subset_indices(batch_size)]

    def trainable_subsets(self) -> List[str]:
        """Names of the subsets the sampler can draw in some epoch of this training run."""
        drawable = torch.zeros(len(SUBSETS), dtype=torch.bool)
        for epoch in range(self.num_epochs):
            drawable |= check_subset_weights(self.subset_weights(epoch)) > 0
        return [s.name for s, ok in zip(SUBSETS, drawable.tolist()) if ok]

    # ------------------------------------------------------------------ extra modules
    def build_extra_modules(self) -> Dict[str, ExtraModule]:
        """Modules beside ``self.network`` (e.g. ``{"teacher": ExtraModule(...), "discriminator": ...}``).

        Called once in ``initialize()`` after the network is built (``self.num_input_channels``,
        ``self.plans_manager``, ``self.configuration_manager`` and ``self.label_manager`` are set) and before the
        optimisers; build on ``self.device``'s CPU side freely, the base moves them to the device. The default
        returns the base's frozen teacher when ``teacher_source`` is set; an override that wants it too calls
        ``super().build_extra_modules()``.
        """
        if self.teacher_source is None:
            return {}
        return {TEACHER: ExtraModule(self.build_teacher(), trainable=False, deep_supervision=True)}

    # ------------------------------------------------------------------ the teacher
    def teacher_switch_epoch(self) -> int:
        """The epoch at whose start a snapshot teacher is taken: ``teacher_switch`` of the epochs, rounded, at
        least 1 and at most the last epoch (a 1-epoch run snapshots at its start)."""
        return min(max(round(self.teacher_switch * self.num_epochs), 1), max(self.num_epochs - 1, 0))

    def build_teacher(self) -> nn.Module:
        """The frozen teacher's network. ``"snapshot"``: the student's architecture (weights copied at the switch).
        ``"checkpoint"``: the finished run's network, built by its own trainer class from its own plans and
        checked against ours; with ``start_from_teacher`` the student is loaded from it too."""
        if self.teacher_source == "snapshot":
            return self.build_network_architecture(
                self.plans_manager, self.configuration_manager, self.num_input_channels,
                self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        location = os.environ.get(TEACHER_ENV)
        if not location:
            raise MissingModError(f"{type(self).__name__} needs a finished run as its teacher: set {TEACHER_ENV} to "
                                  f"its fold folder or checkpoint_final.pth (train it with nnUNetv2_train ... -tr "
                                  f"{self.teacher_trainer_name()})")
        run = load_finished_run(location)
        check_teacher_fits(run, self.plans_manager.plans, self.configuration_name, self.dataset_json,
                           type(self).__name__, self.teacher_trainer_name())
        teacher = build_network_of_run(run, self.enable_deep_supervision)
        load_network_weights(teacher, run, f"the network of {run.trainer_name}", run.trainer_name, strict=True)
        self.check_teacher_network(teacher, run)
        if self.start_from_teacher is not None:
            loaded = load_network_weights(unwrap_network(self.network), run, f"{type(self).__name__}'s network",
                                          self.teacher_trainer_name(), strict=self.start_from_teacher == "strict")
            self.print_to_log_file(f"student starts from {len(loaded)} tensors of {run.path}")
        self.print_to_log_file(f"teacher: {run.describe()}")
        return teacher

    def check_teacher_network(self, teacher: nn.Module, run) -> None:
        """Refuse a checkpoint teacher that this method cannot use (e.g. one without the features it distils);
        raise :class:`MissingModError` naming ``run.path``, ``run.trainer_name`` and the trainer to use."""

    @classmethod
    def teacher_trainer_name(cls) -> str:
        """The trainer whose finished run this trainer's checkpoint teacher should come from."""
        return "nnUNetTrainer"

    def take_teacher_snapshot(self) -> None:
        """Copy the student's current weights into the frozen snapshot teacher."""
        unwrap_network(self.extra_modules[TEACHER]).load_state_dict(unwrap_network(self.network).state_dict())
        self.teacher_snapshot_epoch = self.current_epoch
        self.print_to_log_file(f"teacher snapshot taken at the start of epoch {self.current_epoch}; subsets are "
                               f"drawn from now on")

    @torch.no_grad()
    def update_ema_teacher(self) -> None:
        """``teacher ← m · teacher + (1 − m) · student`` for every parameter (m = ``teacher_ema_momentum``); buffers
        are copied. Called after each optimiser step of phase 2; identical on every DDP rank, whose students are."""
        keep = self.teacher_ema_momentum
        student = dict(unwrap_network(self.network).named_parameters())
        for name, weight in unwrap_network(self.extra_modules[TEACHER]).named_parameters():
            weight.lerp_(student[name].detach(), 1 - keep)
        student_buffers = dict(unwrap_network(self.network).named_buffers())
        for name, buffer in unwrap_network(self.extra_modules[TEACHER]).named_buffers():
            buffer.copy_(student_buffers[name])

    def teacher_active(self) -> bool:
        """Whether the base's teacher distils in this step (a snapshot teacher only after its switch)."""
        if self.teacher_source == "snapshot":
            return self.teacher_snapshot_epoch is not None
        return self.teacher_source is not None

    def teacher_distillation(self, teacher_output, student_output) -> StepResult:
        """The base's distillation from the teacher's to the student's full-resolution output, on every sample.

        ``loss = distillation_weight · τ² · mean KL + distillation_dice_weight · (1 − soft Dice)``, the KL per
        region (Bernoulli) for region outputs, over the classes for label outputs; the soft Dice
        (:func:`~nnunet_missingmod.training.distillation.soft_dice_loss`, per region or foreground class) compares
        the student's probabilities with the teacher's. Both are 0 when the outputs agree. With
        ``distillation_every_scale`` (and deep-supervision lists) each term is the weighted sum over the scales,
        with nnU-Net's weights; otherwise it is taken on the full-resolution output only.
        Terms are float32 (autocast off). Returns the weighted loss and the unweighted terms ``distill_kl`` and
        ``distill_dice``.
        """
        regions = self.label_manager.has_regions
        tau = self.distillation_temperature
        if self.distillation_every_scale and isinstance(student_output, (list, tuple)):
            pairs = list(zip(teacher_output, student_output))
            weights = deep_supervision_weights(len(pairs))
        else:
            pairs, weights = [(full_resolution(teacher_output), full_resolution(student_output))], [1.0]
        kl = dice = 0.0
        for weight, (teacher_logits, student_logits) in zip(weights, pairs):
            if weight == 0:
                continue
            teacher_logits = teacher_logits.detach()
            kl = kl + weight * logit_kl(teacher_logits, student_logits, regions=regions,
                                        temperature=tau).mean() * tau * tau
            with float32_autocast_off(student_logits):
                dice = dice + weight * soft_dice_loss(teacher_logits.float(), student_logits.float(), regions=regions)
        loss = self.distillation_weight * kl + self.distillation_dice_weight * dice
        return StepResult(loss, {"distill_kl": kl.detach(), "distill_dice": dice.detach()})

    def jointly_optimised_parameters(self) -> List[nn.Parameter]:
        """What the main optimiser updates and ``train_step`` clips: the network and the extra modules that join it."""
        params = list(self.network.parameters())
        for name, spec in self.extra_specs.items():
            if spec.joins_main_optimizer:
                params += list(self.extra_modules[name].parameters())
        return params

    def initialize(self):
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.initialize, which builds, compiles, configures the optimiser of and
        # DDP-wraps self.network in one method, leaving no place for the extra modules. Added: the extra modules get
        # the same treatment in the same order; the DDP wrap is one method (wrap_modules_for_ddp) that tests call on
        # the CPU. The old build_network_architecture signature (deprecated in 2.8.1) is not supported.
        if self.was_initialized:
            raise RuntimeError("You have called self.initialize even though the trainer was already initialized. "
                               "That should not happen.")
        self._set_batch_size_and_oversample()
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        self.network = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision).to(self.device)
        self.extra_specs = dict(self.build_extra_modules())
        self.extra_modules = {}
        for name, spec in self.extra_specs.items():
            module = spec.module.to(self.device)
            if not spec.trainable:
                module.requires_grad_(False)
                module.eval()
            self.extra_modules[name] = module
        if self._do_i_compile():
            self.print_to_log_file('Using torch.compile...')
            self.network = torch.compile(self.network)
            self.extra_modules = {name: torch.compile(m) for name, m in self.extra_modules.items()}

        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self._configure_extra_optimizers()
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

    def configure_optimizers(self):
        # nnunetv2 2.8.1 nnUNetTrainer.configure_optimizers (SGD, Nesterov 0.99, poly), over the network and the
        # extra modules that join the main optimiser.
        optimizer = torch.optim.SGD(self.jointly_optimised_parameters(), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        if self.anneal_before_switch:
            return optimizer, SwitchAnnealedPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                                            self.teacher_switch_epoch())
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _configure_extra_optimizers(self) -> None:
        from torch.amp import GradScaler
        for name, spec in self.extra_specs.items():
            if not spec.trainable or spec.optimizer is None:
                continue
            optimizer = spec.optimizer(self.extra_modules[name].parameters())
            self.extra_optimizers[name] = optimizer
            if spec.lr_scheduler is not None:
                self.extra_lr_schedulers[name] = spec.lr_scheduler(optimizer)
            self.extra_grad_scalers[name] = GradScaler("cuda") if self.device.type == 'cuda' else None

    def wrap_modules_for_ddp(self) -> None:
        """DDP-wrap the network and every trainable extra module (as nnunetv2 2.8.1 wraps the network), and rebuild
        the loss, which depends on ``is_ddp``. ``initialize()`` calls it under DDP; tests call it on the CPU."""
        device_ids = [self.local_rank] if self.device.type == 'cuda' else None

        def wrap(module):
            return DDP(nn.SyncBatchNorm.convert_sync_batchnorm(module), device_ids=device_ids)
        self.network = wrap(self.network)
        for name, spec in self.extra_specs.items():
            if spec.trainable:
                self.extra_modules[name] = wrap(self.extra_modules[name])
        self.loss = self._build_loss()

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        for name, spec in self.extra_specs.items():
            if spec.deep_supervision:
                unwrap_network(self.extra_modules[name]).decoder.deep_supervision = enabled

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0
        if self.teacher_source == "snapshot" and self.teacher_snapshot_epoch is None \
                and self.current_epoch >= self.teacher_switch_epoch():
            self.take_teacher_snapshot()
        for name, spec in self.extra_specs.items():
            self.extra_modules[name].train(spec.trainable)
        for scheduler in self.extra_lr_schedulers.values():
            scheduler.step(self.current_epoch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        for module in self.extra_modules.values():
            module.eval()

    # ------------------------------------------------------------------ the training step
    def compute_loss_terms(self, batch: MaskedBatch) -> StepResult:
        """The hook a method overrides. Runs under autocast on CUDA; compute small terms in float32.

        The default is modality dropout: the network on the masked batch, nnU-Net's loss, plus the teacher's
        distillation (:meth:`teacher_distillation`) when the trainer has one and ``distillation_weight`` or
        ``distillation_dice_weight`` is set.
        """
        output = self.network(batch.masked_data)
        loss = self.loss(output, batch.target)
        if not self.distils_from_teacher():
            return StepResult(loss=loss)
        if not self.teacher_active():  # phase 1 of two-phase training: logged as zeros
            zero = loss.detach().new_zeros(())
            return StepResult(loss, {"distill_kl": zero, "distill_dice": zero})
        with torch.no_grad():
            teacher_output = self.extra_modules[TEACHER](batch.data)
        distilled = self.teacher_distillation(teacher_output, output)
        return StepResult(loss + distilled.loss, distilled.terms)

    def distils_from_teacher(self) -> bool:
        """Whether the default loss adds the base teacher's distillation."""
        return self.teacher_source is not None and (self.distillation_weight > 0 or
                                                    self.distillation_dice_weight > 0)

    def extra_module_loss(self, name: str, batch: MaskedBatch, context: Dict[str, Any]) -> StepResult:
        """Loss of an extra module that has its own optimiser (e.g. the discriminator), computed after the main
        step under autocast. ``context`` is ``StepResult.context`` of :meth:`compute_loss_terms`."""
        raise NotImplementedError(f"{type(self).__name__} declares extra module {name!r} with its own optimiser "
                                  f"but does not override extra_module_loss")

    def train_step(self, batch: dict) -> dict:
        try:
            return self._train_step(batch)
        except Exception as e:  # running out of GPU memory ends the run with one message, anything else as before
            if not is_out_of_memory(e):
                raise
            raise self._training_out_of_memory() from None

    def _training_out_of_memory(self) -> TrainingOutOfMemory:
        """Print the one message for running out of GPU memory in a training step (stderr and the training log;
        the traceback before it only with ``nnUNet_missingmod_verbose=1``) and return the exit that ends
        ``nnUNetv2_train`` with it."""
        if os.environ.get(VERBOSE_ENV, "0") not in ("", "0"):
            traceback.print_exc()
        names = [f"a {name}" for name in sorted(self.extra_modules)]
        extra_models = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
        message = training_out_of_memory_message(
            self.configuration_manager.patch_size, self.batch_size, self.plans_manager.dataset_name,
            self.configuration_name, self.plans_manager.plans_name, extra_models)
        self.print_to_log_file(message, also_print_to_console=False)
        print(f"nnUNetv2_train: error: {message}", file=sys.stderr, flush=True)
        return TrainingOutOfMemory(message)

    def _train_step(self, batch: dict) -> dict:
        # Same order of operations as nnunetv2 2.8.1 nnUNetTrainer.train_step, with the forward and loss delegated
        # to compute_loss_terms, the subsets drawn on the device, and the extra modules' own steps afterwards.
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        subset_indices = self.sample_subset_indices(data.shape[0])
        masked = MaskedBatch(data, self.subset_masks[subset_indices], subset_indices, target)

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            result = self.compute_loss_terms(masked)
        self._backward_and_step(result.loss, self.optimizer, self.grad_scaler, self.jointly_optimised_parameters())
        if self.teacher_ema_momentum is not None and self.teacher_active():
            self.update_ema_teacher()
        logged = {"loss": result.loss, **result.terms}
        for name, optimizer in self.extra_optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                extra = self.extra_module_loss(name, masked, result.context)
            self._backward_and_step(extra.loss, optimizer, self.extra_grad_scalers[name], None)
            logged.update(extra.terms)
        self._iteration_in_epoch += 1
        return {name: value.detach().float().cpu().numpy() for name, value in logged.items()}

    @staticmethod
    def _backward_and_step(loss, optimizer, grad_scaler, clipped_parameters) -> None:
        """Backward, optional clipping at nnU-Net's norm 12, step; through the grad scaler on CUDA."""
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
            if clipped_parameters is not None:
                torch.nn.utils.clip_grad_norm_(clipped_parameters, 12)
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            if clipped_parameters is not None:
                torch.nn.utils.clip_grad_norm_(clipped_parameters, 12)
            optimizer.step()

    cpu_autocast_dtype: Optional[torch.dtype] = None
    """``None`` (default, as nnU-Net): no autocast on the CPU. ``torch.bfloat16``: the training step runs under CPU
    autocast in bfloat16, so tests on a machine without a GPU exercise the mixed-precision path of CUDA AMP (same
    casts, a half-precision dtype with fewer mantissa bits than float16; no grad scaler is needed for it)."""

    def autocast(self):
        """Autocast on CUDA (float16, as nnU-Net); on the CPU only when ``cpu_autocast_dtype`` is set (slow there;
        unsupported on MPS)."""
        if self.device.type == 'cuda':
            return torch.autocast(self.device.type, enabled=True)
        if self.device.type == 'cpu' and self.cpu_autocast_dtype is not None:
            return torch.autocast('cpu', dtype=self.cpu_autocast_dtype)
        return dummy_context()

    def training_progress(self) -> float:
        """Fraction of the planned iterations done before the current one, in [0, 1) (for ramp-ups expressed
        relative to the training length). Counts iterations that ran in this process; resume restores the epoch."""
        done = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        return min(done / max(self.num_epochs * self.num_iterations_per_epoch, 1), 1.0)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.loss_terms:
            return
        outputs = collate_outputs(train_outputs)
        for term in self.loss_terms:
            value = self._mean_over_ranks(outputs[term])
            self.logger.log(loss_term_key(term), value, self.current_epoch)
            self.print_to_log_file(loss_term_key(term), f"{value:.4g}")  # 4 significant digits: 1e-8 terms show

    def _mean_over_ranks(self, values) -> float:
        if not self.is_ddp:
            return float(np.mean(values))
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, values)
        return float(np.vstack(gathered).mean())

    # ------------------------------------------------------------------ checkpoints
    def extra_checkpoint_state(self) -> dict:
        """The method's own training-only state (beyond its extra modules, which the base saves)."""
        return {}

    def load_extra_checkpoint_state(self, state: dict) -> None:
        """Restore what :meth:`extra_checkpoint_state` saved."""

    def missingmod_config(self) -> dict:
        """How this model was trained for missing sequences. Written into every checkpoint for people and tools
        that inspect it; inference does not depend on it (the predictor reads only ``trainer_name`` and
        ``network_weights``, as nnU-Net does)."""
        return {
            "package_version": __version__,
            "trainer": type(self).__name__,
            "channel_modalities": list(self.channel_modalities),
            "subset_sampling": self.subset_sampling,
            "full_set_probability": self.full_set_probability,
            "trained_subsets": self.trainable_subsets(),
            "extra_modules": sorted(self.extra_specs),
            "teacher_source": self.teacher_source,
            "teacher_ema_momentum": self.teacher_ema_momentum,
            "anneal_before_switch": self.anneal_before_switch,
        }

    def _extra_state(self) -> dict:
        return {
            "modules": {name: unwrap_network(m).state_dict() for name, m in self.extra_modules.items()},
            "optimizers": {name: o.state_dict() for name, o in self.extra_optimizers.items()},
            "grad_scalers": {name: s.state_dict() for name, s in self.extra_grad_scalers.items() if s is not None},
            "subset_generator": self.subset_generator.get_state(),
            "teacher_snapshot_epoch": self.teacher_snapshot_epoch,
            "method": self.extra_checkpoint_state(),
        }

    def save_checkpoint(self, filename: str) -> None:
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.save_checkpoint (it builds and saves the dict in one go, so
        # there is no hook for extra keys); added: the missingmod config and our extra state under one key, and the
        # file is written by write_checkpoint (atomically) instead of torch.save.
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
                    CHECKPOINT_EXTRA_KEY: self._extra_state(),
                }
                write_checkpoint(checkpoint, filename)
            else:
                self.print_to_log_file('No checkpoint written, checkpointing is disabled')

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        # Copied from nnunetv2 2.8.1 nnUNetTrainer.load_checkpoint (which raises UnboundLocalError for a dict and
        # would make us read the file twice); added: the extra state, read from the same loaded dict.
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        extra = self._checked_extra_state(checkpoint, filename_or_checkpoint)  # before anything is changed
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
            self._load_extra_state(extra)

    def _checked_extra_state(self, checkpoint: dict, source) -> Optional[dict]:
        where = source if isinstance(source, str) else "the checkpoint"
        extra = checkpoint.get(CHECKPOINT_EXTRA_KEY)
        if extra is None:
            if self.extra_modules:
                raise RuntimeError(f"{where} has no {CHECKPOINT_EXTRA_KEY!r}: it was not written by "
                                   f"{type(self).__name__}, whose modules {sorted(self.extra_modules)} it must restore")
            return None
        missing = set(self.extra_modules) - set(extra["modules"])
        if missing:
            raise RuntimeError(f"{where} lacks the state of extra modules {sorted(missing)}")
        return extra

    def _load_extra_state(self, extra: dict) -> None:
        for name, module in self.extra_modules.items():
            unwrap_network(module).load_state_dict(extra["modules"][name])
        for name, optimizer in self.extra_optimizers.items():
            optimizer.load_state_dict(extra["optimizers"][name])
        for name, scaler in self.extra_grad_scalers.items():
            if scaler is not None and name in extra["grad_scalers"]:
                scaler.load_state_dict(extra["grad_scalers"][name])
        self.subset_generator.set_state(extra["subset_generator"])
        self.teacher_snapshot_epoch = extra.get("teacher_snapshot_epoch")
        self.load_extra_checkpoint_state(extra["method"])


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
