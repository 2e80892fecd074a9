"""Training cost per iteration and peak memory of each trainer relative to stock ``nnUNetTrainer``, in one run.

Every trainer is built in-process on the same hand-written plans (``--config small``: a 32^3 patch, batch 2, 4
stages 32..256; ``--config brats``: nnU-Net's BraTS 3d_fullres U-Net, 128^3 patch, batch 2, 6 stages
PlainConvUNet 32..320, 4 channels, 3 region outputs, deep supervision), with the same network initialisation seed,
and fed identical random batches (normalised data and region targets at every deep-supervision scale, as nnU-Net's
data loader yields them). No data is read: ``initialize()`` only needs a preprocessed dataset folder to pick
nnU-Net's dataset class from the file endings in it, so the script writes the plans, ``dataset.json`` and one
empty ``placeholder.b2nd`` into a temporary ``nnUNet_preprocessed`` (nothing ever opens it: the data loaders are
never built, ``train_step`` gets our batches).

* time: ``train_step`` (forward, losses, backward, optimiser steps of the network and of every extra module, AMP
  and grad scaler on CUDA, as in training), round-robin over the trainers (one step of each, then the next round) so
  that load drifts on a shared machine hit all trainers alike; median of ``--steps`` after ``--warmup`` steps each;
  CUDA is synchronised around every step;
* peak memory, one trainer at a time: CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, with only that trainer alive (parameters, optimiser state, activations; the CUDA
  context is not included); CPU: a child process per trainer reports its peak resident set size (``VmHWM``, reset
  through ``/proc/self/clear_refs`` after torch is imported and the batch is built) minus its resident set size at
  that point, i.e. what building and stepping that trainer added. ``tracemalloc`` does not see torch's allocations.

    .venv/bin/python benchmarks/bench_train_cost.py [--config small|brats] [--device cpu|cuda]
        [--trainers nnUNetTrainer,ModalityDropoutTrainer,...] [--steps 5] [--warmup 2] [--profile TRAINER]

Targets (GPU, brats config; from the issues): MSTKDTrainer <= 2.2x time and <= 2.5x memory of stock, CCSDTrainer
<= 3x both. On the CPU the ratios are reported at the small patch.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnunet_missingmod.training.naming import BUDGETS
from machine import cpu_model, load_average

STOCK = "nnUNetTrainer"
DATASET = "Dataset999_TrainCost"
CONFIGURATION = "3d_fullres"
BUDGET_SUFFIXES = tuple(b.suffix for b in BUDGETS.values())
FAMILIES = ("ModalityDropoutTrainer", "MSTKDTrainer", "CCSDTrainer")
TARGETS = {"MSTKDTrainer": (2.2, 2.5), "CCSDTrainer": (3.0, 3.0)}  # (time, memory) vs stock, GPU brats config

CONFIGS = {
    # name: (patch, strides, features, batch)
    "small": ([32, 32, 32], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [32, 64, 128, 256], 2),
    # nnU-Net 2.8.1's plan for BraTS 2021 3d_fullres (1 mm isotropic): 128^3, 6 stages, features capped at 320
    "brats": ([128, 128, 128], [[1, 1, 1]] + [[2, 2, 2]] * 5, [32, 64, 128, 256, 320, 320], 2),
}
DATASET_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz", "name": "TrainCost",
}


# ---------------------------------------------------------------------------------------------------- plans
def make_plans(patch, strides, features, batch_size) -> dict:
    """The plans dict nnunetv2 2.8.1's ExperimentPlanner writes for a 3d PlainConvUNet (as tests/plans_helpers.py)."""
    n = len(strides)
    kwargs = {
        "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n, "strides": [list(s) for s in strides], "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0] * 3,
        "original_median_shape_after_transp": [140, 171, 137], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": batch_size, "patch_size": list(patch), "median_image_size_in_voxels": [140, 171, 137],
            "spacing": [1.0] * 3, "normalization_schemes": ["ZScoreNormalization"] * 4,
            "use_mask_for_norm": [True] * 4, "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "batch_dice": False,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": kwargs,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }},
        "experiment_planner_used": "hand-written (benchmarks/bench_train_cost.py)", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 5.0, "mean": 0.0, "median": 0.0, "min": -5.0, "percentile_00_5": -3.0,
                     "percentile_99_5": 3.0, "std": 1.0} for c in range(4)},
    }


