"""The nnU-Net 2.8.1 code we copy (training/nnunet_copies.py): ``initialize`` with its hook, the optimiser and its
schedule hook, checkpoints with our two keys written atomically, ``load_checkpoint`` restoring everything from one
read; ``map_tensors`` and ``write_checkpoint``."""
import io

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
from nnunet_missingmod.training.nnunet_copies import (
    CHECKPOINT_CONFIG_KEY, CHECKPOINT_EXTRA_KEY, map_tensors, write_checkpoint)
from trainer_helpers import TeacherDiscriminatorTrainer, make_batch, make_trainer, module_parameters


class _HookedTrainer(ModalityDropoutTrainer):
    """Records what ``on_initialized`` sees and sets its own learning-rate schedule."""

    def on_initialized(self):
        super().on_initialized()
        self.seen_at_hook = {"initialized": self.was_initialized, "loss": self.loss is not None,
                             "optimizer": self.optimizer is not None}

    def make_lr_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)


def test_initialize_ends_with_the_hook_and_the_schedule_comes_from_make_lr_scheduler(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _HookedTrainer)
    assert trainer.seen_at_hook == {"initialized": True, "loss": True, "optimizer": True}
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.ConstantLR)
    stock = make_trainer(nnunet_root, ModalityDropoutTrainer)
    assert isinstance(stock.lr_scheduler, PolyLRScheduler)
    group = stock.optimizer.param_groups[0]  # nnU-Net's SGD
    assert isinstance(stock.optimizer, torch.optim.SGD) and group["momentum"] == 0.99 and group["nesterov"]
    with pytest.raises(RuntimeError, match="already initialized"):
        stock.initialize()


def test_map_tensors_replaces_every_tensor_and_keeps_the_containers():
    tree = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), "text")], "c": 3}
    doubled = map_tensors(lambda t: 2 * t, tree)
    assert torch.equal(doubled["a"], torch.full((2,), 2.0)) and torch.equal(doubled["b"][1][0], torch.full((1,), 2.0))
    assert isinstance(doubled["b"], list) and isinstance(doubled["b"][1], tuple)
    assert doubled["b"][1][1] == "text" and doubled["c"] == 3
    assert torch.equal(tree["a"], torch.ones(2))  # the input is not changed


def test_write_checkpoint_writes_atomically(tmp_path):
    path = tmp_path / "checkpoint_latest.pth"
    write_checkpoint({"x": torch.arange(3)}, str(path))
    assert torch.equal(torch.load(path)["x"], torch.arange(3))
    with pytest.raises(Exception, match="lambda|pickle"):
        write_checkpoint({"bad": lambda: None}, str(path))
    assert torch.equal(torch.load(path)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_the_checkpoint_keeps_nnunets_keys_and_adds_ours(nnunet_root, tiny_preprocessed, tmp_path):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    path = tmp_path / "c.pth"
    trainer.save_checkpoint(str(path))
    checkpoint = torch.load(path, weights_only=False)
    assert {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch",
            "init_args", "trainer_name", "inference_allowed_mirroring_axes"} < set(checkpoint)
    assert checkpoint[CHECKPOINT_CONFIG_KEY]["trainer"] == "TeacherDiscriminatorTrainer"
    assert checkpoint[CHECKPOINT_CONFIG_KEY]["extra_modules"] == ["discriminator", "teacher"]
    assert set(checkpoint[CHECKPOINT_EXTRA_KEY]) == {"modules", "optimizers", "grad_scalers", "subset_generator",
                                                     "method"}
    network = trainer.network.state_dict()
    assert checkpoint["network_weights"].keys() == network.keys()  # the inference network, as stock nnU-Net saves


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
