"""``predict --full-set-model``: complete cases go to the full-set model (exactly its own, stock, segmentation),
every other case to the robust model; the sidecar names the model. Two real trained nnU-Net model folders: the
session's ModalityDropoutTrainer_debug model (robust) and a stock-trainer copy of it with other weights."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import nnunet_env, run_command

RAW_SUFFIX = ("_0000", "_0001", "_0002", "_0003")  # T1, T1ce, T2, FLAIR


@pytest.fixture(scope="module")
def full_set_model(trained_dropout_model, tmp_path_factory) -> Path:
    """A stock nnUNetTrainer model folder: the trained model with its weights changed, so that the two models'
    segmentations differ."""
    folder = tmp_path_factory.mktemp("full_set") / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(trained_dropout_model, folder)
    checkpoint_file = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    generator = torch.Generator().manual_seed(0)
    checkpoint["network_weights"] = {
        name: value + 0.5 * value.std().nan_to_num(1.0) * torch.randn(value.shape, generator=generator)
        if value.is_floating_point() and value.numel() > 1 else value
        for name, value in checkpoint["network_weights"].items()}
    torch.save(checkpoint, checkpoint_file)
    return folder


def _inputs(images: Path, folder: Path) -> Path:
    """complete: all four; no_t1ce: T1ce absent; constant: a constant T2 (missing after loading)."""
    folder.mkdir(parents=True)
    for case, source, suffixes in (("complete", "BraTS2021_00001", RAW_SUFFIX),
                                   ("no_t1ce", "BraTS2021_00002", ("_0000", "_0002", "_0003")),
                                   ("constant", "BraTS2021_00003", RAW_SUFFIX)):
        for suffix in suffixes:
            shutil.copy(images / f"{source}{suffix}.nii.gz", folder / f"{case}{suffix}.nii.gz")
    t2 = sitk.ReadImage(str(folder / "constant_0002.nii.gz"))
    flat = sitk.GetImageFromArray(np.full_like(sitk.GetArrayFromImage(t2), 5))
    flat.CopyInformation(t2)
    sitk.WriteImage(flat, str(folder / "constant_0002.nii.gz"))
    return folder


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _ours(env, *args, expect_ok=True):
    return run_command(["nnunet-missingmod", "predict", *args, "-f", "0", "-device", "cpu", "--disable_tta"], env,
                       expect_ok=expect_ok)


def test_complete_cases_get_the_full_set_models_segmentation_and_the_others_the_robust_ones(
        nnunet_root, tiny_preprocessed, trained_dropout_model, full_set_model, tmp_path):
    env = nnunet_env(nnunet_root)
    inputs = _inputs(tiny_preprocessed / "imagesTr", tmp_path / "in")
    out = tmp_path / "routed"
    result = _ours(env, "-i", inputs, "-o", out, "-m", trained_dropout_model, "--full-set-model", full_set_model,
                   "-npp", "1", "-nps", "1")  # background processes (the tests' environment defaults to none)
    assert "3 of 3 cases predicted" in result.stdout
    assert "complete: T1+T1ce+T2+FLAIR (missing: none) [full-set model]" in result.stdout

    complete_only = tmp_path / "complete_in"
    complete_only.mkdir()
    for path in inputs.glob("complete_*"):
        shutil.copy(path, complete_only / path.name)
    run_command(["nnUNetv2_predict_from_modelfolder", "-i", complete_only, "-o", tmp_path / "stock", "-m",
                 full_set_model, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    _ours(env, "-i", inputs, "-o", tmp_path / "robust", "-m", trained_dropout_model, "-npp", "0", "-nps", "0")

    assert np.array_equal(_seg(out / "complete.nii.gz"), _seg(tmp_path / "stock" / "complete.nii.gz"))
    assert not np.array_equal(_seg(tmp_path / "robust" / "complete.nii.gz"), _seg(out / "complete.nii.gz")), \
        "the two models agree on the complete case: the test could not tell which one segmented it"
    for case in ("no_t1ce", "constant"):
        assert np.array_equal(_seg(out / f"{case}.nii.gz"), _seg(tmp_path / "robust" / f"{case}.nii.gz")), case

    in_process = tmp_path / "routed_in_process"  # the same routing without background processes
    _ours(env, "-i", inputs, "-o", in_process, "-m", trained_dropout_model, "--full-set-model", full_set_model,
          "-npp", "0", "-nps", "0")
    for case in ("complete", "no_t1ce", "constant"):
        assert np.array_equal(_seg(in_process / f"{case}.nii.gz"), _seg(out / f"{case}.nii.gz")), case
        assert (in_process / f"{case}.modalities.json").read_text().replace(str(in_process), str(out)) == \
            (out / f"{case}.modalities.json").read_text(), case

    sidecars = {case: json.loads((out / f"{case}.modalities.json").read_text())
                for case in ("complete", "no_t1ce", "constant")}
    assert sidecars["complete"]["model"] == "full-set" and sidecars["complete"]["trainer"] == "nnUNetTrainer"
    assert sidecars["complete"]["model_folder"] == str(full_set_model)
    assert sidecars["complete"]["trained_for_missing_modalities"] is False
    for case in ("no_t1ce", "constant"):
        assert sidecars[case]["model"] == "robust" and sidecars[case]["trainer"] == "ModalityDropoutTrainer_debug"
        assert sidecars[case]["model_folder"] == str(trained_dropout_model)
    assert sidecars["constant"]["missing"] == ["T2"]


def test_a_bad_full_set_model_folder_is_one_clear_error_before_any_work(nnunet_root, tiny_preprocessed,
                                                                        trained_dropout_model, tmp_path):
    env = nnunet_env(nnunet_root)
    args = ["-i", tiny_preprocessed / "imagesTr", "-m", trained_dropout_model]
    missing = _ours(env, *args, "-o", tmp_path / "a", "--full-set-model", tmp_path / "nowhere", expect_ok=False)
    assert missing.returncode == 2 and f"--full-set-model: model folder {tmp_path / 'nowhere'} does not exist" \
        in missing.stderr
    no_fold = tmp_path / "no_fold"
    no_fold.mkdir()
    for name in ("plans.json", "dataset.json"):
        shutil.copy(Path(trained_dropout_model) / name, no_fold / name)
    unfit = _ours(env, *args, "-o", tmp_path / "b", "--full-set-model", no_fold, expect_ok=False)
    assert unfit.returncode == 2 and f"model folder {no_fold}: no checkpoint_final.pth for fold(s) 0" in unfit.stderr
    assert not list((tmp_path / "b").glob("*.nii.gz"))
