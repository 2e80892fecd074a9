"""Modules beside the network (training/extra_modules.py), through a minimal two-network method
(``trainer_helpers.TeacherDiscriminatorTrainer``): built before the optimisers, switched, toggled and stepped with the
network; a frozen module; ``frozen_parameters``, ``unwrap_network`` and the checks of a checkpoint's module state."""
import pytest
import torch
from torch import nn

from nnunet_missingmod.training.base import MaskedBatch
from nnunet_missingmod.training.extra_modules import ExtraModule, frozen_parameters, unwrap_network
from trainer_helpers import TeacherDiscriminatorTrainer, make_batch, make_trainer, module_parameters


class _FrozenProbeTrainer(TeacherDiscriminatorTrainer):
    """A frozen extra module beside the teacher and the discriminator."""

    def build_extra_modules(self):
        return {**super().build_extra_modules(), "probe": ExtraModule(nn.Conv3d(4, 2, 1), trainable=False)}


def _batch_for(trainer):
    raw = make_batch(trainer)
    indices = trainer.sample_subset_indices(2)
    return MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])


def test_extra_modules_are_built_before_the_optimisers_and_switched_with_the_network(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    teacher, discriminator = trainer.extra_modules["teacher"], trainer.extra_modules["discriminator"]
    main_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.network.parameters()} <= main_params
    assert {id(p) for p in teacher.parameters()} <= main_params  # the jointly trained teacher shares the optimiser
    assert not {id(p) for p in discriminator.parameters()} & main_params
    assert isinstance(trainer.extra_optimizers["discriminator"], torch.optim.Adam)
    assert trainer.extra_specs["teacher"].joins_main_optimizer and not trainer.extra_specs["discriminator"] \
        .joins_main_optimizer
    trainer.on_validation_epoch_start()
    assert not teacher.training and not discriminator.training
    trainer.on_train_epoch_start()
    assert teacher.training and discriminator.training and trainer.network.training
    trainer.set_deep_supervision_enabled(False)
    assert unwrap_network(teacher).decoder.deep_supervision is False
    trainer.set_deep_supervision_enabled(True)
    assert unwrap_network(teacher).decoder.deep_supervision is True


def test_a_frozen_module_has_no_gradient_no_optimiser_and_stays_in_eval_mode(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _FrozenProbeTrainer)
    probe = trainer.extra_modules["probe"]
    assert not any(p.requires_grad for p in probe.parameters())
    assert "probe" not in trainer.extra_optimizers and not trainer.extra_specs["probe"].joins_main_optimizer
    main_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not {id(p) for p in probe.parameters()} & main_params
    trainer.on_train_epoch_start()
    assert not probe.training and trainer.extra_modules["teacher"].training
    before = module_parameters(probe)
    trainer.train_step(make_batch(trainer))
    assert torch.equal(before, module_parameters(probe))


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


def test_frozen_parameters_lets_gradients_through_to_the_input_and_restores_the_flags():
    module = nn.Linear(3, 1)
    module.bias.requires_grad_(False)  # a flag of its own, restored as it was
    x = torch.randn(2, 3, requires_grad=True)
    with frozen_parameters(module) as plain:
        assert plain is module and not any(p.requires_grad for p in module.parameters())
        plain(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert module.weight.grad is None
    assert module.weight.requires_grad and not module.bias.requires_grad
    with pytest.raises(RuntimeError, match="inside"), frozen_parameters(module):
        raise RuntimeError("inside")
    assert module.weight.requires_grad  # restored after an error too


def test_unwrap_network_returns_the_plain_module_behind_compile():
    module = nn.Linear(2, 2)
    assert unwrap_network(module) is module
    assert unwrap_network(torch.compile(module, backend="eager")) is module


def test_a_checkpoint_lacking_a_modules_state_is_refused_before_anything_loads(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, TeacherDiscriminatorTrainer)
    state = trainer.extra_modules_state()
    assert set(state["modules"]) == {"teacher", "discriminator"} and set(state["optimizers"]) == {"discriminator"}
    del state["modules"]["discriminator"]
    with pytest.raises(RuntimeError, match=r"c.pth lacks the state of extra modules \['discriminator'\]"):
        trainer.check_extra_modules_state(state, "c.pth", "missingmod_extra")
    with pytest.raises(RuntimeError, match="c.pth has no 'missingmod_extra'.*TeacherDiscriminatorTrainer"):
        trainer.check_extra_modules_state(None, "c.pth", "missingmod_extra")
