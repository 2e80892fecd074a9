"""The base trainer's mechanism on the real nnU-Net network: masking in train_step, loss terms, checkpoints."""
import io

import numpy as np
import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import SUBSETS, sample_subset_indices, subset_channel_masks
from nnunet_missingmod.training.base import (
    CHECKPOINT_EXTRA_KEY, MissingModalityTrainerBase, _define_budget_variant, unwrap_network)
from nnunet_missingmod.training.dropout import ModalityDropoutTrainer, ModalityDropoutTrainer_cardinality
from trainer_helpers import TeacherDiscriminatorTrainer, make_batch, make_trainer, module_parameters


class _SeededDropoutTrainer(ModalityDropoutTrainer):
    subset_seed = 123


class _TwoTermTrainer(ModalityDropoutTrainer):
    """A trainer with an extra logged term that is ~1e-9, as distillation terms are."""
    loss_terms = ("kd",)

    def compute_loss_terms(self, batch):
        result = super().compute_loss_terms(batch)
        result.terms["kd"] = torch.tensor(1e-9, dtype=torch.float32)
        return result


class _CurriculumTrainer(ModalityDropoutTrainer):
    """Full set only in epoch 0, single sequences only afterwards: a curriculum is an override of subset_weights."""
    subset_seed = 5

    def subset_weights(self, epoch):
        weights = torch.zeros(len(SUBSETS), dtype=torch.float64)
        if epoch == 0:
            weights[-1] = 1
        else:
            weights[:4] = 1
        return weights


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


def test_sampling_strategy_comes_from_the_class(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer_cardinality)
    masks = trainer.sample_channel_masks(20000)
    share_single = (masks.sum(1) == 1).double().mean().item()
    assert abs(share_single - 0.25) < 0.01  # uniform sampling would give 4/15 = 0.267 (sd of the estimate: 0.003)
    assert masks.device == trainer.device


def test_full_set_probability_comes_from_the_class(nnunet_root, tiny_preprocessed):
    from nnunet_missingmod.training.dropout import ModalityDropoutTrainer_keepFull50
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer_keepFull50)
    masks = trainer.sample_channel_masks(20000)
    assert abs(masks.all(dim=1).double().mean().item() - 0.5) < 0.015  # uniform sampling would give 1/15


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
    assert trainer.sample_channel_masks(64).all()  # epoch 0: full set only
    trainer.current_epoch = 1
    assert (trainer.sample_channel_masks(64).sum(1) == 1).all()  # later: single sequences only
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


def test_extra_modules_are_built_before_the_optimisers_and_switched_with_the_network(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    teacher, discriminator = trainer.extra_modules["teacher"], trainer.extra_modules["discriminator"]
    main_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.network.parameters()} <= main_params
    assert {id(p) for p in teacher.parameters()} <= main_params  # the jointly trained teacher shares the optimiser
    assert not {id(p) for p in discriminator.parameters()} & main_params
    assert isinstance(trainer.extra_optimizers["discriminator"], torch.optim.Adam)
    trainer.on_validation_epoch_start()
    assert not teacher.training and not discriminator.training
    trainer.on_train_epoch_start()
    assert teacher.training and discriminator.training and trainer.network.training
    trainer.set_deep_supervision_enabled(False)
    assert unwrap_network(teacher).decoder.deep_supervision is False
    trainer.set_deep_supervision_enabled(True)
    assert unwrap_network(teacher).decoder.deep_supervision is True


def test_extra_module_step_runs_after_the_main_step_and_logs_its_terms(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    before = {name: module_parameters(m) for name, m in trainer.extra_modules.items()}
    out = trainer.train_step(make_batch(trainer))
    assert set(out) == {"loss", "kd", "adv", "disc"}
    for name, module in trainer.extra_modules.items():
        assert not torch.equal(before[name], module_parameters(module)), name
    # the generator's adversarial term left no gradient in the discriminator (frozen_parameters)
    trainer.extra_optimizers["discriminator"].zero_grad(set_to_none=True)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.compute_loss_terms(_batch_for(trainer)).loss.backward()
    assert all(p.grad is None for p in trainer.extra_modules["discriminator"].parameters())
    assert all(p.requires_grad for p in trainer.extra_modules["discriminator"].parameters())


def _batch_for(trainer):
    from nnunet_missingmod.training.base import MaskedBatch
    raw = make_batch(trainer)
    indices = trainer.sample_subset_indices(2)
    return MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])


