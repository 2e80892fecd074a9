"""Shared fixtures: a tiny BraTS dataset (phantom cases on real anatomy, converted by our converter), planned,
preprocessed and trained once per test session through nnU-Net's real commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID}_TinyBraTS"
N_CASES = 6
PHANTOM_SPACING_MM = 7.0  # 28 x 33 x 27 voxels on ICBM152 anatomy
CASE_IDS = [f"BraTS2021_{i:05d}" for i in range(N_CASES)]


def bin_dir() -> Path:
    return Path(sys.executable).parent


def write_tiny_dataset(work_dir: Path, dataset_id: int = DATASET_ID, name: str = "TinyBraTS") -> Path:
    """Phantom cases in the BraTS 2021 layout, converted by our converter into an nnU-Net raw dataset (WT/TC/ET
    regions) under ``$nnUNet_raw``: the path a user's data takes."""
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    source = work_dir / f"phantom_source_{dataset_id}"
    write_phantom_dataset(source, N_CASES, "brats2021", spacing=PHANTOM_SPACING_MM, seed=0, progress=False)
    convert_dataset("brats2021", source, dataset_id, name=name, progress=False)
    return Path(os.environ["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_{name}"


def nnunet_env(root: Path, n_proc_da: str = "0") -> dict:
    """Environment for nnU-Net's commands: the three roots under ``root``, our trainers, CPU-friendly settings."""
    from nnunet_missingmod.training.registry import trainer_dir
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=trainer_dir(), nnUNet_compile="f",
               nnUNet_n_proc_DA=n_proc_da, nnUNet_def_n_proc="1", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1",
               # predict in the calling process unless a test asks for background workers (-npp/-nps): each worker
               # imports torch (~7 s here); tests/inference/test_pipeline.py covers the pipelined path
               nnUNet_npp="0", nnUNet_nps="0")
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
    raw = write_tiny_dataset(nnunet_root)
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
