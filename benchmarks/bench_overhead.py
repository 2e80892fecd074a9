"""Overhead of the missing-modality machinery over stock nnU-Net, side by side in one run.

1. ``train_step``: stock ``nnUNetTrainer`` vs ``ModalityDropoutTrainer`` (mask sampling + zeroing on the device) on
   the same plans, network initialisation and batches, alternating, medians after a warm-up.
2. Prediction of the same cases with the same network, no TTA, in this process, one case after the other:

   * ``stock``: ``nnUNetPredictor.predict_from_files_sequential(list_of_lists, output files)``;
   * ``ours``: ``MissingModalityPredictor.predict_from_files(list_of_lists, output folder)`` (per-file checks incl.
     the nibabel NaN/truncation check, zeroing of absent channels, sidecars), all sequences present; the
     segmentations must equal stock's (checked);
   * ``ours, k present``: the same with only k = 3, 2, 1 sequences (``modalities=``: the others are not read);
   * ``stock, folder input``: what the previous version of this script timed for stock: the *folder* as input.
     nnunetv2 2.8.1 then lists the files with ``create_lists_from_splitted_dataset_folder``, which starts a
     ``multiprocessing.Pool(12)`` (forking 12 workers of this torch process) just to match file names, even in
     the "sequential" path; ``Pool listing`` times that call alone. Ours discovers files in-process. That fixed
     cost, not prediction work, made ours look faster (0.64x) on 6 tiny cases.

   Both sides get the same pre-listed files (nnU-Net's list-of-lists input), so both do the same work: read,
   preprocess, sliding window, export. nnU-Net clears its Gaussian cache at the end of every call, so the variant
   that follows stock recomputes it too; the variants are interleaved in a fixed order, median of ``--repeats``.

Data: phantom cases (ICBM152 anatomy) converted with our converter and planned by nnU-Net, in a temporary folder
(or ``--work-dir``, kept and reused: planning takes about a minute).

    .venv/bin/python benchmarks/bench_overhead.py [--spacing 4] [--repeats 5] [--threads 1] [--work-dir DIR]
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
from machine import cpu_model, load_average

DATASET_ID, DATASET = 950, "Dataset950_Bench"
SUBSETS_PRESENT = {3: "T1ce,T2,FLAIR", 2: "T1ce,FLAIR", 1: "FLAIR"}


def _environment(root: Path) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(root / name)
    os.environ.update(nnUNet_compile="f", nnUNet_n_proc_DA="1", nnUNet_def_n_proc="2")


def _setup(root: Path, spacing: float) -> None:
    if (root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        return  # --work-dir of an earlier run
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    write_phantom_dataset(root / "source", 6, "brats2021", spacing=spacing, seed=0, progress=False)
    convert_dataset("brats2021", root / "source", DATASET_ID, name="Bench", progress=False)
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                    "3d_fullres", "-np", "2"], check=True, capture_output=True)


def _trainer(root: Path, cls):
    import torch
    base = root / "nnUNet_preprocessed" / DATASET
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
    for fn in functions.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), min(values), max(values)) for name, values in times.items()}


def _predictor(cls, trainer, trainer_name: str):
    import torch
    predictor = cls(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    try:
        predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                        [trainer.network.state_dict()], trainer.dataset_json, trainer_name, None)
    except Exception as e:  # noqa: BLE001 - the trainer lookup imports every trainer module, one may be half-written
        print(f"note: trainer lookup of {trainer_name} failed ({type(e).__name__}: {e}); using nnUNetTrainer "
              f"(changes only a warning text in the sidecars)")
        predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                        [trainer.network.state_dict()], trainer.dataset_json, "nnUNetTrainer", None)
    return predictor


def _quiet(fn):
    """Run fn with stdout silenced (nnU-Net prints per case); returns its result."""
    import contextlib
    def wrapped():
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return fn()
    return wrapped


def _same_segmentations(folder_a: Path, folder_b: Path) -> int:
    import SimpleITK as sitk
    import numpy as np
    files = sorted(p.name for p in folder_a.glob("*.nii.gz"))
    assert files and files == sorted(p.name for p in folder_b.glob("*.nii.gz")), (folder_a, folder_b)
    for name in files:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(folder_a / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(folder_b / name)))
        assert np.array_equal(a, b), f"{name}: stock and ours differ"
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size in mm (4: 50x59x48)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: robust on a loaded shared machine, where 2 threads spin-wait)")
    parser.add_argument("--work-dir", default=None, help="keep the planned phantom dataset here and reuse it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work_dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        _environment(root)
        _setup(root, args.spacing)
        run(root, args)


def run(root: Path, args) -> None:
    import shutil
    import torch
    torch.set_num_threads(args.threads)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer

    load_start = load_average()
    stock, ours = _trainer(root, nnUNetTrainer), _trainer(root, ModalityDropoutTrainer)
    batches = [_batch(stock, s) for s in range(2)]
    step = _median_alternating({"stock": lambda: stock.train_step(batches[0]),
                                "dropout": lambda: ours.train_step(batches[1])}, args.repeats)

    images = root / "nnUNet_raw" / DATASET / "imagesTr"
    cases = sorted({p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz")})
    lists = [[str(images / f"{case}_{c:04d}.nii.gz") for c in range(4)] for case in cases]
    stock.set_deep_supervision_enabled(False)  # as for inference
    stock.network.eval()
    predictors = {"stock": _predictor(nnUNetPredictor, stock, "nnUNetTrainer"),
                  "ours": _predictor(MissingModalityPredictor, stock, "ModalityDropoutTrainer")}
    out = root / "pred"
    shutil.rmtree(out, ignore_errors=True)
    for name in ("stock", "stock_folder", "ours", *(f"ours_{k}" for k in SUBSETS_PRESENT)):
        (out / name).mkdir(parents=True)
    results = {}

    def ours_predict(key, modalities=None):
        results[key] = predictors["ours"].predict_from_files(lists, str(out / key), modalities=modalities)

    functions = {
        "stock, folder input (old bench)": lambda: predictors["stock"].predict_from_files_sequential(
            str(images), str(out / "stock_folder")),
        "Pool listing alone": lambda: create_lists_from_splitted_dataset_folder(str(images), ".nii.gz"),
        "stock": lambda: predictors["stock"].predict_from_files_sequential(
            lists, [str(out / "stock" / case) for case in cases]),
        "ours": lambda: ours_predict("ours"),
    }
    for k, modalities in SUBSETS_PRESENT.items():
        functions[f"ours, {k} present ({modalities.replace(',', '+')})"] = \
            lambda k=k, modalities=modalities: ours_predict(f"ours_{k}", modalities)
    predict = _median_alternating({name: _quiet(fn) for name, fn in functions.items()}, args.repeats)
    load_end = load_average()
    failures = [r.error for rs in results.values() for r in rs if not r.ok]
    assert not failures, failures
    n_equal = _same_segmentations(out / "stock", out / "ours")

    patch = "x".join(map(str, stock.configuration_manager.patch_size))
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {args.threads}; python "
          f"{platform.python_version()}, torch {torch.__version__}; load average {load_start} -> {load_end}")
    print(f"phantom at {args.spacing} mm, {len(cases)} cases; patch {patch}, batch {stock.batch_size}; "
          f"median (min..max) of {args.repeats} after a warm-up")
    s = step["stock"][0]
    print(f"train_step  stock {s * 1e3:8.1f} ms   ModalityDropoutTrainer {step['dropout'][0] * 1e3:8.1f} ms   "
          f"ratio {step['dropout'][0] / s:.3f}")
    reference = predict["stock"][0]
    print(f"predict {len(cases)} cases (stock and ours full-set segmentations identical: {n_equal} files)")
    for name, (median, low, high) in predict.items():
        print(f"  {name:36s} {median:7.2f} s  ({low:.2f}..{high:.2f})  x stock {median / reference:.3f}")


if __name__ == "__main__":
    main()
