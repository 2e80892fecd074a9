"""A method of one's own, outside the package (``tests/toy_method/``: a network wrapper, one loss, one ablation
table), registered through ``nnUNet_missingmod_methods``: listed with its budget siblings and ablations, its step on
the real plans, and end to end: ``nnUNetv2_train`` two iterations, then ``nnunet-missingmod predict`` on a case with
a sequence missing. Nothing of the package names it."""
import json
import os
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, DATASET_NAME, nnunet_env, run_command
from nnunet_missingmod.training.base import MaskedBatch
from nnunet_missingmod.training.naming import BUDGETS, METHODS_ENV, trainer_registry
from trainer_helpers import make_batch, make_trainer, module_parameters

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
TOY = "toy_method"
ABLATIONS = ("ToyTrainer_noConsistency", "ToyTrainer_fixedGain", "ToyTrainer_noConsistency_fixedGain")


def toy_env(nnunet_root) -> dict:
    """nnU-Net's environment plus what a user sets for a method of their own: its folder on PYTHONPATH and its
    package named in nnUNet_missingmod_methods."""
    env = nnunet_env(nnunet_root)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env[METHODS_ENV] = TOY
    return env


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setenv(METHODS_ENV, TOY)  # tests/ is on sys.path (pyproject's pythonpath)
    return trainer_registry()


def test_the_toy_method_is_registered_with_its_budget_siblings_and_ablations(toy_registry, monkeypatch):
    from toy_method.trainer import ToyTrainer
    assert toy_registry["ToyTrainer"] is ToyTrainer
    for budget in BUDGETS.values():
        sibling = toy_registry["ToyTrainer" + budget.suffix]
        assert sibling.__bases__ == (ToyTrainer,) and dict(sibling.budget) == budget.overrides()
    for name in ABLATIONS:
        assert toy_registry[name].__bases__ == (ToyTrainer,) and toy_registry[name].budget is None
    assert toy_registry["ToyTrainer_noConsistency_fixedGain"].method.consistency_weight == 0.0
    assert not toy_registry["ToyTrainer_noConsistency_fixedGain"].method.learn_gain
    toy = {name for name in toy_registry if name.startswith("ToyTrainer")}
    assert toy == {"ToyTrainer", *("ToyTrainer" + b.suffix for b in BUDGETS.values()), *ABLATIONS}
    monkeypatch.delenv(METHODS_ENV)
    assert not any(name.startswith("ToyTrainer") for name in trainer_registry())  # only when named


def test_nothing_outside_the_toy_folder_names_it():
    for folder in (REPO / "nnunet_missingmod", REPO / "trainers"):
        for path in folder.rglob("*.py"):
            text = path.read_text()
            assert TOY not in text and "ToyTrainer" not in text, path


def test_toy_settings_and_loss_are_checked_when_built():
    from toy_method.losses import MaskedConsistencyLoss
    from toy_method.trainer import ToySettings
    with pytest.raises(ValueError, match="ToySettings.consistency_weight must be >= 0, got -1"):
        ToySettings(consistency_weight=-1)
    with pytest.raises(ValueError, match="ToySettings.temperature must be > 0, got 0"):
        ToySettings(temperature=0)
    with pytest.raises(ValueError, match="temperature must be > 0, got -2"):
        MaskedConsistencyLoss(temperature=-2)
    loss = MaskedConsistencyLoss(regions=True)
    zeros = torch.zeros(1, 1, 2, 2)
    assert loss(zeros, zeros).item() == 0.0
    assert loss(zeros, torch.full((1, 1, 2, 2), 1e4)).item() == pytest.approx(0.25)  # (1 - 0.5)²


def test_one_step_adds_the_weighted_consistency_and_trains_the_gains(nnunet_root, tiny_preprocessed, toy_registry):
    trainer = make_trainer(nnunet_root, toy_registry["ToyTrainer"])
    raw = make_batch(trainer)
    indices = torch.tensor([0, 9])  # T1 alone, T2 + FLAIR
    result = trainer.compute_loss_terms(MaskedBatch(raw["data"], trainer.subset_masks[indices], indices,
                                                    raw["target"]))
    assert set(result.terms) == set(trainer.loss_terms) and result.terms["consistency"] > 0
    torch.testing.assert_close(result.loss.detach(), result.terms["seg"] + result.terms["consistency"])
    gains = trainer.network.gain.detach().clone()
    out = trainer.train_step(raw)
    assert set(out) == {"loss", "seg", "consistency"}
    assert not torch.equal(gains, trainer.network.gain)
    fixed = make_trainer(nnunet_root, toy_registry["ToyTrainer_noConsistency_fixedGain"])
    assert "gain" not in dict(fixed.network.named_parameters()) and "gain" in fixed.network.state_dict()
    result = fixed.compute_loss_terms(MaskedBatch(raw["data"], fixed.subset_masks[indices], indices, raw["target"]))
    torch.testing.assert_close(result.loss.detach(), result.terms["seg"])
    before = module_parameters(fixed.network)
    fixed.train_step(raw)
    assert torch.equal(fixed.network.gain, torch.ones(4)) and not torch.equal(before, module_parameters(fixed.network))


@pytest.mark.slow
def test_nnunetv2_train_two_iterations_then_predict_a_case_with_a_sequence_missing(nnunet_root, tiny_preprocessed,
                                                                                   tmp_path):
    env = toy_env(nnunet_root)
    run_command(["nnUNetv2_train", DATASET_ID, "3d_fullres", "0", "-tr", "ToyTrainer_debug", "-device", "cpu"], env)
    fold = nnunet_root / "results" / DATASET_NAME / "ToyTrainer_debug__nnUNetPlans__3d_fullres" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == "ToyTrainer_debug" and checkpoint["current_epoch"] == 1
    assert checkpoint["missingmod_config"]["method"] == {"consistency_weight": 1.0, "temperature": 1.0,
                                                         "learn_gain": True}
    assert "gain" in checkpoint["network_weights"]
    assert "train_consistency" in next(fold.glob("training_log_*.txt")).read_text()

    images = tiny_preprocessed / "imagesTr"
    source = tmp_path / "in"
    source.mkdir()
    for channel in ("_0000", "_0001", "_0002"):  # FLAIR missing
        (source / f"BraTS2021_00002{channel}.nii.gz").write_bytes(
            (images / f"BraTS2021_00002{channel}.nii.gz").read_bytes())
    out = tmp_path / "out"
    run_command(["nnunet-missingmod", "predict", "-i", source, "-o", out, "-d", DATASET_ID, "-c", "3d_fullres",
                 "-f", "0", "-tr", "ToyTrainer_debug", "-device", "cpu", "--disable_tta"], env)
    sidecar = json.loads((out / "BraTS2021_00002.modalities.json").read_text())
    assert sidecar["subset"] == "T1+T1ce+T2" and sidecar["trainer"] == "ToyTrainer_debug"
    prediction = sitk.ReadImage(str(out / "BraTS2021_00002.nii.gz"))
    assert prediction.GetSize() == sitk.ReadImage(str(images / "BraTS2021_00002_0000.nii.gz")).GetSize()
    assert set(sitk.GetArrayViewFromImage(prediction).ravel().tolist()) <= {0, 1, 2, 3}
