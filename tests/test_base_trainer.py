"""The base trainer's mechanism on the real nnU-Net network: masking in train_step, loss terms, checkpoints."""
import numpy as np
import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import sample_channel_masks
from nnunet_missingmod.training.base import MissingModalityTrainerBase
from nnunet_missingmod.training.dropout import ModalityDropoutTrainer, ModalityDropoutTrainer_cardinality
from trainer_helpers import make_batch, make_trainer


class _SeededDropoutTrainer(ModalityDropoutTrainer):
    subset_seed = 123


class _TwoTermTrainer(ModalityDropoutTrainer):
    """A trainer with an extra logged term and extra checkpoint state, as a teacher/student trainer has."""
    loss_terms = ("kd",)

    def initialize(self):
        super().initialize()
        self.teacher_steps = 0

    def compute_loss_terms(self, data, channel_mask, target):
        terms = super().compute_loss_terms(data, channel_mask, target)
        terms["kd"] = torch.tensor(1e-9, dtype=torch.float32)
        return terms

    def after_optimizer_step(self, data, channel_mask, target):
        self.teacher_steps += 1
        return {}

    def extra_checkpoint_state(self):
        return {"teacher_steps": self.teacher_steps}

    def load_extra_checkpoint_state(self, checkpoint):
        self.teacher_steps = checkpoint["teacher_steps"]


def test_train_step_feeds_the_network_exactly_the_sampled_masks(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _SeededDropoutTrainer)
    seen = []
    trainer.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batch = make_batch(trainer, batch_size=8)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(batch)
    expected = sample_channel_masks(8, trainer.channel_modalities, generator=torch.Generator().manual_seed(123))
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


def test_extra_terms_are_logged_and_checkpoint_extras_round_trip(nnunet_root, tiny_preprocessed, tmp_path):
    trainer = make_trainer(nnunet_root, _TwoTermTrainer)
    outputs = [trainer.train_step(make_batch(trainer, seed=s)) for s in range(2)]
    assert outputs[0]["kd"] == pytest.approx(1e-9, rel=1e-6)  # kept in float32, not rounded away
    trainer.logger.log("val_losses", 0.0, 0)
    trainer.on_train_epoch_end(outputs)
    assert trainer.logger.get_value("train_kd", step=-1) == pytest.approx(1e-9, rel=1e-6)
    assert trainer.teacher_steps == 2
    path = str(tmp_path / "ckpt.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["teacher_steps"] == 2
    assert checkpoint["trainer_name"] == "_TwoTermTrainer"
    assert checkpoint["missingmod_config"]["subset_sampling"] == "uniform"
    assert set(checkpoint["network_weights"]) == set(trainer.network.state_dict())

    restored = make_trainer(nnunet_root, _TwoTermTrainer)
    restored.load_checkpoint(path)
    assert restored.teacher_steps == 2
    assert restored.logger.get_value("train_kd", step=None) == trainer.logger.get_value("train_kd", step=None)
    for a, b in zip(restored.network.parameters(), trainer.network.parameters()):
        assert torch.equal(a, b)


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
    from nnunet_missingmod.training.base import trainer_registry
    assert MissingModalityTrainerBase.__name__ not in trainer_registry()
