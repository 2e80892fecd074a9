"""Shared fixtures: a tiny BraTS-like dataset, planned, preprocessed and trained once per test session through
nnU-Net's real commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID}_TinyBraTS"
N_CASES = 6
SHAPE = (28, 32, 30)  # numpy order (z, y, x)
SPACING = (1.2, 1.0, 1.0)  # SimpleITK order (x, y, z)

# Relative intensities per tissue (WM, GM, CSF, oedema, non-enhancing core, enhancing) for T1, T1ce, T2, FLAIR,
# after data_and_metrics.md §1.3: enhancing tumour bright only on T1ce, oedema brightest on FLAIR.
CONTRASTS = np.array([
    # WM    GM    CSF   ED    NCR   ET
    [1.00, 0.72, 0.38, 0.70, 0.45, 0.75],  # T1
    [1.00, 0.72, 0.38, 0.70, 0.45, 1.80],  # T1ce
    [0.35, 0.52, 1.00, 0.78, 0.90, 0.65],  # T2
    [1.00, 1.20, 0.30, 1.90, 0.80, 1.45],  # FLAIR
])


def bin_dir() -> Path:
    return Path(sys.executable).parent


def make_tiny_case(seed: int):
    """Four channels (T1, T1ce, T2, FLAIR) and an nnU-Net label map (0 bg, 1 oedema, 2 core, 3 enhancing)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain_r = np.sqrt((zz / 0.9) ** 2 + (yy / 0.85) ** 2 + (xx / 0.88) ** 2)
    brain = brain_r < 1
    tissue = np.where(brain_r < 0.55, 0, np.where(brain_r < 0.85, 1, 2))  # WM core, GM ring, CSF rim
    centre = rng.uniform(-0.3, 0.3, 3)
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    size = rng.uniform(0.22, 0.32)
    label = np.zeros(SHAPE, np.uint8)
    label[(r < size * 1.8) & brain] = 1
    label[r < size] = 3
    label[r < size * 0.6] = 2
    tissue = np.where(label == 1, 3, np.where(label == 2, 4, np.where(label == 3, 5, tissue)))
    images = []
    for c in range(4):
        img = CONTRASTS[c][tissue] * rng.uniform(0.9, 1.1) * 400
        img = img + rng.normal(0, 12, SHAPE)
        images.append(np.where(brain, np.clip(img, 1, None), 0).astype(np.float32))
    return images, label


def write_nifti(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))


def write_tiny_dataset(raw_root: Path, dataset_name: str = DATASET_NAME, n_cases: int = N_CASES,
                       seed: int = 0) -> Path:
    """nnU-Net raw dataset with BraTS regions (as nnU-Net's own BraTS converter writes them)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    out = raw_root / dataset_name
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    for i in range(n_cases):
        images, label = make_tiny_case(seed + i)
        case = f"tiny_{i:03d}"
        for c, img in enumerate(images):
            write_nifti(img, out / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        write_nifti(label, out / "labelsTr" / f"{case}.nii.gz")
    generate_dataset_json(str(out), channel_names={0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"},
                          labels={"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                                  "enhancing tumor": (3,)},
                          num_training_cases=n_cases, file_ending=".nii.gz", regions_class_order=(1, 2, 3),
                          dataset_name=dataset_name)
    return out


def nnunet_env(root: Path, n_proc_da: str = "0") -> dict:
    """Environment for nnU-Net's commands: the three roots under ``root``, our trainers, CPU-friendly settings."""
    from nnunet_missingmod.training.cli import trainer_dir
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=trainer_dir(), nnUNet_compile="f",
               nnUNet_n_proc_DA=n_proc_da, nnUNet_def_n_proc="1", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    return env


def run_command(args, env, cwd=None, expect_ok=True) -> subprocess.CompletedProcess:
    exe = args[0] if os.path.isabs(args[0]) or os.sep in args[0] else str(bin_dir() / args[0])
    result = subprocess.run([exe, *map(str, args[1:])], env=env, cwd=cwd, capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory) -> Path:
    """Session-wide nnU-Net roots; sets the environment variables for in-process use too (paths are lazy)."""
    root = tmp_path_factory.mktemp("nnunet")
    for key, value in nnunet_env(root).items():
        if key.startswith("nnUNet_"):
            os.environ[key] = value
    return root


@pytest.fixture(scope="session")
def tiny_preprocessed(nnunet_root) -> Path:
    """The tiny dataset, written and then planned and preprocessed by ``nnUNetv2_plan_and_preprocess``."""
    raw = write_tiny_dataset(nnunet_root / "raw")
    # nnUNet_n_proc_DA=0 crashes planning in 2.8.1 (torch.set_num_threads(0)), hence 1 here.
    run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", "1",
                 "--verify_dataset_integrity"], nnunet_env(nnunet_root, n_proc_da="1"))
    return raw


@pytest.fixture(scope="session")
def trained_dropout_model(nnunet_root, tiny_preprocessed) -> Path:
    """Fold 0 of ``ModalityDropoutTrainer_debug``, trained by ``nnUNetv2_train`` on the CPU."""
    run_command(["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", "ModalityDropoutTrainer_debug",
                 "-device", "cpu"], nnunet_env(nnunet_root))
    return nnunet_root / "results" / DATASET_NAME / "ModalityDropoutTrainer_debug__nnUNetPlans__3d_fullres"


def plans_and_dataset_json(nnunet_root: Path):
    base = nnunet_root / "preprocessed" / DATASET_NAME
    return json.loads((base / "nnUNetPlans.json").read_text()), json.loads((base / "dataset.json").read_text())
