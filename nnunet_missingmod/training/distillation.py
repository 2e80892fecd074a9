"""The distillation kit every method imports (MST-KD, CCSD, the base trainer's teacher, a later method): what two
methods need alike lives here once, and no method package imports another.

* :func:`full_resolution`: the highest-resolution output of a deep-supervision list;
  :func:`deep_supervision_weights`: nnU-Net's weights of the scales of such a list;
* :func:`float32_autocast_off`: the context in which loss terms run in float32 (terms of ~1e-9 before their weight
  vanish in half precision);
* :func:`bernoulli_kl`, :func:`softmax_kl`, :func:`logit_kl`: the KL from teacher to student logits, per region
  (sigmoid outputs, nnU-Net's region training) or over the classes (softmax label outputs), with a temperature;
* :func:`load_finished_run`: a finished run's checkpoint (fold folder or ``.pth``), with the trainer and plans it
  came from, and one clear error when it is not a checkpoint;
* :func:`check_teacher_fits`, :func:`build_network_of_run`, :func:`load_network_weights`: whether the run fits the
  student's data, its network built by its own trainer class, and weights loaded into a network, strictly or where
  names and shapes match, each with one clear error naming the file, its trainer and the trainer to use;
* :func:`soft_dice_loss`: a Dice towards the teacher's probabilities (every region weighs alike, whatever its size).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_missingmod.errors import MissingModError

TEACHER_ENV = "nnUNet_missingmod_teacher"
"""Environment variable naming the finished run (a fold folder such as ``.../fold_0``, or its
``checkpoint_final.pth``) that a trainer with a checkpoint teacher loads."""
CHECKPOINT_FILENAME = "checkpoint_final.pth"


def full_resolution(output):
    """``output[0]`` for a deep-supervision list/tuple (highest resolution first, as nnU-Net orders it), else
    ``output``. Logit distillation acts on this output only (``docs/methods.md``)."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def deep_supervision_weights(num_scales: int) -> List[float]:
    """nnU-Net 2.8.1's deep-supervision loss weights (``nnUNetTrainer._build_loss``): ``1 / 2**i`` for scale ``i``
    (0 = full resolution), the lowest scale 0 (when there is more than one), normalised to sum 1. Distillation at
    every scale weighs the scales as nnU-Net's own loss does."""
    if num_scales < 1:
        raise ValueError(f"deep_supervision_weights: need at least one scale, got {num_scales}")
    weights = [1 / 2 ** i for i in range(num_scales)]
    if num_scales > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def float32_autocast_off(like: Union[torch.Tensor, torch.device]):
    """Autocast switched off on the device of ``like``: inside it, matmuls and reductions run in the dtype of their
    inputs, so a loss that casts its inputs to float32 once is computed in float32."""
    device = like.device if isinstance(like, torch.Tensor) else torch.device(like)
    return torch.autocast(device_type=device.type, enabled=False)


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise ``KL(Bern(σ(a)) ‖ Bern(σ(b)))`` from logits ``a`` (teacher) and ``b`` (student), stable through
    ``logsigmoid``. Any shape (same for both); returns that shape. Call in float32."""
    log_p, log_not_p = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_q, log_not_q = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return log_p.exp() * (log_p - log_q) + log_not_p.exp() * (log_not_p - log_not_q)


def softmax_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``KL(softmax(a) ‖ softmax(b))`` over ``dim`` (the class axis), from logits; ``dim`` is summed out:
    (B, C, *spatial) -> (B, *spatial). Call in float32."""
    log_p = F.log_softmax(teacher_logits, dim=dim)
    log_q = F.log_softmax(student_logits, dim=dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim=dim)


def logit_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
             temperature: float = 1.0) -> torch.Tensor:
    """Voxel-wise KL from teacher to student at temperature τ, in float32 with autocast off (inputs cast once).

    Args:
        teacher_logits, student_logits: (B, C, *spatial), equal shapes, any float dtype.
        regions: ``True`` for sigmoid region outputs (``label_manager.has_regions``): per-region Bernoulli KL,
            returns (B, C, *spatial); ``False`` for softmax label outputs: KL over the class axis, returns
            (B, *spatial).
        temperature: τ > 0; the logits are divided by it (no τ² factor: callers scale).
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"logit_kl: teacher shape {tuple(teacher_logits.shape)} != student shape "
                         f"{tuple(student_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"logit_kl: temperature must be > 0, got {temperature}")
    with float32_autocast_off(teacher_logits):
        t = teacher_logits.float() / temperature
        s = student_logits.float() / temperature
        return bernoulli_kl(t, s) if regions else softmax_kl(t, s, dim=1)


# ------------------------------------------------------------------------------------------- finished runs

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
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint or "init_args" not in checkpoint:
        raise MissingModError(f"{variable}={path} is not an nnU-Net checkpoint (it lacks 'network_weights' or "
                              f"'init_args'; name checkpoint_final.pth of a finished nnUNetv2_train run)")
    init = checkpoint["init_args"]
    return FinishedRun(path=path, trainer_name=checkpoint.get("trainer_name", "?"), plans=init["plans"],
                       configuration=init["configuration"], dataset_json=init["dataset_json"],
                       network_weights=checkpoint["network_weights"])


def soft_dice_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, regions: bool,
                   smooth: float = 1e-5) -> torch.Tensor:
    """``1 − mean_c 2 Σ p_c q_c / (Σ p_c² + Σ q_c²)``, sums over the batch and voxels (a batch Dice as nnU-Net's),
    with ``p`` the teacher's and ``q`` the student's probabilities: sigmoid per region (``regions``) or softmax
    without the background class. The squared denominators (V-Net's form) make it 0 exactly when ``q = p``, and each
    region weighs alike whatever its size. (B, C, *spatial) float32 logits -> 0-dim tensor in [0, 1]."""
    if regions:
        p, q = torch.sigmoid(teacher_logits), torch.sigmoid(student_logits)
    else:
        p, q = torch.softmax(teacher_logits, 1)[:, 1:], torch.softmax(student_logits, 1)[:, 1:]
    axes = [0] + list(range(2, p.dim()))
    dice = (2 * (p * q).sum(axes) + smooth) / ((p * p).sum(axes) + (q * q).sum(axes) + smooth)
    return 1 - dice.mean()


def find_trainer_class(name: str) -> type:
    """The trainer class ``name``: one of ours, or nnU-Net's (its own lookup, as ``nnUNetv2_train`` uses)."""
    from nnunet_missingmod.training.registry import trainer_registry
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
    """The network of a finished run (:class:`~nnunet_missingmod.training.distillation.FinishedRun`), built by its
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
    theirs = run.plans["configurations"].get(run.configuration, {})
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

