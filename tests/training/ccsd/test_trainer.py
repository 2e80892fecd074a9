"""CCSDTrainer on the real nnU-Net plans of the tiny dataset: one step, every parameter trained, path strategies,
checkpoint resume; end to end through nnUNetv2_train, stock nnUNetv2_predict and our predict."""
import json

import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, DATASET_NAME, nnunet_env, run_command
from nnunet_missingmod.training.base import MaskedBatch
from nnunet_missingmod.training.ccsd.trainer import (
    CCSDTrainer_gradCriticality, CCSDTrainer_noKD, CCSDTrainer_small)
from trainer_helpers import make_batch, make_trainer, module_parameters


def _full_batch(trainer, seed=0):
    raw = make_batch(trainer, seed=seed)
    indices = torch.full((raw["data"].shape[0],), 14)
    return MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])


def test_one_step_trains_every_parameter_and_logs_every_term(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, CCSDTrainer_small)
    result = trainer.compute_loss_terms(_full_batch(trainer))
    result.loss.backward()
    without_gradient = {n for n, p in trainer.network.named_parameters() if p.grad is None}
    # nnU-Net gives its lowest-resolution deep-supervision output (seg_layers[0]) weight 0 outside DDP (1e-6
    # under DDP), so that head alone gets no gradient, as in stock nnU-Net
    assert without_gradient <= {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}, without_gradient
    assert set(result.terms) == set(trainer.loss_terms)
    assert result.terms["hmsd"] > 0 and result.terms["dmcd"] > 0
    before = module_parameters(trainer.network)
    out = trainer.train_step(make_batch(trainer))
    assert set(out) == {"loss", *trainer.loss_terms}
    assert not torch.equal(before, module_parameters(trainer.network))
    assert trainer.sample_channel_masks(16).all()  # the network gets every sequence; students come from its cache


def test_ablation_without_kd_does_not_optimise_the_distillation_terms(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, CCSDTrainer_noKD)
    trainer.subset_generator.manual_seed(0)
    result = trainer.compute_loss_terms(_full_batch(trainer))
    expected = result.terms["seg_full"] + result.terms["seg_students"] + \
        0.1 * result.terms["shared_alignment"] + 0.02 * result.terms["domain"]
    assert torch.allclose(result.loss, expected)
    assert result.terms["hmsd"] > 0  # still measured and logged, so ablations can be compared


def test_gradient_criticality_variant_runs_a_step(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, CCSDTrainer_gradCriticality)
    out = trainer.train_step(make_batch(trainer))
    assert torch.isfinite(torch.as_tensor(out["dmcd"]))


def test_resume_is_bit_exact(nnunet_root, tiny_preprocessed, tmp_path):
    trainer = make_trainer(nnunet_root, CCSDTrainer_small)
    trainer.train_step(make_batch(trainer, seed=0))
    path = str(tmp_path / "ccsd.pth")
    trainer.save_checkpoint(path)
    restored = make_trainer(nnunet_root, CCSDTrainer_small)
    restored.load_checkpoint(path)
    trainer.current_epoch += 1  # what nnU-Net's on_epoch_end does after writing the checkpoint
    for trainer_ in (trainer, restored):
        trainer_.on_train_epoch_start()
        trainer_.train_step(make_batch(trainer_, seed=3))  # level and path draws come from the restored generator
    assert torch.equal(module_parameters(trainer.network), module_parameters(restored.network))
    assert torch.equal(trainer.subset_generator.get_state(), restored.subset_generator.get_state())


@pytest.fixture(scope="module")
def trained_ccsd_model(nnunet_root, tiny_preprocessed):
    run_command(["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", "CCSDTrainer_small_debug",
                 "-device", "cpu"], nnunet_env(nnunet_root))
    return nnunet_root / "results" / DATASET_NAME / "CCSDTrainer_small_debug__nnUNetPlans__3d_fullres"


@pytest.mark.slow
def test_nnunet_train_then_stock_and_missing_modality_prediction(nnunet_root, tiny_preprocessed,
                                                                 trained_ccsd_model, tmp_path):
    fold = trained_ccsd_model / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    assert "train_dmcd" in next(fold.glob("training_log_*.txt")).read_text()
    images = tiny_preprocessed / "imagesTr"
    model = ["-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", "CCSDTrainer_small_debug"]
    run_command(["nnUNetv2_predict", "-i", images, "-o", tmp_path / "stock", *model, "-device", "cpu", "-npp", "1",
                 "-nps", "1", "--disable_tta"], nnunet_env(nnunet_root))
    assert len(list((tmp_path / "stock").glob("*.nii.gz"))) == 6

    source = tmp_path / "in"
    source.mkdir()
    for suffix in ("_0002",):  # T2 only
        (source / f"BraTS2021_00004{suffix}.nii.gz").write_bytes(
            (images / f"BraTS2021_00004{suffix}.nii.gz").read_bytes())
    run_command(["nnunet-missingmod", "predict", "-i", source, "-o", tmp_path / "ours", *model, "-device", "cpu",
                 "--disable_tta"], nnunet_env(nnunet_root))
    sidecar = json.loads((tmp_path / "ours" / "BraTS2021_00004.modalities.json").read_text())
    assert sidecar["subset"] == "T2" and sidecar["trainer"] == "CCSDTrainer_small_debug"
    prediction = sitk.ReadImage(str(tmp_path / "ours" / "BraTS2021_00004.nii.gz"))
    assert prediction.GetSize() == sitk.ReadImage(str(images / "BraTS2021_00004_0002.nii.gz")).GetSize()
