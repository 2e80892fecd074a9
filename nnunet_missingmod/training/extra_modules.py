"""Modules a method trains or uses beside ``self.network`` (a teacher, a discriminator), treated as nnU-Net treats
its network: built in ``initialize()`` before the optimisers, compiled when nnU-Net compiles, DDP-wrapped under DDP,
``train()``/``eval()`` with the epochs, deep supervision toggled with the network's, saved and restored.

A module either joins the main optimiser (a jointly trained teacher), or has its own optimiser, LR schedule and grad
scaler (a discriminator), or is frozen (a pre-trained teacher). :class:`ExtraModuleLifecycle` is the trainer mixin
that owns this; a method declares its modules in ``build_extra_modules``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.amp import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

TEACHER = "teacher"
"""Name of the teacher among the extra modules."""


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


@dataclass
class ExtraModule:
    """A module the trainer owns beside ``self.network`` (see ``build_extra_modules``).

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


def wrap_for_ddp(module: nn.Module, device: torch.device, local_rank: int) -> nn.Module:
    """DDP with synchronised batch norms, as nnunetv2 2.8.1 ``nnUNetTrainer.initialize`` wraps its network."""
    device_ids = [local_rank] if device.type == 'cuda' else None
    return DDP(nn.SyncBatchNorm.convert_sync_batchnorm(module), device_ids=device_ids)


class ExtraModuleLifecycle:
    """Trainer mixin: the extra modules' state and lifecycle. ``initialize()`` (``nnunet_copies.NnUNetCopies``) calls
    :meth:`build_extra_modules_on_device`, :meth:`compile_extra_modules`, :meth:`configure_extra_optimizers` and,
    under DDP, :meth:`wrap_modules_for_ddp` at the points where nnU-Net treats its network the same way."""

    def init_extra_modules(self) -> None:
        self.extra_specs: Dict[str, ExtraModule] = {}
        self.extra_modules: Dict[str, nn.Module] = {}
        self.extra_optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.extra_lr_schedulers: Dict[str, Any] = {}
        self.extra_grad_scalers: Dict[str, Any] = {}

    def build_extra_modules(self) -> Dict[str, ExtraModule]:
        """Modules beside ``self.network`` (e.g. ``{"teacher": ExtraModule(...), "discriminator": ...}``).

        Called once in ``initialize()`` after the network is built (``self.num_input_channels``,
        ``self.plans_manager``, ``self.configuration_manager`` and ``self.label_manager`` are set) and before the
        optimisers; build them on the CPU freely, they are moved to the device. The default has none.
        """
        return {}

    def build_extra_modules_on_device(self) -> None:
        self.extra_specs = dict(self.build_extra_modules())
        self.extra_modules = {}
        for name, spec in self.extra_specs.items():
            module = spec.module.to(self.device)
            if not spec.trainable:
                module.requires_grad_(False)
                module.eval()
            self.extra_modules[name] = module

    def compile_extra_modules(self) -> None:
        self.extra_modules = {name: torch.compile(m) for name, m in self.extra_modules.items()}

    def configure_extra_optimizers(self) -> None:
        for name, spec in self.extra_specs.items():
            if not spec.trainable or spec.optimizer is None:
                continue
            optimizer = spec.optimizer(self.extra_modules[name].parameters())
            self.extra_optimizers[name] = optimizer
            if spec.lr_scheduler is not None:
                self.extra_lr_schedulers[name] = spec.lr_scheduler(optimizer)
            self.extra_grad_scalers[name] = GradScaler("cuda") if self.device.type == 'cuda' else None

    def jointly_optimised_parameters(self) -> List[nn.Parameter]:
        """What the main optimiser updates and ``train_step`` clips: the network and the extra modules that join it."""
        params = list(self.network.parameters())
        for name, spec in self.extra_specs.items():
            if spec.joins_main_optimizer:
                params += list(self.extra_modules[name].parameters())
        return params

    def wrap_modules_for_ddp(self) -> None:
        """DDP-wrap the network and every trainable extra module, and rebuild the loss, which depends on
        ``is_ddp``. ``initialize()`` calls it under DDP; tests call it on the CPU."""
        self.network = wrap_for_ddp(self.network, self.device, self.local_rank)
        for name, spec in self.extra_specs.items():
            if spec.trainable:
                self.extra_modules[name] = wrap_for_ddp(self.extra_modules[name], self.device, self.local_rank)
        self.loss = self._build_loss()

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        for name, spec in self.extra_specs.items():
            if spec.deep_supervision:
                unwrap_network(self.extra_modules[name]).decoder.deep_supervision = enabled

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for name, spec in self.extra_specs.items():
            self.extra_modules[name].train(spec.trainable)
        for scheduler in self.extra_lr_schedulers.values():
            scheduler.step(self.current_epoch)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        for module in self.extra_modules.values():
            module.eval()

    # ------------------------------------------------------------------ checkpoint state
    def extra_modules_state(self) -> dict:
        return {
            "modules": {name: unwrap_network(m).state_dict() for name, m in self.extra_modules.items()},
            "optimizers": {name: o.state_dict() for name, o in self.extra_optimizers.items()},
            "grad_scalers": {name: s.state_dict() for name, s in self.extra_grad_scalers.items() if s is not None},
        }

    def check_extra_modules_state(self, state: Optional[dict], where: str, key: str) -> None:
        """Raise before anything is loaded when ``state`` (the checkpoint's ``key``) cannot restore our modules."""
        if state is None:
            if self.extra_modules:
                raise RuntimeError(f"{where} has no {key!r}: it was not written by {type(self).__name__}, whose "
                                   f"modules {sorted(self.extra_modules)} it must restore")
            return
        missing = set(self.extra_modules) - set(state["modules"])
        if missing:
            raise RuntimeError(f"{where} lacks the state of extra modules {sorted(missing)}")

    def load_extra_modules_state(self, state: dict) -> None:
        for name, module in self.extra_modules.items():
            unwrap_network(module).load_state_dict(state["modules"][name])
        for name, optimizer in self.extra_optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.extra_grad_scalers.items():
            if scaler is not None and name in state["grad_scalers"]:
                scaler.load_state_dict(state["grad_scalers"][name])
