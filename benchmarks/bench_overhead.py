"""Overhead of the missing-modality machinery over stock nnU-Net, side by side in one run.

1. ``train_step``: stock ``nnUNetTrainer`` vs ``ModalityDropoutTrainer`` (mask sampling + zeroing on the device) on
   the same plans, network initialisation and batches, alternating, medians after a warm-up.
2. Prediction of the same cases: stock ``nnUNetPredictor.predict_from_files_sequential`` vs
   ``MissingModalityPredictor.predict_from_files`` (per-file checks, sidecar), all sequences present, same network.

Data: phantom cases (ICBM152 anatomy) converted with our converter and planned by nnU-Net, in a temporary folder.

    .venv/bin/python benchmarks/bench_overhead.py [--spacing 4] [--repeats 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _setup(root: Path, spacing: float) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(root / name)
    os.environ.update(nnUNet_compile="f", nnUNet_n_proc_DA="1", nnUNet_def_n_proc="2")
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    write_phantom_dataset(root / "source", 6, "brats2021", spacing=spacing, seed=0, progress=False)
    convert_dataset("brats2021", root / "source", 950, name="Bench", progress=False)
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", "950", "-c",
                    "3d_fullres", "-np", "2"], check=True, capture_output=True)


def _trainer(root: Path, cls):
    import torch
    base = root / "nnUNet_preprocessed" / "Dataset950_Bench"
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((base / "dataset.json").read_text())
    torch.manual_seed(0)
    trainer = cls(copy.deepcopy(plans), "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch(trainer, seed: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(trainer.batch_size, 4, *patch, generator=g)
    labels = torch.randint(0, 4, (trainer.batch_size, 1, *patch), generator=g)
    regions = torch.cat([labels >= 1, labels >= 2, labels == 3], dim=1).float()
    target = [torch.nn.functional.interpolate(regions, size=[round(p * s) for p, s in zip(patch, scale)],
                                              mode="nearest-exact").bool()
              for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": target, "keys": []}


def _median_alternating(functions: dict, repeats: int) -> dict:
    times = {name: [] for name in functions}
    for name, fn in functions.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size in mm (4: 50x59x48)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    from nnunet_missingmod.training.dropout import ModalityDropoutTrainer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _setup(root, args.spacing)
        stock, ours = _trainer(root, nnUNetTrainer), _trainer(root, ModalityDropoutTrainer)
        batches = [_batch(stock, s) for s in range(2)]
        step = _median_alternating({"stock": lambda: stock.train_step(batches[0]),
                                    "dropout": lambda: ours.train_step(batches[1])}, args.repeats)

        images = root / "nnUNet_raw" / "Dataset950_Bench" / "imagesTr"
        stock.set_deep_supervision_enabled(False)  # as for inference
        stock.network.eval()
        predictors = {}
        for name, cls in (("stock", nnUNetPredictor), ("ours", MissingModalityPredictor)):
            predictor = cls(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
            predictor.manual_initialization(stock.network, stock.plans_manager, stock.configuration_manager,
                                            [stock.network.state_dict()], stock.dataset_json,
                                            "ModalityDropoutTrainer", None)
            predictors[name] = predictor
        out = root / "pred"
        (out / "stock").mkdir(parents=True)
        predict = _median_alternating({
            "stock": lambda: predictors["stock"].predict_from_files_sequential(str(images), str(out / "stock")),
            "ours": lambda: predictors["ours"].predict_from_files(str(images), str(out / "ours"))},
            max(3, args.repeats // 2))

    patch = "x".join(map(str, stock.configuration_manager.patch_size))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"torch threads {args.threads}; python {platform.python_version()}, torch {torch.__version__}")
    print(f"phantom at {args.spacing} mm, 6 cases; patch {patch}, batch {stock.batch_size}")
    print(f"train_step  stock {step['stock'] * 1e3:8.1f} ms   ModalityDropoutTrainer {step['dropout'] * 1e3:8.1f} ms"
          f"   ratio {step['dropout'] / step['stock']:.3f}")
    print(f"predict 6   stock {predict['stock']:8.2f} s    MissingModalityPredictor {predict['ours']:8.2f} s"
          f"   ratio {predict['ours'] / predict['stock']:.3f}")


if __name__ == "__main__":
    main()
