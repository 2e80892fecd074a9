"""Shared fixtures: a tiny BraTS dataset (phantom cases on real anatomy, converted by our converter), planned,
preprocessed and trained once per test session through nnU-Net's real commands; a stock checkpoint on its plans (a
teacher); and an untrained tiny model folder for predictor tests that need no trained model. Test modules take these
by name (pytest finds them here), never by importing another test module."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist the workers share the cores: one thread each, here and in every command a test starts (a
# worker's torch threads would otherwise compete with the other worker's). One process alone gives its commands two.
TEST_THREADS = "1" if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else "2"
if TEST_THREADS == "1":
    os.environ["OMP_NUM_THREADS"] = TEST_THREADS


DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID}_TinyBraTS"
N_CASES = 6
PHANTOM_SPACING_MM = 7.0  # 28 x 33 x 27 voxels on ICBM152 anatomy
CASE_IDS = [f"BraTS2021_{i:05d}" for i in range(N_CASES)]

# the untrained model folder of ``model_folder``
TRAINER = "nnUNetTrainer"  # stock: the tests that use it are about the predictor, not about any method's network
SHAPE_ZYX = (12, 14, 16)
CHANNEL_NAMES = {str(i): m for i, m in enumerate(("T1", "T1ce", "T2", "FLAIR"))}  # modalities.MODALITIES
LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


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
    from nnunet_missingmod.demo.pipeline import CPU_ALLOCATOR_ENV
    from nnunet_missingmod.training.naming import trainer_dir
    env = dict(os.environ, **CPU_ALLOCATOR_ENV)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_extTrainer=trainer_dir(), nnUNet_compile="f",
               nnUNet_n_proc_DA=n_proc_da, nnUNet_def_n_proc="1", OMP_NUM_THREADS=TEST_THREADS, PYTHONUNBUFFERED="1",
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
    # nnUNet_n_proc_DA=0 crashes planning in 2.8.1 (torch.set_num_threads(0)), hence 1 here. One fingerprint process
    # (nnU-Net's default is 8), as the demo uses on a CPU: the same fingerprint, 38 s instead of 50-57 s here, and
    # 5 GB of memory at its peak instead of 7-11 GB (every process holds its share of the sampled intensities).
    run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-npfp", "1", "-np", "1",
                 "--verify_dataset_integrity"], nnunet_env(nnunet_root, n_proc_da="1"))
    return raw


def train_model(nnunet_root: Path, trainer: str) -> Path:
    """Fold 0 of ``trainer`` on the tiny dataset, trained by ``nnUNetv2_train`` on the CPU; its model folder."""
    run_command(["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
                nnunet_env(nnunet_root))
    return nnunet_root / "results" / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="session")
def trained_dropout_model(nnunet_root, tiny_preprocessed) -> Path:
    """Fold 0 of ``ModalityDropoutTrainer_debug``."""
    return train_model(nnunet_root, "ModalityDropoutTrainer_debug")


def plans_and_dataset_json(nnunet_root: Path):
    base = nnunet_root / "preprocessed" / DATASET_NAME
    return json.loads((base / "nnUNetPlans.json").read_text()), json.loads((base / "dataset.json").read_text())


@pytest.fixture(scope="session")
def stock_run(nnunet_root, tiny_preprocessed, tmp_path_factory):
    """A stock ``nnUNetTrainer`` checkpoint after one step on the tiny plans (what a user already has, at toy size),
    and its network's parameters as one flat tensor: the teacher of the checkpoint-teacher trainers."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from trainer_helpers import make_batch, make_trainer, module_parameters
    stock = make_trainer(nnunet_root, nnUNetTrainer)
    stock.on_train_epoch_start()
    stock.train_step(make_batch(stock))
    path = tmp_path_factory.mktemp("stock") / "checkpoint_final.pth"
    stock.save_checkpoint(str(path))
    return path, module_parameters(stock.network)


def model_folder_plans() -> dict:
    """Hand-written plans of a 2-stage U-Net on 8x8x8 patches (``model_folder``): predicts in seconds."""
    arch = {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    return {
        "dataset_name": "Dataset998_Fast", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0] * 3,
        "original_median_shape_after_transp": list(SHAPE_ZYX), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "by hand",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): {
            "max": 200.0, "mean": 100.0, "median": 100.0, "min": 0.0, "percentile_00_5": 50.0,
            "percentile_99_5": 150.0, "std": 20.0} for c in range(4)},
        "configurations": {"3d_fullres": {
            "data_identifier": "fast", "preprocessor_name": "DefaultPreprocessor", "batch_size": 1,
            "patch_size": [8, 8, 8], "median_image_size_in_voxels": list(SHAPE_ZYX), "spacing": [1.0] * 3,
            "normalization_schemes": ["ZScoreNormalization"] * 4, "use_mask_for_norm": [False] * 4,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "batch_dice": False,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }},
    }


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A real nnU-Net model folder that was never trained: an untrained tiny U-Net (``model_folder_plans``) saved the
    way ``nnUNetv2_train`` saves it (plans.json, dataset.json, fold_0/checkpoint_final.pth), for tests of
    ``predict`` and ``evaluate`` that need a model but not a trained one."""
    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_missingmod.inference.predictor import ensure_trainer_lookup
    folder = tmp_path_factory.mktemp("fast_model")
    plans = model_folder_plans()
    dataset_json = {"channel_names": CHANNEL_NAMES, "labels": LABELS, "regions_class_order": [1, 2, 3],
                    "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    ensure_trainer_lookup()
    plans_manager = PlansManager(plans)
    torch.manual_seed(0)
    network = recursive_find_trainer_class_by_name(TRAINER).build_network_architecture(
        plans_manager, plans_manager.get_configuration("3d_fullres"), 4, 3, enable_deep_supervision=False)
    (folder / "fold_0").mkdir()
    torch.save({"network_weights": network.state_dict(), "trainer_name": TRAINER,
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="module")
def tiny_model(model_folder) -> Path:
    """``model_folder`` under the name tests/test_layering.py asks for."""
    return model_folder
