"""The base trainer (training/base.py) on the real nnU-Net network: its sampling settings, the subsets drawn and
masked in train_step, the loss hook and its logged terms, budgets and nnU-Net overrides, the dataset's sequences."""
import numpy as np
import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import SAMPLING_STRATEGIES, SUBSETS, sample_subset_indices, subset_channel_masks
from nnunet_missingmod.training.base import MaskedBatch, SamplingSettings, StepResult, settings_config
from nnunet_missingmod.training.methods.dropout.ablations import ModalityDropoutTrainer_keepFull50
from nnunet_missingmod.training.methods.dropout.trainer import FullSetTrainer, ModalityDropoutTrainer
from trainer_helpers import make_batch, make_trainer


class _SeededDropoutTrainer(ModalityDropoutTrainer):
    sampling = SamplingSettings(seed=123)


class _TwoTermTrainer(ModalityDropoutTrainer):
    """A trainer with an extra logged term that is ~1e-9, as distillation terms are."""
    loss_terms = ("kd",)

    def compute_loss_terms(self, batch):
        result = super().compute_loss_terms(batch)
        result.terms["kd"] = torch.tensor(1e-9, dtype=torch.float32)
        return result


class _CurriculumTrainer(ModalityDropoutTrainer):
    """Full set only in epoch 0, single sequences only afterwards: a curriculum is an override of subset_weights."""
    sampling = SamplingSettings(seed=5)

    def subset_weights(self, epoch):
        weights = torch.zeros(len(SUBSETS), dtype=torch.float64)
        if epoch == 0:
            weights[-1] = 1
        else:
            weights[:4] = 1
        return weights


def _drawn_masks(trainer, n):
    """(n, C) channel masks of ``n`` samples drawn as ``train_step`` draws them."""
    return trainer.subset_masks[trainer.sample_subset_indices(n)]


@pytest.mark.parametrize("bad, message", [
    (dict(strategy="cardinal"), "SamplingSettings.strategy must be one of .*got 'cardinal'"),
    (dict(full_set_probability=1.5), r"SamplingSettings.full_set_probability must lie in \[0, 1\], got 1.5"),
    (dict(full_set_probability=-0.1), r"SamplingSettings.full_set_probability must lie in \[0, 1\], got -0.1"),
])
def test_sampling_settings_refuse_a_bad_value_naming_the_setting_and_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**bad)
    for strategy in SAMPLING_STRATEGIES:
        assert SamplingSettings(strategy=strategy, full_set_probability=0.0).strategy == strategy
    with pytest.raises(AttributeError):  # frozen: a subclass replaces the settings, nobody edits them in place
        SamplingSettings().seed = 3


def test_sampling_must_be_sampling_settings(nnunet_root, tiny_preprocessed):
    class _Raw(ModalityDropoutTrainer):
        sampling = {"strategy": "uniform"}

    with pytest.raises(TypeError, match="_Raw.sampling must be a SamplingSettings"):
        make_trainer(nnunet_root, _Raw)


def test_train_step_feeds_the_network_exactly_the_sampled_masks(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _SeededDropoutTrainer)
    seen = []
    trainer.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batch = make_batch(trainer, batch_size=8)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(batch)
    expected = subset_channel_masks(trainer.channel_modalities)[
        sample_subset_indices(8, "uniform", generator=torch.Generator().manual_seed(123))]
    assert len(seen) == 1
    net_input = seen[0]
    for b in range(8):
        for c in range(4):
            if expected[b, c]:
                assert torch.equal(net_input[b, c], batch["data"][b, c])
            else:
                assert (net_input[b, c] == 0).all()
    assert not expected.all()  # with 8 samples at least one channel was dropped
    assert isinstance(out["loss"], np.ndarray) and np.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))


def test_full_set_probability_comes_from_the_class(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer_keepFull50)
    masks = _drawn_masks(trainer, 20000)
    assert abs(masks.all(dim=1).double().mean().item() - 0.5) < 0.015  # uniform sampling would give 1/15
    assert _drawn_masks(make_trainer(nnunet_root, FullSetTrainer), 256).all()  # probability 1: stock training


def test_a_seed_makes_the_draws_reproducible_and_the_settings_are_recorded(nnunet_root, tiny_preprocessed):
    first, second = (make_trainer(nnunet_root, _SeededDropoutTrainer) for _ in range(2))
    assert torch.equal(first.sample_subset_indices(64), second.sample_subset_indices(64))
    expected = sample_subset_indices(64, "uniform", generator=torch.Generator().manual_seed(123))
    assert torch.equal(make_trainer(nnunet_root, _SeededDropoutTrainer).sample_subset_indices(64), expected)
    config = make_trainer(nnunet_root, ModalityDropoutTrainer_keepFull50).missingmod_config()
    assert config["subset_sampling"] == "uniform" and config["full_set_probability"] == 0.5


