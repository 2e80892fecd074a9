"""``nnunet-missingmod predict`` vs ``nnUNetv2_predict`` on complete cases, side by side in one run (goal: <= 1.05x).

Both are the real commands with their default multi-process settings (``-npp 3 -nps 3``: nnU-Net's, and ours,
which honours them with nnU-Net's preprocessing iterator and export pool), on the same model folder and input
folder, alternating which goes first in each round; wall time of the whole command (process start, model load,
every case). The segmentations of both must be identical (checked, voxel for voxel).

Data: ``--cases`` phantom cases (ICBM152 anatomy) at ``--spacing`` mm (2 mm: 98x116x94 voxels, four sequences),
converted by our converter, fingerprinted and planned by nnU-Net (``nnUNetv2_extract_fingerprint``,
``nnUNetv2_plan_experiment``). The model: nnU-Net's planned 3d_fullres configuration with a small U-Net and patch
(``--features``, ``--patch``) so that a CPU run takes minutes, saved untrained as nnUNetv2_train saves a model
(plans.json, dataset.json, fold_0/checkpoint_final.pth, trainer ``nnUNetTrainer``): the weights change neither
side's work. Reading, preprocessing, resampling and export run at the real image size.

    .venv/bin/python benchmarks/bench_predict.py [--cases 20] [--spacing 2] [--rounds 2] [--device cpu]
        [--tta] [--work-dir DIR]

On a GPU: ``--device cuda --tta --patch 128`` (the network's work then dominates less than reading and export on
the CPU workers, which is where the pipelining matters).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from machine import cpu_model

DATASET_ID, DATASET = 951, "Dataset951_BenchPredict"


def _environment(root: Path) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(root / name)
        os.environ[name] = env[name]
    env.update(nnUNet_compile="f", PYTHONUNBUFFERED="1")
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _setup(root: Path, cases: int, spacing: float, env: dict) -> None:
    """The phantom dataset, converted and planned (reused from ``--work-dir``)."""
    plans = root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json"
    if plans.is_file():
        return
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    write_phantom_dataset(root / "source", cases, "brats2021", spacing=spacing, seed=0, progress=False)
    convert_dataset("brats2021", root / "source", DATASET_ID, name="BenchPredict", progress=False)
    for command in (["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", "2"],
                    ["nnUNetv2_plan_experiment", "-d", str(DATASET_ID)]):
        subprocess.run([_bin(command[0]), *command[1:]], check=True, capture_output=True, env=env)


def _write_model(root: Path, features: int, patch: int) -> Path:
    """nnU-Net's 3d_fullres plans with a small U-Net (3 stages) and a ``patch``^3 patch, saved untrained."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    base = root / "nnUNet_preprocessed" / DATASET
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    configuration["patch_size"] = [patch] * 3
    arch = configuration["architecture"]["arch_kwargs"]
    arch.update(n_stages=3, features_per_stage=[features, 2 * features, 4 * features], kernel_sizes=[[3, 3, 3]] * 3,
                strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
    folder = root / "model" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    dataset_json = json.loads((base / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    manager = PlansManager(plans)
    label_manager = manager.get_label_manager(dataset_json)
    torch.manual_seed(0)
    network = recursive_find_trainer_class_by_name("nnUNetTrainer").build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), len(dataset_json["channel_names"]),
        label_manager.num_segmentation_heads, enable_deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _commands(images: Path, model: Path, out: Path, args) -> dict:
    common = ["-i", str(images), "-m", str(model), "-f", "0", "-device", args.device, "--disable_progress_bar"]
    common += [] if args.tta else ["--disable_tta"]
    return {"nnUNetv2_predict": [_bin("nnUNetv2_predict_from_modelfolder"), *common, "-o", str(out / "stock")],
            "nnunet-missingmod predict": [_bin("nnunet-missingmod"), "predict", *common, "-o", str(out / "ours")]}


def _timed(command, env) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    return elapsed


def _identical(a: Path, b: Path) -> int:
    import numpy as np
    import SimpleITK as sitk
    files = sorted(p.name for p in a.glob("*.nii.gz"))
    assert files == sorted(p.name for p in b.glob("*.nii.gz")), "the two commands wrote different cases"
    for name in files:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / name))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / name)))), name
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20, help="complete phantom cases (default 20)")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm (2: 98x116x94)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the order alternates (default 2)")
    parser.add_argument("--features", type=int, default=8, help="features of the U-Net's first stage (default 8)")
    parser.add_argument("--patch", type=int, default=64, help="patch edge in voxels (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA on (both commands' default); default "
                                                           "here: --disable_tta")
    parser.add_argument("--work-dir", default=None, help="keep the planned phantom dataset here and reuse it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work_dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        env = _environment(root)
        t0 = time.perf_counter()
        _setup(root, args.cases, args.spacing, env)
        model = _write_model(root, args.features, args.patch)
        images = root / "nnUNet_raw" / DATASET / "imagesTr"
        n_cases = len(list(images.glob("*_0000.nii.gz")))
        print(f"set-up {time.perf_counter() - t0:.0f} s; {n_cases} cases in {images}")
        load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        times = {}
        for round_ in range(args.rounds):
            commands = list(_commands(images, model, Path(tmp) / f"round{round_}", args).items())
            for name, command in (commands if round_ % 2 == 0 else commands[::-1]):
                times.setdefault(name, []).append(_timed(command, env))
                print(f"round {round_ + 1}: {name:26s} {times[name][-1]:7.1f} s", flush=True)
            n_equal = _identical(Path(tmp) / f"round{round_}" / "stock", Path(tmp) / f"round{round_}" / "ours")
        load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    import torch
    stock, ours = (statistics.median(times[k]) for k in ("nnUNetv2_predict", "nnunet-missingmod predict"))
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, device {args.device}; python "
          f"{platform.python_version()}, torch {torch.__version__}; load average {load_start} -> {load_end}")
    print(f"{n_cases} complete cases at {args.spacing} mm, patch {args.patch}^3, {args.features} features, TTA "
          f"{'on' if args.tta else 'off'}, -npp 3 -nps 3 (both defaults); segmentations identical: {n_equal} files")
    for name, values in times.items():
        print(f"  {name:26s} median {statistics.median(values):7.1f} s  ({', '.join(f'{v:.1f}' for v in values)})")
    print(f"  ratio ours / stock: {ours / stock:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
