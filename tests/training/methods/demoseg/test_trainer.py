"""DeMoSegTrainer on the real nnU-Net plans of the tiny dataset: its settings; one step with the per-sample subsets
told to the network trains every trainable parameter; the loss is nnU-Net's plus the weighted alignment; the channel
order is checked; end to end through nnUNetv2_train, stock nnUNetv2_predict and our predict with a sequence missing."""
import json
import re

import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, LABELS, model_folder_plans, nnunet_env, run_command, train_model
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.base import MaskedBatch, TrainingRefused
from nnunet_missingmod.training.methods.demoseg.ablations import DeMoSegTrainer_noAlign_small
from nnunet_missingmod.training.methods.demoseg.network import PRESENT, CSSA
from nnunet_missingmod.training.methods.demoseg.trainer import DeMoSegSettings, DeMoSegTrainer_small
from trainer_helpers import make_batch, make_trainer, module_parameters


@pytest.mark.parametrize("bad, message", [
    (dict(width=0), "DeMoSegSettings.width must be > 0, got 0"),
    (dict(cssa_ratio=-1.0), "DeMoSegSettings.cssa_ratio must be > 0, got -1.0"),
    (dict(alignment_weight=-0.5), "DeMoSegSettings.alignment_weight must be >= 0, got -0.5"),
])
def test_settings_refuse_a_bad_value_naming_the_setting_and_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        DeMoSegSettings(**bad)


def test_a_dataset_whose_channels_are_not_in_canonical_order_is_refused_in_one_line(capsys):
    plans = dict(model_folder_plans(), continue_training=False)
    dataset_json = {"channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"},  # MSD's order
                    "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz"}
    with pytest.raises(TrainingRefused) as refused:
        DeMoSegTrainer_small(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    assert refused.value.code == 2 and isinstance(refused.value, MissingModError)
    assert re.match(r"DeMoSegTrainer_small needs the channels in the order T1, T1ce, T2, FLAIR .* has FLAIR, T1, "
                    r"T1ce, T2: convert the dataset", str(refused.value))
    assert capsys.readouterr().err == f"nnUNetv2_train: error: {refused.value}\n"  # one line


def _masked_batch(trainer, subsets=(0, 9), seed=1):
    raw = make_batch(trainer, seed=seed)
    indices = torch.tensor(subsets)  # T1 alone; T2 + FLAIR
    return MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])


def test_one_step_tells_the_subsets_and_trains_every_trainable_parameter(nnunet_root, tiny_preprocessed):
    torch.manual_seed(0)
    trainer = make_trainer(nnunet_root, DeMoSegTrainer_small)
    batch = _masked_batch(trainer)
    seen = {}
    handle = trainer.network.register_forward_hook(lambda m, a, out: seen.update(present=out[PRESENT]))
    try:
        result = trainer.compute_loss_terms(batch)
    finally:
        handle.remove()
    assert torch.equal(seen["present"], batch.channel_mask) and trainer.network._told is None  # told, then cleared
    assert set(result.terms) == set(trainer.loss_terms) and result.terms["alignment"] > 0  # T2 + FLAIR is a pair
    torch.testing.assert_close(result.loss, result.terms["seg"] + trainer.method.alignment_weight
                               * result.terms["alignment"])
    result.loss.backward()
    trainable = {n for n, p in trainer.network.named_parameters() if p.requires_grad}
    without_gradient = {n for n in trainable if dict(trainer.network.named_parameters())[n].grad is None}
    # as stock nnU-Net: the lowest-resolution deep-supervision head has weight 0 outside DDP
    assert without_gradient <= {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}, without_gradient
    frozen = {n for n, p in trainer.network.named_parameters() if not p.requires_grad}
    assert frozen and all(".rank_scores." in n for n in frozen)  # CSSA's ranking MLPs only
    rankings = [m.rank_scores[0].weight.clone() for m in trainer.network.modules() if isinstance(m, CSSA)]
    before = module_parameters(trainer.network)
    out = trainer.train_step(make_batch(trainer))
    assert set(out) == {"loss", *trainer.loss_terms}
    assert not torch.equal(before, module_parameters(trainer.network))
    after = [m.rank_scores[0].weight for m in trainer.network.modules() if isinstance(m, CSSA)]
    assert all(torch.equal(a, b) for a, b in zip(rankings, after))
    assert len(trainer.trainable_subsets()) == 15  # uniform over the 15 subsets, as official


def test_the_alignment_ablation_only_removes_the_weighted_term_from_the_loss(nnunet_root, tiny_preprocessed):
    results = {}
    for cls in (DeMoSegTrainer_small, DeMoSegTrainer_noAlign_small):
        torch.manual_seed(0)  # the same initial weights
        trainer = make_trainer(nnunet_root, cls)
        trainer.network.eval()
        results[cls] = trainer.compute_loss_terms(_masked_batch(trainer, subsets=(14, 9)))
    full, ablated = results[DeMoSegTrainer_small], results[DeMoSegTrainer_noAlign_small]
    for name in ("seg", "alignment"):
        torch.testing.assert_close(full.terms[name], ablated.terms[name])  # still measured and logged
    torch.testing.assert_close(ablated.loss, ablated.terms["seg"])
    torch.testing.assert_close(full.loss - ablated.loss, full.terms["alignment"])


@pytest.fixture(scope="module")
def trained_demoseg_model(nnunet_root, tiny_preprocessed):
    return train_model(nnunet_root, "DeMoSegTrainer_small_debug")


@pytest.mark.slow
def test_nnunet_train_then_stock_and_missing_modality_prediction(nnunet_root, tiny_preprocessed,
                                                                 trained_demoseg_model, tmp_path):
    fold = trained_demoseg_model / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    assert "train_alignment" in next(fold.glob("training_log_*.txt")).read_text()
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["missingmod_config"]["method"]["width"] == 0.5
    images = tiny_preprocessed / "imagesTr"
    model = ["-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", "DeMoSegTrainer_small_debug"]
    # stock nnUNetv2_predict on complete cases (its strict load of the checkpoint into the inference network)
    run_command(["nnUNetv2_predict", "-i", images, "-o", tmp_path / "stock", *model, "-device", "cpu", "-npp", "1",
                 "-nps", "1", "--disable_tta"], nnunet_env(nnunet_root))
    assert len(list((tmp_path / "stock").glob("*.nii.gz"))) == 6

    source = tmp_path / "in"
    source.mkdir()
    for suffix in ("_0000", "_0003"):  # T1 and FLAIR: T1ce and T2 missing, lent by RCR
        (source / f"BraTS2021_00004{suffix}.nii.gz").write_bytes(
            (images / f"BraTS2021_00004{suffix}.nii.gz").read_bytes())
    run_command(["nnunet-missingmod", "predict", "-i", source, "-o", tmp_path / "ours", *model, "-device", "cpu",
                 "--disable_tta"], nnunet_env(nnunet_root))
    sidecar = json.loads((tmp_path / "ours" / "BraTS2021_00004.modalities.json").read_text())
    assert sidecar["subset"] == "T1+FLAIR" and sidecar["trainer"] == "DeMoSegTrainer_small_debug"
    prediction = sitk.ReadImage(str(tmp_path / "ours" / "BraTS2021_00004.nii.gz"))
    assert prediction.GetSize() == sitk.ReadImage(str(images / "BraTS2021_00004_0000.nii.gz")).GetSize()
