"""`nnunet-missingmod predict` and MissingModalityPredictor on a model trained by ModalityDropoutTrainer_debug."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import run_in_process
from conftest import DATASET_ID, nnunet_env, run_command
from presence_helpers import record_presence

RAW_SUFFIX = {"T1": "_0000", "T1ce": "_0001", "T2": "_0002", "FLAIR": "_0003"}


def _cli(nnunet_root, *args, expect_ok=True):
    """``nnunet-missingmod predict`` in this process (the console command's own ``main``)."""
    result = run_in_process(["predict", *args, "-device", "cpu", "--disable_tta"], nnunet_env(nnunet_root))
    if expect_ok:
        assert result.returncode == 0, f"predict failed ({result.returncode}):\n{result.stdout[-4000:]}\n" \
                                       f"{result.stderr[-6000:]}"
    return result


def _model_args():
    return ["-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", "ModalityDropoutTrainer_debug"]


def _copy_case(images_dir: Path, case: str, dst: Path, modalities=("T1", "T1ce", "T2", "FLAIR"), rename=None):
    dst.mkdir(parents=True, exist_ok=True)
    for m in modalities:
        src = images_dir / f"{case}{RAW_SUFFIX[m]}.nii.gz"
        name = rename(m) if rename else src.name
        shutil.copy(src, dst / name)


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _sidecar(folder: Path, case: str) -> dict:
    return json.loads((folder / f"{case}.modalities.json").read_text())


def test_complete_cases_match_stock_nnunet_predict_voxel_for_voxel(nnunet_root, tiny_preprocessed,
                                                                    trained_dropout_model, tmp_path):
    # what nnUNetv2_train of the _debug budget wrote: one epoch, our config, nnU-Net's log
    checkpoint = torch.load(trained_dropout_model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == "ModalityDropoutTrainer_debug" and checkpoint["current_epoch"] == 1
    assert checkpoint["missingmod_config"]["channel_modalities"] == ["T1", "T1ce", "T2", "FLAIR"]
    log = next((trained_dropout_model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "Epoch 0" in log and "Epoch 1" not in log

    images = tiny_preprocessed / "imagesTr"
    stock, ours = tmp_path / "stock", tmp_path / "ours"
    env = nnunet_env(nnunet_root)
    run_command(["nnUNetv2_predict", "-i", images, "-o", stock, *_model_args(), "-device", "cpu",
                 "-npp", "1", "-nps", "1"], env)
    for image_file in sorted(images.glob("*_0000.nii.gz")):  # stock's files have the input's geometry
        reference = sitk.ReadImage(str(image_file))
        prediction = sitk.ReadImage(str(stock / image_file.name.replace("_0000.nii.gz", ".nii.gz")))
        assert (prediction.GetSize(), prediction.GetSpacing(), prediction.GetOrigin(), prediction.GetDirection()) \
            == (reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
        assert set(np.unique(sitk.GetArrayViewFromImage(prediction)).tolist()) <= {0, 1, 2, 3}
    result = run_command(["nnunet-missingmod", "predict", "-i", images, "-o", ours, *_model_args(), "-device", "cpu"],
                         env)
    assert "6 of 6 cases predicted" in result.stdout
    assert json.loads((ours / "dataset.json").read_text()) == json.loads((stock / "dataset.json").read_text())
    assert (ours / "plans.json").is_file()
    for seg_file in sorted(stock.glob("*.nii.gz")):
        assert np.array_equal(_seg(seg_file), _seg(ours / seg_file.name)), seg_file.name
        sidecar = _sidecar(ours, seg_file.name[:-7])
        assert sidecar["missing"] == [] and sidecar["subset"] == "T1+T1ce+T2+FLAIR" and sidecar["warnings"] == []


def test_missing_file_equals_stock_prediction_on_a_zero_filled_channel(nnunet_root, tiny_preprocessed,
                                                                        trained_dropout_model, tmp_path):
    """Z-score maps a zero image to exactly 0: stock nnU-Net on a zero-filled T1ce is our reference."""
    images, case = tiny_preprocessed / "imagesTr", "BraTS2021_00001"
    ours_in, stock_in = tmp_path / "in_missing", tmp_path / "in_zero"
    _copy_case(images, case, ours_in, ("T1", "T2", "FLAIR"))
    _copy_case(images, case, stock_in)
    t1ce = sitk.ReadImage(str(stock_in / f"{case}_0001.nii.gz"))
    zero = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(t1ce)))
    zero.CopyInformation(t1ce)
    sitk.WriteImage(zero, str(stock_in / f"{case}_0001.nii.gz"))
    env = nnunet_env(nnunet_root)
    run_command(["nnUNetv2_predict", "-i", stock_in, "-o", tmp_path / "stock", *_model_args(), "-device", "cpu",
                 "-npp", "1", "-nps", "1", "--disable_tta"], env)
    result = _cli(nnunet_root, "-i", ours_in, "-o", tmp_path / "ours", *_model_args())
    assert f"{case}: T1+T2+FLAIR (missing: T1ce)" in result.stdout
    assert np.array_equal(_seg(tmp_path / "stock" / f"{case}.nii.gz"), _seg(tmp_path / "ours" / f"{case}.nii.gz"))
    sidecar = _sidecar(tmp_path / "ours", case)
    assert sidecar["present"] == ["T1", "T2", "FLAIR"] and sidecar["missing"] == ["T1ce"]
    assert sidecar["subset"] == "T1+T2+FLAIR"
    assert any("enhancing tumour" in w for w in sidecar["warnings"])
    assert sidecar["trained_for_missing_modalities"] is True


@pytest.mark.parametrize("layout", ["brats2021_folders", "brats2023_flat"])
def test_brats_layouts_with_absent_sequences(nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path,
                                             layout):
    images = tiny_preprocessed / "imagesTr"
    source = tmp_path / "in"
    if layout == "brats2021_folders":
        names = {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair"}
        _copy_case(images, "BraTS2021_00000", source / "BraTS2021_00000", ("T1ce", "FLAIR"),
                   rename=lambda m: f"BraTS2021_00000_{names[m]}.nii.gz")
        _copy_case(images, "BraTS2021_00002", source / "BraTS2021_00002", ("T2",),
                   rename=lambda m: f"BraTS2021_00002_{names[m]}.nii.gz")
        shutil.copy(tiny_preprocessed / "labelsTr" / "BraTS2021_00000.nii.gz", source / "BraTS2021_00000" /
                    "BraTS2021_00000_seg.nii.gz")  # ignored, not taken for a sequence
        expected = {"BraTS2021_00000": ("T1ce+FLAIR", ["T1", "T2"]), "BraTS2021_00002": ("T2", ["T1", "T1ce", "FLAIR"])}
    else:
        names = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
        _copy_case(images, "BraTS2021_00003", source, ("T1", "T1ce", "T2"),
                   rename=lambda m: f"BraTS-GLI-00003-000-{names[m]}.nii.gz")
        expected = {"BraTS-GLI-00003-000": ("T1+T1ce+T2", ["FLAIR"])}
    out = tmp_path / "out"
    _cli(nnunet_root, "-i", source, "-o", out, *_model_args())
    for case, (subset, missing) in expected.items():
        sidecar = _sidecar(out, case)
        assert sidecar["subset"] == subset and sidecar["missing"] == missing
        assert (out / f"{case}.nii.gz").is_file()


def test_modalities_flag_uses_only_the_named_sequences(nnunet_root, tiny_preprocessed, trained_dropout_model,
                                                       tmp_path):
    source = tmp_path / "in"
    _copy_case(tiny_preprocessed / "imagesTr", "BraTS2021_00004", source)
    _cli(nnunet_root, "-i", source, "-o", tmp_path / "restricted", *_model_args(), "--modalities", "t1c,t2f")
    sidecar = _sidecar(tmp_path / "restricted", "BraTS2021_00004")
    assert sidecar["subset"] == "T1ce+FLAIR"
    assert sorted(sidecar["ignored_files"]) == ["T1", "T2"]
    # the same as physically removing T1 and T2
    removed = tmp_path / "in_removed"
    _copy_case(tiny_preprocessed / "imagesTr", "BraTS2021_00004", removed, ("T1ce", "FLAIR"))
    _cli(nnunet_root, "-i", removed, "-o", tmp_path / "removed", *_model_args())
    assert np.array_equal(_seg(tmp_path / "restricted" / "BraTS2021_00004.nii.gz"),
                          _seg(tmp_path / "removed" / "BraTS2021_00004.nii.gz"))
    bad = _cli(nnunet_root, "-i", source, "-o", tmp_path / "bad", *_model_args(), "--modalities", "T1,DWI",
               expect_ok=False)
    assert bad.returncode == 2 and "unknown modality 'DWI'" in bad.stderr


def _write_like(reference: Path, target: Path, array=None, spacing=None, origin=None, direction=None):
    image = sitk.ReadImage(str(reference))
    new = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) if array is None else array)
    new.SetSpacing(spacing or image.GetSpacing())
    new.SetOrigin(origin or image.GetOrigin())
    new.SetDirection(direction or image.GetDirection())
    sitk.WriteImage(new, str(target))


def test_bad_inputs_fail_alone_with_one_clear_message(nnunet_root, tiny_preprocessed, trained_dropout_model,
                                                      tmp_path):
    images = tiny_preprocessed / "imagesTr"
    src = tmp_path / "in"
    _copy_case(images, "BraTS2021_00000", src)  # a good case: still predicted
    ref = images / "BraTS2021_00001_0000.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(ref))).astype(np.float32)
    _copy_case(images, "BraTS2021_00001", src, ("T1",), rename=lambda m: "shape_0000.nii.gz")
    _write_like(ref, src / "shape_0002.nii.gz", array=array[:-2])
    _copy_case(images, "BraTS2021_00001", src, ("T1",), rename=lambda m: "spacing_0000.nii.gz")
    _write_like(ref, src / "spacing_0001.nii.gz", spacing=(2.0, 1.0, 1.0))
    _copy_case(images, "BraTS2021_00001", src, ("T1",), rename=lambda m: "origin_0000.nii.gz")
    _write_like(ref, src / "origin_0003.nii.gz", origin=(5.0, 0.0, 0.0))
    _copy_case(images, "BraTS2021_00001", src, ("T1",), rename=lambda m: "direction_0000.nii.gz")
    _write_like(ref, src / "direction_0002.nii.gz", direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    nan = array.copy()
    nan[3, 3, 3] = np.nan
    _write_like(ref, src / "nan_0000.nii.gz", array=nan)
    data = (images / "BraTS2021_00001_0001.nii.gz").read_bytes()
    (src / "truncated_0001.nii.gz").write_bytes(data[: len(data) // 2])
    _write_like(ref, src / "allzero_0000.nii.gz", array=np.zeros_like(array))
    _copy_case(images, "BraTS2021_00001", src, ("T1",), rename=lambda m: "extra_0000.nii.gz")
    shutil.copy(ref, src / "extra_0004.nii.gz")
    _copy_case(images, "BraTS2021_00002", src, ("T2", "FLAIR"), rename=lambda m: f"constant{RAW_SUFFIX[m]}.nii.gz")
    _write_like(ref, src / "constant_0001.nii.gz", array=np.full_like(array, 7.0))

    out = tmp_path / "out"
    out.mkdir()
    (out / "nan.nii.gz").write_bytes(b"segmentation of an earlier run")
    result = _cli(nnunet_root, "-i", src, "-o", out, *_model_args(), expect_ok=False)
    assert result.returncode == 1
    expected_errors = {
        "shape": "shape_0002.nii.gz has shape",
        "spacing": "spacing_0001.nii.gz has spacing",
        "origin": "origin_0003.nii.gz has origin",
        "direction": "direction_0002.nii.gz has direction",
        "nan": "nan_0000.nii.gz has 1 NaN/Inf voxels",  # SimpleITK would have read it as 0
        "truncated": "cannot read",
        "allzero": "no usable sequence",
        "extra": "unknown channel index _0004 in extra_0004.nii.gz",
    }
    for case, message in expected_errors.items():
        sidecar = _sidecar(out, case)
        assert message in sidecar["error"], (case, sidecar["error"])
        assert f"{case}: FAILED" in result.stdout
        assert not list(out.glob(f"{case}.nii*")), case  # no output for a failed case
    assert "truncated_0001.nii.gz" in _sidecar(out, "truncated")["error"]
    assert "8 failed" in result.stdout
    # the good case and the constant-T1ce case (treated as missing, with a warning) were predicted
    assert (out / "BraTS2021_00000.nii.gz").is_file()
    constant = _sidecar(out, "constant")
    assert constant["missing"] == ["T1", "T1ce"] and constant["error"] is None
    assert any("constant" in w and "treated as missing" in w for w in constant["warnings"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_empty_input_folder_is_one_clear_error(nnunet_root, trained_dropout_model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = _cli(nnunet_root, "-i", tmp_path / "empty", "-o", tmp_path / "out", *_model_args(), expect_ok=False)
    assert result.returncode == 2 and "no input images in" in result.stderr


def test_model_without_modality_dropout_is_allowed_with_a_warning(nnunet_root, tiny_preprocessed,
                                                                  trained_dropout_model, tmp_path):
    """A checkpoint whose trainer is stock nnUNetTrainer (same architecture, relabelled)."""
    model = tmp_path / "stock_model"
    shutil.copytree(trained_dropout_model, model)
    checkpoint_file = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    torch.save(checkpoint, checkpoint_file)
    source = tmp_path / "in"
    _copy_case(tiny_preprocessed / "imagesTr", "BraTS2021_00005", source, ("T1", "FLAIR"))
    result = _cli(nnunet_root, "-i", source, "-o", tmp_path / "out", "-m", model, "-f", "0")
    assert "was not trained with modality dropout" in result.stdout
    sidecar = _sidecar(tmp_path / "out", "BraTS2021_00005")
    assert sidecar["trained_for_missing_modalities"] is False
    assert any("not trained for missing sequences" in w for w in sidecar["warnings"])


def test_python_api_takes_a_mask_per_case(nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path):
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    predictor = MissingModalityPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trained_dropout_model), (0,))
    images = tiny_preprocessed / "imagesTr"
    files = [str(images / f"BraTS2021_00001{RAW_SUFFIX[m]}.nii.gz") for m in ("T1", "T1ce", "T2", "FLAIR")]
    results = predictor.predict_from_files([[files[0], None, files[2], None]], str(tmp_path / "api"))
    assert results[0].ok and results[0].subset == "T1+T2"
    from_files = _seg(tmp_path / "api" / "BraTS2021_00001.nii.gz")

    recorder = record_presence(predictor.network)
    reader = predictor.plans_manager.image_reader_writer_class()
    data, props = reader.read_images(files)
    seg = predictor.predict_single_npy_array(data, props, channel_mask=[True, False, True, False])
    assert recorder.told == [[True, False, True, False], None]
    assert np.array_equal(seg, from_files)


def test_absent_channels_are_zero_after_any_normalisation(nnunet_root, tiny_preprocessed, trained_dropout_model,
                                                          tmp_path):
    """CT normalisation maps a zero image to a non-zero value; the network must still see exactly 0."""
    from nnunet_missingmod.inference.discovery import CaseFiles
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    model = tmp_path / "ct_model"
    shutil.copytree(trained_dropout_model, model)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"][1] = "CTNormalization"
    (model / "plans.json").write_text(json.dumps(plans))
    predictor = MissingModalityPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,))
    images, case_id = tiny_preprocessed / "imagesTr", "BraTS2021_00003"
    files = {m: str(images / f"{case_id}{RAW_SUFFIX[m]}.nii.gz") for m in ("T1", "T2", "FLAIR")}

    data, properties, subset, _ = predictor.load_case(CaseFiles(case_id, dict(files)))
    assert subset.name == "T1+T2+FLAIR"
    assert subset.channel_mask(predictor.channel_modalities) == (True, False, True, True)
    preprocessed, _ = predictor.preprocess(data, properties)
    assert (preprocessed[1] != 0).all()  # nnU-Net's CT normalisation of the zero-filled T1ce

    network_inputs = []
    predictor.network.register_forward_pre_hook(lambda module, args: network_inputs.append(args[0].clone()))
    result = predictor.predict_case(CaseFiles(case_id, dict(files)), str(tmp_path / "out"))
    assert result.ok and result.missing == ["T1ce"]
    assert network_inputs and all((x[:, 1] == 0).all() for x in network_inputs)
    assert any((x[:, 0] != 0).any() for x in network_inputs)


def test_bad_model_folder_or_fold_is_one_clear_error(nnunet_root, tiny_preprocessed, trained_dropout_model,
                                                     tmp_path):
    source = tmp_path / "in"
    _copy_case(tiny_preprocessed / "imagesTr", "BraTS2021_00000", source)
    (tmp_path / "not_a_model").mkdir()
    result = _cli(nnunet_root, "-i", source, "-o", tmp_path / "out", "-m", tmp_path / "not_a_model",
                  expect_ok=False)
    assert result.returncode == 2 and "has no plans.json" in result.stderr and "Traceback" not in result.stderr
    result = _cli(nnunet_root, "-i", source, "-o", tmp_path / "out", "-d", DATASET_ID, "-c", "3d_fullres",
                  "-tr", "ModalityDropoutTrainer_debug", expect_ok=False)  # default folds 0-4, only 0 trained
    assert result.returncode == 2 and "no checkpoint_final.pth for fold(s) 1, 2, 3, 4" in result.stderr
    assert "(folds with one: fold_0)" in result.stderr
