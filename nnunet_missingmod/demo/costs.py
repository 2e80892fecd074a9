"""How long the demo takes: seconds per stage, used for the first line the demo prints and for each progress bar's
estimate (the bars also show tqdm's own estimate from the rate so far).

The CPU figures are wall seconds of the demo's own stages on the idle 2-core development machine
(``nnUNet_n_proc_DA=0``, 8 mm phantoms, patch 20x24x20, batch 2); a loaded machine takes up to 2x. The CUDA
figures are typical values for nnU-Net on one data-centre GPU at these patch sizes (a step is bound by data
augmentation and kernel launches, not by the voxel count), not measurements. The trainers' factors
(:data:`TRAINER_TIME_FACTOR`) are epoch times relative to stock; where they come from is in
``docs/benchmarks.md`` (training cost).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from nnunet_missingmod.training.naming import BUDGETS

REFERENCE_SPACING_MM = 8.0  # the spacing the per-voxel costs were measured at


@dataclass(frozen=True)
class DeviceCosts:
    seconds_per_iteration: float  # one training iteration of stock nnU-Net (forward, backward, augmentation)
    train_startup_s: float  # nnUNetv2_train: imports, plans, network, data loaders, checkpoint writing
    validation_per_case_s: float  # nnU-Net's final validation (mirroring on), per training case
    evaluate_startup_s: float  # evaluate: imports, model loading, scoring and plots
    prediction_s: float  # evaluate: one case under one subset (no mirroring), including export
    plan_fixed_s: float  # nnUNetv2_plan_and_preprocess with one worker
    plan_per_case_s: float
    phantom_per_case_s: float
    convert_per_case_s: float


COSTS: Dict[str, DeviceCosts] = {
    # wall seconds on the idle 2-core machine (see module doc; a loaded machine takes up to 2x)
    "cpu": DeviceCosts(seconds_per_iteration=0.23, train_startup_s=15.0, validation_per_case_s=1.0,
                       evaluate_startup_s=5.0, prediction_s=0.16, plan_fixed_s=25.0, plan_per_case_s=1.0,
                       phantom_per_case_s=0.3, convert_per_case_s=0.2),
    # not measured (see module doc)
    "cuda": DeviceCosts(seconds_per_iteration=0.08, train_startup_s=30.0, validation_per_case_s=0.5,
                        evaluate_startup_s=20.0, prediction_s=0.1, plan_fixed_s=30.0, plan_per_case_s=0.5,
                        phantom_per_case_s=0.5, convert_per_case_s=0.2),
}

# Time per iteration relative to stock nnU-Net, per device. CPU: epoch times of the demo's own runs (8 mm, patch
# 20x24x20, idle machine; at this tiny patch fixed per-step costs weigh more than in docs/benchmarks.md's 32^3
# figures) and, for the full-size networks, bench_train_cost.py at 32^3. CUDA: the targets of the method issues (not
# measured). A name not listed takes its family's entry (the longest listed prefix), else 1.
TRAINER_TIME_FACTOR: Dict[str, Dict[str, float]] = {
    # two-phase: stock's step before the switch, RobustifyTrainer's (1.33x at 32^3) after it
    # _vitSmall: its ViT-S stage does not shrink with the plan (4.4x in the three small runs of 2026-12-02)
    "cpu": {"MSTKDTrainer": 2.5, "MSTKDTrainer_small": 2.7, "MSTKDTrainer_vitSmall": 4.4, "CCSDTrainer": 7.5,
            "CCSDTrainer_small": 2.2, "DeMoSegTrainer": 2.7, "DeMoSegTrainer_small": 1.05,
            "TwoPhaseDistillTrainer": 1.17, "RobustifyTrainer": 1.33},
    "cuda": {"MSTKDTrainer": 2.2, "CCSDTrainer": 3.0},
}


def budget_iterations(budget: str) -> Tuple[int, int]:
    """(epochs, iterations per epoch) of the budget named ``budget`` (:data:`~nnunet_missingmod.training.naming.
    BUDGETS`)."""
    entry = BUDGETS[budget]
    return entry.num_epochs, entry.num_iterations_per_epoch


def _voxel_scale(spacing_mm: float) -> float:
    return (REFERENCE_SPACING_MM / spacing_mm) ** 3


def _factor(trainer: str, device: str) -> float:
    factors = TRAINER_TIME_FACTOR["cuda" if device == "cuda" else "cpu"]
    if trainer.endswith("_small") and trainer not in factors:  # an ablation of a _small variant costs like it
        family = next((f for f in factors if f.endswith("_small") and trainer.startswith(f[:-len("_small")])), None)
        if family is not None:
            return factors[family]
    prefixes = [name for name in factors if trainer.startswith(name)]
    return factors[max(prefixes, key=len)] if prefixes else 1.0


def _device_costs(device: str) -> DeviceCosts:
    return COSTS["cuda" if device == "cuda" else "cpu"]


def phantom_seconds(n_cases: int, spacing_mm: float) -> float:
    return n_cases * COSTS["cpu"].phantom_per_case_s * max(_voxel_scale(spacing_mm), 0.2) + 10.0


def convert_seconds(data) -> float:
    return (data.cases + data.test_cases) * COSTS["cpu"].convert_per_case_s + 3.0


def plan_seconds(data) -> float:
    c = COSTS["cpu"]
    return c.plan_fixed_s + data.cases * c.plan_per_case_s * _voxel_scale(data.spacing_mm)


def training_seconds(trainer: str, budget: str, device: str, data) -> float:
    epochs, per_epoch = budget_iterations(budget)
    c = _device_costs(device)
    scale = _voxel_scale(data.spacing_mm) if device != "cuda" else 1.0
    return (c.train_startup_s + epochs * per_epoch * c.seconds_per_iteration * scale * _factor(trainer, device)
            + data.cases * c.validation_per_case_s * scale)


def evaluation_seconds(trainer: str, device: str, data) -> float:
    c = _device_costs(device)
    scale = _voxel_scale(data.spacing_mm) if device != "cuda" else 1.0
    return c.evaluate_startup_s + data.test_cases * 15 * c.prediction_s * scale


def total_seconds(trainers, budget: str, device: str, data) -> float:
    return (phantom_seconds(data.cases + data.test_cases, data.spacing_mm) + convert_seconds(data)
            + plan_seconds(data)
            + sum(training_seconds(t, budget, device, data) + evaluation_seconds(t, device, data) for t in trainers))