def config_plans(args) -> dict:
    patch, strides, features, batch = CONFIGS[args.config]
    if args.patch:
        patch = [args.patch] * 3
    return make_plans(patch, strides, features, args.batch or batch)


def write_preprocessed_folder(root: Path, plans: dict) -> None:
    """What ``initialize()`` needs on disk: plans, dataset.json, and a data folder whose file ending tells nnU-Net
    which dataset class to use (an empty placeholder; no case is ever loaded)."""
    base = root / "nnUNet_preprocessed" / DATASET
    data = base / plans["configurations"][CONFIGURATION]["data_identifier"]
    data.mkdir(parents=True, exist_ok=True)
    (base / "nnUNetPlans.json").write_text(json.dumps(plans, indent=1))
    (base / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=1))
    (data / "placeholder.b2nd").touch()


def set_environment(root: Path, compile_: bool) -> None:
    """Must run before nnunetv2 is imported (nnunetv2.paths reads the variables at import)."""
    os.environ.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
                      nnUNet_results=str(root / "nnUNet_results"), nnUNet_compile="t" if compile_ else "f",
                      nnUNet_n_proc_DA="1")


# ---------------------------------------------------------------------------------------------------- trainers
def available_trainers() -> Tuple[Dict[str, type], List[str]]:
    """Our registered trainers plus stock nnUNetTrainer; modules that fail to import (a method being written) are
    skipped with a note instead of failing the whole benchmark, as ``trainer_registry()`` would."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_missingmod.training.naming import trainer_registry
    notes: List[str] = []
    trainers = trainer_registry(import_errors=notes)
    trainers[STOCK] = nnUNetTrainer
    return trainers, notes


def default_trainer_names(registered: Dict[str, type], device: str) -> List[str]:
    """Stock, ModalityDropoutTrainer, the self-distillation trainer, then every registered MSTKDTrainer*/CCSDTrainer*
    (method + ablations + variants), without budget variants and teacher-only trainers; the ``_small``
    (CPU-sized transformer) ones on the CPU where a family has them, the full-size ones on CUDA."""
    from nnunet_missingmod.training.methods.selfdistill.trainer import SELF_DISTILLATION_TRAINER
    names = [STOCK, "ModalityDropoutTrainer", SELF_DISTILLATION_TRAINER]
    for family in FAMILIES[1:]:
        members = sorted(n for n in registered if n.startswith(family) and not n.endswith(BUDGET_SUFFIXES))
        small = [n for n in members if n.endswith("_small")]
        if device == "cpu" and small:
            members = small
        elif device == "cuda":
            members = [n for n in members if not n.endswith("_small")]
        main = [n for n in members if n in (family, family + "_small")]
        names += main + [n for n in members if n not in main]
        if not members:
            names.append(family + ("_small" if device == "cpu" else ""))  # reported as absent
    return names


def build_trainer(cls, plans: dict, device):
    import torch
    torch.manual_seed(0)  # the same network initialisation for every trainer that shares the architecture
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # nnU-Net's banner and log lines
        plans = dict(copy.deepcopy(plans), continue_training=False)  # what nnUNetv2_train adds (fresh start)
        trainer = cls(plans, CONFIGURATION, 0, copy.deepcopy(DATASET_JSON), device)
        trainer.initialize()
        trainer.on_train_epoch_start()  # train/eval modes of the network and the extra modules, as in training
        if getattr(getattr(cls, "teacher", None), "source", None) == "snapshot":
            trainer.take_teacher_snapshot()  # time phase 2 (teacher forward + distillation), the dearer phase
    return trainer


def uses_checkpoint_teacher(cls) -> bool:
    """Whether ``cls`` loads a finished run named by ``nnUNet_missingmod_teacher`` (two-phase/robustify recipes:
    ``teacher.source``; MST-KD: ``method.teacher``)."""
    return getattr(getattr(cls, "teacher", None), "source", None) == "checkpoint" or \
        getattr(getattr(cls, "method", None), "teacher", None) == "checkpoint"


def provide_frozen_teacher(trainer_classes, plans: dict, root: Path) -> None:
    """Frozen-teacher variants load a finished teacher run named by ``nnUNet_missingmod_teacher``. Its weights do
    not change the cost, so unless the variable is set, write an initialised teacher of the right size on these
    plans and point the variable at it (before the memory phase's child processes start: they inherit it)."""
    from nnunet_missingmod.training.teacher import TEACHER_ENV, find_trainer_class
    frozen = [cls for cls in trainer_classes if uses_checkpoint_teacher(cls)]
    if not frozen or os.environ.get(TEACHER_ENV):
        return
    import torch
    # One teacher per run: a variant that needs another teacher (size, stock) fails to load it and is skipped.
    teacher_name = frozen[0].teacher_trainer_name()
    path = root / "teachers" / teacher_name / "checkpoint_final.pth"
    teacher = build_trainer(find_trainer_class(teacher_name), plans, torch.device("cpu"))
    path.parent.mkdir(parents=True)
    teacher.save_checkpoint(str(path))  # an nnU-Net checkpoint (init_args included), as a finished run writes
    os.environ[TEACHER_ENV] = str(path)
    print(f"note: {TEACHER_ENV} unset: frozen-teacher variants load an initialised {teacher_name} "
          f"(the cost does not depend on its weights)")


def make_batch(trainer, plans: dict, seed: int) -> dict:
    """Random normalised data and region targets at every deep-supervision scale (tests/trainer_helpers.py)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    configuration = plans["configurations"][CONFIGURATION]
    patch, batch_size = configuration["patch_size"], configuration["batch_size"]
    data = torch.randn(batch_size, 4, *patch, generator=g)
    labels = torch.randint(0, 4, (batch_size, 1, *patch), generator=g)
    regions = torch.cat([labels >= 1, labels >= 2, labels == 3], dim=1).float()
    target = [torch.nn.functional.interpolate(regions, size=[round(p * s) for p, s in zip(patch, scale)],
                                              mode="nearest-exact").bool()
              for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": target, "keys": [f"case{i}" for i in range(batch_size)]}


def synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(trainer, batch, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    trainer.train_step(batch)
    synchronize(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args, root: Path) -> None:
    """Child process (CPU): build one trainer, step it, print the resident memory it added, as JSON."""
    import torch
    torch.set_num_threads(args.threads)
    plans = config_plans(args)
    trainers, _ = available_trainers()
    cls = trainers[args.memory_child]
    device = torch.device("cpu")
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status_kib("VmRSS")
    trainer = build_trainer(cls, plans, device)
    batch = make_batch(trainer, plans, seed=0)
    for _ in range(args.memory_steps):
        trainer.train_step(batch)
    print("MEMORY_JSON " + json.dumps({"baseline_kib": baseline, "peak_kib": _status_kib("VmHWM")}))


def cpu_peak_memory(name: str, args, root: Path) -> Optional[float]:
    """Bytes of peak resident memory that building and stepping ``name`` added, measured in a child process."""
    command = [sys.executable, __file__, "--memory-child", name, "--root", str(root), "--config", args.config,
               "--threads", str(args.threads), "--memory-steps", str(args.memory_steps)]
    if args.patch:
        command += ["--patch", str(args.patch)]
    if args.batch:
        command += ["--batch", str(args.batch)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    for line in result.stdout.splitlines():
        if line.startswith("MEMORY_JSON "):
            values = json.loads(line[len("MEMORY_JSON "):])
            return (values["peak_kib"] - values["baseline_kib"]) * 1024.0
    print(f"  memory of {name}: child failed ({result.returncode}): {result.stderr.strip()[-800:]}", file=sys.stderr)
    return None


def cuda_peak_memory(cls, plans, device, steps: int) -> float:
    import torch
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer(cls, plans, device)
    batch = make_batch(trainer, plans, seed=0)
    for _ in range(steps):
        trainer.train_step(batch)
    synchronize(device)
    peak = float(torch.cuda.max_memory_allocated(device))
    del trainer, batch
    gc.collect()
    torch.cuda.empty_cache()
    return peak


# ---------------------------------------------------------------------------------------------------- profile
def profile_trainer(trainer, batch, device, steps: int, rows: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step(batch)
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {type(trainer).__name__}, {steps} train_step(s), top ops by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


# ---------------------------------------------------------------------------------------------------- main


def target_note(name: str, time_ratio: Optional[float], memory_ratio: Optional[float]) -> str:
    family = next((f for f in TARGETS if name.startswith(f)), None)
    if family is None or time_ratio is None:
        return ""
    t, m = TARGETS[family]
    ok_t = "ok" if time_ratio <= t else "OVER"
    ok_m = "" if memory_ratio is None else (" ok" if memory_ratio <= m else " OVER")
    return f"target <= {t:g}x time {ok_t}, <= {m:g}x mem{ok_m}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", default=None,
                        help="comma-separated trainer names (ours from trainer_registry() and nnUNetTrainer); "
                             "default: stock, ModalityDropoutTrainer, MSTKDTrainer* and CCSDTrainer* as registered")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--patch", type=int, default=None, help="override the cubic patch edge (voxels)")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trainer (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per trainer first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: robust on a loaded shared machine, where 2 threads spin-wait)")
    parser.add_argument("--compile", action="store_true", help="nnUNet_compile=t (CUDA only; default eager)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory phase")
    parser.add_argument("--no-time", action="store_true", help="only the peak-memory phase")
    parser.add_argument("--memory-steps", type=int, default=2, help="train steps per trainer in the memory phase")
    parser.add_argument("--pairwise", action="store_true",
                        help="time each trainer interleaved with stock, one pair alive at a time (real patch sizes)")
    parser.add_argument("--profile", default=None, metavar="TRAINER",
                        help="also print torch.profiler's top ops by self time for this trainer")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child:
        root = Path(args.root)
        set_environment(root, compile_=False)
        memory_child(args, root)
        return

    with tempfile.TemporaryDirectory(prefix="bench_train_cost_") as tmp:
        root = Path(tmp)
        set_environment(root, args.compile)
        plans = config_plans(args)
        write_preprocessed_folder(root, plans)
        run(args, root, plans)


def time_pairwise(args, names, registered, plans, device, memory, load_start) -> None:
    """Time each trainer interleaved step by step with stock, only that pair alive (at real patch sizes all
    trainers at once would not fit in memory); its ratio is to the stock steps of its own pair."""
    import torch
    stock = build_trainer(registered[STOCK], plans, device)
    stock_batch = make_batch(stock, plans, seed=0)
    rows, stock_all = [], []
    for name in names:
        if name == STOCK:
            continue
        try:
            trainer = build_trainer(registered[name], plans, device)
            batch = make_batch(trainer, plans, seed=0)
            own, paired = [], []
            for round_ in range(args.warmup + args.steps):
                s_time, t_time = timed_step(stock, stock_batch, device), timed_step(trainer, batch, device)
                if round_ >= args.warmup:
                    paired.append(s_time)
                    own.append(t_time)
        except Exception as e:  # noqa: BLE001
            print(f"note: {name} failed: {type(e).__name__}: {e}: skipped")
            continue
        finally:
            trainer = batch = None
            gc.collect()
        stock_all += paired
        ratio = statistics.median(own) / statistics.median(paired)
        mem, stock_mem = memory.get(name), memory.get(STOCK)
        m_ratio = mem / stock_mem if mem and stock_mem else None
        rows.append({"trainer": name, "ms_per_step": statistics.median(own) * 1e3, "time_ratio": ratio,
                     "stock_ms_in_pair": statistics.median(paired) * 1e3, "steps_ms": [t * 1e3 for t in own],
                     "stock_steps_ms": [t * 1e3 for t in paired],
                     "peak_mib": None if mem is None else mem / 2**20, "memory_ratio": m_ratio})
        print(f"  {name}: {statistics.median(own) * 1e3:.0f} ms/step vs stock {statistics.median(paired) * 1e3:.0f}"
              f" in its pair: {ratio:.2f}x (load {load_average()})", flush=True)
    stock_mem = memory.get(STOCK)
    rows.insert(0, {"trainer": STOCK, "ms_per_step": statistics.median(stock_all) * 1e3 if stock_all else None,
                    "time_ratio": 1.0, "peak_mib": None if stock_mem is None else stock_mem / 2**20,
                    "memory_ratio": 1.0})
    print(f"\n{'trainer':34s} {'ms/step':>9s} {'x stock':>8s} {'peak MiB':>9s} {'x stock':>8s}")
    for row in rows:
        mib, m_ratio = row["peak_mib"], row["memory_ratio"]
        print(f"{row['trainer']:34s} {row['ms_per_step'] or 0:9.0f} {row['time_ratio']:8.2f} "
              f"{'-' if mib is None else f'{mib:.0f}':>9s} {'-' if m_ratio is None else f'{m_ratio:.2f}':>8s}  "
              f"{target_note(row['trainer'], row['time_ratio'], m_ratio)}")
    configuration = plans["configurations"][CONFIGURATION]
    print(f"\ntime: median of {args.steps} steps after {args.warmup} warm-up, each trainer interleaved with stock; "
          f"memory: {'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'peak RSS added (VmHWM)'}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {args.threads}; python "
          f"{platform.python_version()}, torch {torch.__version__}; load average {load_start} -> {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "patch": configuration["patch_size"], "batch": configuration["batch_size"],
            "device": str(device), "steps": args.steps, "warmup": args.warmup, "pairwise": True,
            "load_start": load_start, "load_end": load_average(), "cpu": cpu_model(), "torch": torch.__version__,
            "rows": rows}, indent=1))


def run(args, root: Path, plans: dict) -> None:
    import torch
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    registered, notes = available_trainers()
    names = args.trainers.split(",") if args.trainers else default_trainer_names(registered, args.device)
    for note in notes:
        print(f"note: {note}")
    missing = [n for n in names if n not in registered]
    for name in missing:
        print(f"note: {name} is not registered (not written yet, or its module failed to import): skipped")
    names = [n for n in names if n in registered]
    if STOCK not in names:
        names.insert(0, STOCK)
    provide_frozen_teacher([registered[n] for n in names], plans, root)
    configuration = plans["configurations"][CONFIGURATION]
    load_start = load_average()
    print(f"config {args.config}: patch {configuration['patch_size']}, batch {configuration['batch_size']}, "
          f"features {configuration['architecture']['arch_kwargs']['features_per_stage']}; device {device}; "
          f"steps {args.steps} after {args.warmup} warm-up; load average {load_start}", flush=True)

    # memory first, one trainer at a time (nothing else alive on the device)
    memory: Dict[str, Optional[float]] = {}
    if not args.no_memory:
        for name in list(names):
            try:
                memory[name] = cpu_peak_memory(name, args, root) if device.type == "cpu" else \
                    cuda_peak_memory(registered[name], plans, device, args.memory_steps)
            except Exception as e:  # noqa: BLE001 - e.g. a trainer that needs a teacher checkpoint
                print(f"note: {name} failed in the memory phase: {type(e).__name__}: {e}: skipped")
                memory[name] = None
            print(f"  peak memory {name}: "
                  f"{'-' if memory[name] is None else f'{memory[name] / 2**20:.0f} MiB'}", flush=True)

    if args.no_time:
        if args.json:
            Path(args.json).write_text(json.dumps({
                "config": args.config, "patch": configuration["patch_size"], "batch": configuration["batch_size"],
                "device": str(device), "memory_mib": {n: None if m is None else m / 2**20 for n, m in memory.items()}},
                indent=1))
        return
    if args.pairwise:
        time_pairwise(args, names, registered, plans, device, memory, load_start)
        return
    # time: all trainers alive, round-robin
    trainers, batches = {}, {}
    for name in names:
        try:
            trainers[name] = build_trainer(registered[name], plans, device)
            batches[name] = make_batch(trainers[name], plans, seed=0)
        except Exception as e:  # noqa: BLE001
            print(f"note: {name} cannot be built: {type(e).__name__}: {e}: skipped")
    times: Dict[str, List[float]] = {name: [] for name in trainers}
    failed = set()
    for round_ in range(args.warmup + args.steps):
        for name, trainer in trainers.items():
            if name in failed:
                continue
            try:
                elapsed = timed_step(trainer, batches[name], device)
            except Exception as e:  # noqa: BLE001
                print(f"note: {name} failed in train_step: {type(e).__name__}: {e}: skipped")
                failed.add(name)
                continue
            if round_ >= args.warmup:
                times[name].append(elapsed)
        print(f"  round {round_ + 1}/{args.warmup + args.steps} done (load {load_average()})", flush=True)
    load_end = load_average()

    stock_time = statistics.median(times[STOCK]) if times.get(STOCK) else None
    stock_memory = memory.get(STOCK)
    rows = []
    print(f"\n{'trainer':34s} {'ms/step':>9s} {'x stock':>8s} {'min..max ms':>15s} {'peak MiB':>9s} {'x stock':>8s}")
    for name in trainers:
        if not times[name]:
            continue
        median = statistics.median(times[name])
        t_ratio = median / stock_time if stock_time else None
        mem = memory.get(name)
        m_ratio = mem / stock_memory if mem and stock_memory else None
        rows.append({"trainer": name, "ms_per_step": median * 1e3, "time_ratio": t_ratio,
                     "min_ms": min(times[name]) * 1e3, "max_ms": max(times[name]) * 1e3,
                     "peak_mib": None if mem is None else mem / 2**20, "memory_ratio": m_ratio})
        print(f"{name:34s} {median * 1e3:9.1f} {t_ratio:8.2f} "
              f"{min(times[name]) * 1e3:7.0f}..{max(times[name]) * 1e3:<7.0f} "
              f"{'-' if mem is None else f'{mem / 2**20:.0f}':>9s} "
              f"{'-' if m_ratio is None else f'{m_ratio:.2f}':>8s}  {target_note(name, t_ratio, m_ratio)}")
    memory_kind = ("torch.cuda.max_memory_allocated, one trainer alive" if device.type == "cuda" else
                   "peak RSS added by building + stepping the trainer, child process per trainer")
    print(f"\nmemory: {memory_kind}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {args.threads}; "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}; python "
          f"{platform.python_version()}, torch {torch.__version__}; load average {load_start} -> {load_end}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": args.config, "patch": configuration["patch_size"], "batch": configuration["batch_size"],
            "device": str(device), "steps": args.steps, "warmup": args.warmup, "load_start": load_start,
            "load_end": load_end, "cpu": cpu_model(), "torch": torch.__version__, "rows": rows,
            "notes": notes + [f"{n} not registered" for n in missing]}, indent=1))

    if args.profile:
        if args.profile not in trainers:
            print(f"note: --profile {args.profile}: not among the built trainers")
        else:
            profile_trainer(trainers[args.profile], batches[args.profile], device, max(2, min(args.steps, 3)))


if __name__ == "__main__":
    main()
