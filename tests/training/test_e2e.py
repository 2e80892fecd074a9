"""End to end through nnU-Net's real commands: plan/preprocess → nnUNetv2_train (our trainer) → stock predict."""
import torch
import SimpleITK as sitk

from conftest import DATASET_ID, run_command, nnunet_env


def test_debug_training_writes_a_checkpoint_stock_predict_can_use(nnunet_root, tiny_preprocessed,
                                                                  trained_dropout_model, tmp_path):
    checkpoint = torch.load(trained_dropout_model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == "ModalityDropoutTrainer_debug"
    assert checkpoint["current_epoch"] == 1  # the _debug budget: one epoch
    assert checkpoint["missingmod_config"]["channel_modalities"] == ["T1", "T1ce", "T2", "FLAIR"]
    log = next((trained_dropout_model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "Epoch 0" in log and "Epoch 1" not in log

    out = tmp_path / "pred"
    run_command(["nnUNetv2_predict", "-i", tiny_preprocessed / "imagesTr", "-o", out, "-d", DATASET_ID,
                 "-c", "3d_fullres", "-f", "0", "-tr", "ModalityDropoutTrainer_debug", "-device", "cpu",
                 "-npp", "1", "-nps", "1", "--disable_tta"], nnunet_env(nnunet_root))
    inputs = sorted((tiny_preprocessed / "imagesTr").glob("*_0000.nii.gz"))
    assert len(inputs) == 6
    for image_file in inputs:
        case = image_file.name[:-len("_0000.nii.gz")]
        reference = sitk.ReadImage(str(image_file))
        prediction = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert prediction.GetSize() == reference.GetSize()
        assert prediction.GetSpacing() == reference.GetSpacing()
        assert prediction.GetOrigin() == reference.GetOrigin()
        assert prediction.GetDirection() == reference.GetDirection()
        values = set(sitk.GetArrayViewFromImage(prediction).ravel().tolist())
        assert values <= {0, 1, 2, 3}
