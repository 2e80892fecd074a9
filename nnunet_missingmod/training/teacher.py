"""A finished run used as a teacher or a starting point: resolve the path, read the checkpoint, check that it fits
the student's data, build its network with its own trainer class and load its weights, each with one clear error
naming the file, its trainer and the trainer to use.

* :func:`load_finished_run`: a finished run's checkpoint (fold folder or ``.pth``), with the trainer and plans it
  came from;
* :func:`check_teacher_fits`, :func:`build_network_of_run`, :func:`load_network_weights`: whether the run fits the
  student's data, its network, and its weights loaded into a network, strictly or where names and shapes match;
* :func:`load_checkpoint_teacher`: all of it for a trainer whose teacher is ``nnUNet_missingmod_teacher``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.extra_modules import unwrap_network
from nnunet_missingmod.training.naming import trainer_registry

TEACHER_ENV = "nnUNet_missingmod_teacher"
"""Environment variable naming the finished run (a fold folder such as ``.../fold_0``, or its
``checkpoint_final.pth``) that a trainer with a checkpoint teacher loads."""
CHECKPOINT_FILENAME = "checkpoint_final.pth"
START_FROM_TEACHER = (None, "strict", "matching")
_INIT_ARGS = ("plans", "configuration", "dataset_json")


@dataclass
class FinishedRun:
    """A finished run's checkpoint: ``path`` (the ``.pth`` file), ``trainer_name``, its ``plans``,
    ``configuration`` and ``dataset_json`` (nnU-Net's ``init_args``), and its ``network_weights``."""

    path: str
    trainer_name: str
    plans: Dict[str, Any]
    configuration: str
    dataset_json: Dict[str, Any]
    network_weights: Dict[str, torch.Tensor]

    @property
    def plans_name(self) -> str:
        return self.plans.get("plans_name", "?")

    def describe(self) -> str:
        return f"{self.path} (trainer {self.trainer_name}, plans {self.plans_name}, configuration {self.configuration})"


def resolve_checkpoint_path(path: str, variable: str = TEACHER_ENV) -> str:
    """``path`` itself if it is a file, ``path/checkpoint_final.pth`` if it is a fold folder; else one error."""
    if os.path.isdir(path):
        candidate = os.path.join(path, CHECKPOINT_FILENAME)
        if not os.path.isfile(candidate):
            raise MissingModError(f"{variable}={path}: the folder has no {CHECKPOINT_FILENAME} (name a fold folder "
                                  f"of a finished run, e.g. .../nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0)")
        return candidate
    if not os.path.isfile(path):
        raise MissingModError(f"{variable}={path}: no such checkpoint file or fold folder")
    return path


def load_finished_run(path: str, variable: str = TEACHER_ENV) -> FinishedRun:
    """Read the nnU-Net checkpoint at ``path`` (a file or a fold folder) on the CPU."""
    path = resolve_checkpoint_path(path, variable)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a file that is no checkpoint
        raise MissingModError(f"{variable}={path} is not a PyTorch checkpoint: {str(e).strip().splitlines()[0]}"
                              ) from None
    init = checkpoint.get("init_args") if isinstance(checkpoint, dict) else None
    if not isinstance(init, dict) or "network_weights" not in checkpoint or any(k not in init for k in _INIT_ARGS):
        raise MissingModError(f"{variable}={path} is not an nnU-Net checkpoint (it lacks 'network_weights' or "
                              f"'init_args' with {', '.join(_INIT_ARGS)}; name checkpoint_final.pth of a finished "
                              f"nnUNetv2_train run)")
    return FinishedRun(path=path, trainer_name=checkpoint.get("trainer_name", "?"), plans=init["plans"],
                       configuration=init["configuration"], dataset_json=init["dataset_json"],
                       network_weights=checkpoint["network_weights"])


def find_trainer_class(name: str) -> type:
    """The trainer class ``name``: one of ours, or nnU-Net's (its own lookup, as ``nnUNetv2_train`` uses)."""
    ours = trainer_registry().get(name)
    if ours is not None:
        return ours
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    found = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                        "nnunetv2.training.nnUNetTrainer")
    if found is None:
        raise MissingModError(f"trainer {name!r} (named by a teacher checkpoint) is neither nnU-Net's nor ours")
    return found