def test_resume_restores_every_module_and_optimiser_bit_for_bit(nnunet_root, tiny_preprocessed, tmp_path,
                                                                monkeypatch):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    for seed in range(2):
        trainer.train_step(make_batch(trainer, seed=seed))
    path = str(tmp_path / "ckpt.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert not isinstance(checkpoint["optimizer_state"], str)  # the method's own state cannot overwrite it
    assert checkpoint[CHECKPOINT_EXTRA_KEY]["method"]["note"] == "method state"
    assert set(checkpoint[CHECKPOINT_EXTRA_KEY]["modules"]) == {"teacher", "discriminator"}

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    restored = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    restored.load_checkpoint(path)
    assert len(loads) == 1  # the file is read once
    assert restored.restored_method_state["note"] == "method state"
    for name in ("teacher", "discriminator"):
        assert torch.equal(module_parameters(trainer.extra_modules[name]),
                           module_parameters(restored.extra_modules[name])), name
    # continuing from the checkpoint is bit-exact: same next step on both trainers gives identical weights
    batch = make_batch(trainer, seed=5)
    trainer.train_step(batch)
    restored.train_step(batch)
    for name in ("network", "teacher", "discriminator"):
        a = trainer.network if name == "network" else trainer.extra_modules[name]
        b = restored.network if name == "network" else restored.extra_modules[name]
        assert torch.equal(module_parameters(a), module_parameters(b)), name


def test_checkpoint_of_another_trainer_without_extras_is_refused(nnunet_root, tiny_preprocessed, tmp_path):
    dropout = make_trainer(nnunet_root, ModalityDropoutTrainer)
    path = str(tmp_path / "dropout.pth")
    dropout.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint[CHECKPOINT_EXTRA_KEY]
    torch.save(checkpoint, path)
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    with pytest.raises(RuntimeError, match="missingmod_extra"):
        trainer.load_checkpoint(path)


def test_unknown_budget_attribute_fails_loudly(nnunet_root, tiny_preprocessed):
    variant = _define_budget_variant(_SeededDropoutTrainer, "_typo", {"num_epoch": 1})
    with pytest.raises(AttributeError, match="num_epoch"):
        make_trainer(nnunet_root, variant)


def test_progress_plot_gets_a_panel_for_loss_terms(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoTermTrainer)
    logger = trainer.logger
    for key, value in [("mean_fg_dice", 0.5), ("ema_fg_dice", 0.5), ("dice_per_class_or_region", [0.5]),
                       ("train_losses", 1.0), ("val_losses", 1.0), ("lrs", 0.01), ("epoch_start_timestamps", 0.0),
                       ("epoch_end_timestamps", 1.0), ("train_kd", 1e-9)]:
        logger.log(key, value, 0)
    logger.plot_progress_png(trainer.output_folder)
    import matplotlib.image
    height, width = matplotlib.image.imread(f"{trainer.output_folder}/progress.png").shape[:2]
    assert height / width == pytest.approx(72 / 30, rel=0.01)  # four panels instead of nnU-Net's three


def test_dataset_without_the_four_sequences_is_rejected(nnunet_root, tiny_preprocessed):
    import copy
    from conftest import plans_and_dataset_json
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    dataset_json = dict(dataset_json, channel_names={"0": "T1", "1": "T1ce", "2": "T2", "3": "DWI"})
    with pytest.raises(MissingModError, match="channel 3 \\('DWI'\\)"):
        ModalityDropoutTrainer(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))


def test_base_class_is_not_exported_as_a_trainer():
    from nnunet_missingmod.training.registry import trainer_registry
    assert MissingModalityTrainerBase.__name__ not in trainer_registry()


class _StatefulDropoutTrainer(ModalityDropoutTrainer):
    """A method whose own state is set by the test (what ``extra_checkpoint_state`` returns)."""
    method_state: dict = {}

    def extra_checkpoint_state(self):
        return self.method_state


def test_checkpoint_with_tensors_aliasing_one_storage_as_two_dtypes_is_saved(nnunet_root, tiny_preprocessed,
                                                                             tmp_path):
    trainer = make_trainer(nnunet_root, _StatefulDropoutTrainer)
    values = torch.arange(6, dtype=torch.float32)
    trainer.method_state = {"values": values, "bits": values.view(torch.int32)}  # plain torch.save refuses this
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        torch.save(trainer.method_state, io.BytesIO())
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    state = torch.load(path, weights_only=False)[CHECKPOINT_EXTRA_KEY]["method"]
    assert torch.equal(state["values"], values) and torch.equal(state["bits"], values.view(torch.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_failed_checkpoint_save_keeps_the_previous_file_and_leaves_no_partial_file(nnunet_root, tiny_preprocessed,
                                                                                  tmp_path):
    trainer = make_trainer(nnunet_root, _StatefulDropoutTrainer)
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    before = path.read_bytes()
    trainer.method_state = {"unpicklable": lambda: None}
    with pytest.raises(Exception, match="lambda|pickle"):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]