def test_tiny_terms_are_logged_in_float32(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoTermTrainer)
    outputs = [trainer.train_step(make_batch(trainer, seed=s)) for s in range(2)]
    assert outputs[0]["kd"] == pytest.approx(1e-9, rel=1e-6)  # kept in float32, not rounded away
    trainer.logger.log("val_losses", 0.0, 0)
    trainer.on_train_epoch_end(outputs)
    assert trainer.logger.get_value("train_kd", step=-1) == pytest.approx(1e-9, rel=1e-6)


def test_curriculum_is_a_subset_weights_override_and_recorded(nnunet_root, tiny_preprocessed, tmp_path):
    trainer = make_trainer(nnunet_root, _CurriculumTrainer)
    trainer.num_epochs = 3
    assert _drawn_masks(trainer, 64).all()  # epoch 0: full set only
    trainer.current_epoch = 1
    assert (_drawn_masks(trainer, 64).sum(1) == 1).all()  # later: single sequences only
    trainer.save_checkpoint(str(tmp_path / "c.pth"))
    config = torch.load(tmp_path / "c.pth", weights_only=False)["missingmod_config"]
    assert config["trained_subsets"] == ["T1", "T1ce", "T2", "FLAIR", "T1+T1ce+T2+FLAIR"]
    dropout = make_trainer(nnunet_root, ModalityDropoutTrainer)
    assert dropout.trainable_subsets() == [s.name for s in SUBSETS]


def test_subset_indices_reach_the_loss_hook_with_matching_masks(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _SeededDropoutTrainer)
    seen = []
    original = trainer.compute_loss_terms
    trainer.compute_loss_terms = lambda batch: seen.append(batch) or original(batch)
    trainer.train_step(make_batch(trainer, batch_size=6))
    batch = seen[0]
    assert batch.subset_indices.shape == (6,)
    assert torch.equal(batch.channel_mask, subset_channel_masks(trainer.channel_modalities)[batch.subset_indices])
    assert torch.equal(batch.masked_data[~batch.channel_mask], torch.zeros_like(batch.masked_data[~batch.channel_mask]))


def test_dataset_without_the_four_sequences_is_rejected(nnunet_root, tiny_preprocessed):
    import copy
    from conftest import plans_and_dataset_json
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    dataset_json = dict(dataset_json, channel_names={"0": "T1", "1": "T1ce", "2": "T2", "3": "DWI"})
    with pytest.raises(MissingModError, match="channel 3 \\('DWI'\\)"):
        ModalityDropoutTrainer(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))


class _TypoBudget(_SeededDropoutTrainer):
    budget = {"num_epoch": 1}


class _TypoOverride(_SeededDropoutTrainer):
    nnunet_overrides = {"initial_learning_rate": 1e-3}


class _Overrides(_SeededDropoutTrainer):
    budget = {"num_epochs": 3, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1}
    nnunet_overrides = {"initial_lr": 1e-3}


def test_budget_and_nnunet_overrides_set_nnunets_attributes_and_a_typo_fails_loudly(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _Overrides)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.initial_lr) == (3, 4, 1e-3)
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 1e-3  # set before the optimiser is built
    with pytest.raises(AttributeError, match="_TypoBudget.budget sets 'num_epoch'"):
        make_trainer(nnunet_root, _TypoBudget)
    with pytest.raises(AttributeError, match="_TypoOverride.nnunet_overrides sets 'initial_learning_rate'"):
        make_trainer(nnunet_root, _TypoOverride)


def test_the_default_loss_hook_is_nnunets_loss_on_the_masked_batch(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _SeededDropoutTrainer)
    raw = make_batch(trainer)
    indices = torch.tensor([0, 14])  # T1 alone, the full set
    batch = MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])
    result = trainer.compute_loss_terms(batch)
    assert isinstance(result, StepResult) and result.terms == {} and result.context == {}
    with torch.no_grad():
        expected = trainer.loss(trainer.network(batch.masked_data), batch.target)
        unmasked = trainer.loss(trainer.network(batch.data), batch.target)
    loss = float(result.loss.detach())
    assert loss == pytest.approx(float(expected), rel=1e-6)
    assert loss != pytest.approx(float(unmasked), rel=1e-6)  # the mask reached the network


def test_settings_config_turns_a_frozen_dataclass_into_json_friendly_values():
    import dataclasses
    import json

    @dataclasses.dataclass(frozen=True)
    class _Settings:
        levels: tuple = (1, 2)
        weights: tuple = (("a", 1.0),)
        name: str = "x"

    config = settings_config(_Settings())
    assert config == {"levels": [1, 2], "weights": [("a", 1.0)], "name": "x"}
    json.dumps(config)
    assert settings_config(SamplingSettings(seed=3)) == {"strategy": "uniform", "full_set_probability": None,
                                                          "seed": 3}