def build_network_of_run(run, enable_deep_supervision: bool) -> nn.Module:
    """The network of a finished run (:class:`FinishedRun`), built by its
    trainer class from its own plans, configuration and dataset.json, as nnU-Net's predictor builds it."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans_manager = PlansManager(run.plans)
    configuration_manager = plans_manager.get_configuration(run.configuration)
    label_manager = plans_manager.get_label_manager(run.dataset_json)
    return find_trainer_class(run.trainer_name).build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, run.dataset_json),
        label_manager.num_segmentation_heads, enable_deep_supervision)


def check_teacher_fits(run, plans: dict, configuration: str, dataset_json: dict, trainer_name: str,
                       trainer_to_use: str) -> None:
    """A teacher sees the student's batch and predicts its targets: the run must have the same dataset, patch,
    spacing, normalisation, channels and labels. One :class:`MissingModError` naming the file, the trainer it came
    from, what differs and the trainer to use."""
    theirs = run.plans.get("configurations", {}).get(run.configuration, {})  # none: each key differs
    ours = plans["configurations"][configuration]
    differences = [f"{k}: {theirs.get(k)} vs {ours.get(k)}" for k in ("patch_size", "spacing",
                                                                        "normalization_schemes")
                   if theirs.get(k) != ours.get(k)]
    for key in ("channel_names", "labels"):
        if run.dataset_json.get(key) != dataset_json.get(key):
            differences.append(f"{key}: {run.dataset_json.get(key)} vs {dataset_json.get(key)}")
    if run.plans.get("dataset_name") != plans.get("dataset_name"):
        differences.insert(0, f"dataset: {run.plans.get('dataset_name')} vs {plans.get('dataset_name')}")
    if differences:
        raise MissingModError(
            f"{run.describe()} does not fit {trainer_name} (plans {plans.get('plans_name')}, configuration "
            f"{configuration}): {'; '.join(differences)}. Train the teacher on the same dataset, plans and "
            f"configuration: nnUNetv2_train DATASET {configuration} FOLD -tr {trainer_to_use} -p "
            f"{plans.get('plans_name')}")


_DDP_PREFIX = "module."


def plain_weights(weights: Dict[str, torch.Tensor], own_names: Iterable[str] = ()) -> Dict[str, torch.Tensor]:
    """``weights`` without DDP's ``module.`` prefix, which a checkpoint saved from a wrapped network carries (nnU-Net
    2.8.1 strips it the same way in ``load_checkpoint``); a name that is one of ``own_names`` (a network with a
    submodule called ``module``) is kept as it is."""
    own_names = set(own_names)
    return {k[len(_DDP_PREFIX):] if k not in own_names and k.startswith(_DDP_PREFIX) else k: v
            for k, v in weights.items()}


def load_network_weights(network: nn.Module, run: FinishedRun, what: str, trainer_to_use: str,
                         strict: bool = True) -> List[str]:
    """Load ``run``'s weights into ``network``.

    ``strict``: every parameter and buffer must match by name and shape, else one :class:`MissingModError` naming
    the file, its trainer and ``trainer_to_use``. ``strict=False``: load the entries whose name and shape match
    (e.g. a stock U-Net's encoder and decoder into a method network built on them); at least one must.
    Returns the names that were loaded.
    """
    own = network.state_dict()
    weights = plain_weights(run.network_weights, own.keys())
    if strict:
        try:
            network.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            first_line = str(e).strip().splitlines()[0]
            raise MissingModError(f"{run.describe()} does not fit {what}: {first_line}. Use a run of "
                                  f"-tr {trainer_to_use} (same plans and configuration)") from None
        return sorted(weights)
    matching = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise MissingModError(f"{run.describe()} shares no weights with {what}; use a run of -tr {trainer_to_use}")
    network.load_state_dict(matching, strict=False)
    return sorted(matching)


def same_state_dict_layout(a: nn.Module, b_weights: Dict[str, torch.Tensor]) -> bool:
    """Whether ``a``'s parameters and buffers have exactly the names and shapes of ``b_weights``."""
    own = a.state_dict()
    b = plain_weights(b_weights, own.keys())
    return own.keys() == b.keys() and all(own[k].shape == b[k].shape for k in own)



def load_checkpoint_teacher(trainer, start_from: Optional[str], teacher_trainer_name: str,
                            check_network: Optional[Callable[[nn.Module, FinishedRun], None]] = None) -> nn.Module:
    """The frozen teacher of ``trainer``: the network of the finished run named by ``nnUNet_missingmod_teacher``,
    built by its own trainer class from its own plans and checked against ``trainer``'s plans. With ``start_from``
    (``"strict"``: same architecture; ``"matching"``: the tensors whose names and shapes match) ``trainer``'s network
    starts from its weights. ``teacher_trainer_name`` is the trainer the errors tell the user to train the teacher
    with; ``check_network(teacher, run)`` refuses a run that the method cannot use, with a :class:`MissingModError`
    naming ``run.path``."""
    if start_from not in START_FROM_TEACHER:
        raise ValueError(f"start_from must be one of {START_FROM_TEACHER}, got {start_from!r}")
    name = type(trainer).__name__
    location = os.environ.get(TEACHER_ENV)
    if not location:
        raise MissingModError(f"{name} needs a finished run as its teacher: set {TEACHER_ENV} to its fold folder or "
                              f"checkpoint_final.pth (train it with nnUNetv2_train ... -tr {teacher_trainer_name})")
    run = load_finished_run(location)
    check_teacher_fits(run, trainer.plans_manager.plans, trainer.configuration_name, trainer.dataset_json, name,
                       teacher_trainer_name)
    teacher = build_network_of_run(run, trainer.enable_deep_supervision)
    load_network_weights(teacher, run, f"the network of {run.trainer_name}", run.trainer_name, strict=True)
    if check_network is not None:
        check_network(teacher, run)
    if start_from is not None:
        loaded = load_network_weights(unwrap_network(trainer.network), run, f"{name}'s network",
                                      teacher_trainer_name, strict=start_from == "strict")
        trainer.print_to_log_file(f"student starts from {len(loaded)} tensors of {run.path}")
    trainer.print_to_log_file(f"teacher: {run.describe()}")
    return teacher
