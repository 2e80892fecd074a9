"""The public self-distillation trainers (methods/selfdistill/trainer.py) on the real plans of the tiny dataset:
what each sets, and robustify on a finished stock run (its start, distillation at agreement, presence norms)."""
import pytest
import torch

from nnunet_missingmod.training.extra_modules import TEACHER
from nnunet_missingmod.training.methods.selfdistill.losses import DISTILL_TERMS
from nnunet_missingmod.training.methods.selfdistill.trainer import (
    SELF_DISTILLATION_TRAINER, RobustifyTrainer, TwoPhaseDistillTrainer, TwoPhaseTrainer)
from nnunet_missingmod.training.naming import trainer_registry
from nnunet_missingmod.training.teacher import TEACHER_ENV
from trainer_helpers import make_batch, make_trainer, module_parameters


def test_the_public_trainers_settings():
    assert SELF_DISTILLATION_TRAINER in trainer_registry()
    assert TwoPhaseTrainer.teacher.source == "snapshot" and not TwoPhaseTrainer.distillation.active
    assert TwoPhaseDistillTrainer.teacher == TwoPhaseTrainer.teacher
    assert (TwoPhaseDistillTrainer.distillation.kl_weight, TwoPhaseDistillTrainer.distillation.dice_weight) == (1, 1)
    assert RobustifyTrainer.teacher.source == "checkpoint" and RobustifyTrainer.teacher.start_from == "strict"
    assert RobustifyTrainer.distillation == TwoPhaseDistillTrainer.distillation
    for cls in (TwoPhaseTrainer, TwoPhaseDistillTrainer, RobustifyTrainer):
        assert cls.sampling.strategy == "cardinality"


def test_two_phase_without_distillation_logs_no_terms_and_adds_nothing_to_nnunets_loss(nnunet_root,
                                                                                      tiny_preprocessed):
    trainer = make_trainer(nnunet_root, TwoPhaseTrainer)
    assert trainer.loss_terms == ()
    trainer.current_epoch = trainer.teacher_switch_epoch()
    trainer.on_train_epoch_start()
    assert trainer.teacher_active()
    out = trainer.train_step(make_batch(trainer))
    assert set(out) == {"loss"}
    assert make_trainer(nnunet_root, TwoPhaseDistillTrainer).loss_terms == DISTILL_TERMS


def test_robustify_starts_from_the_stock_run_and_distils_nothing_where_the_outputs_agree(
        nnunet_root, stock_run, monkeypatch):
    path, stock_weights = stock_run
    monkeypatch.setenv(TEACHER_ENV, str(path.parent))  # the fold folder, as nnU-Net writes it
    trainer = make_trainer(nnunet_root, RobustifyTrainer)
    assert torch.equal(module_parameters(trainer.network), stock_weights)
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), stock_weights)
    assert trainer.initial_lr == 1e-3 and trainer.teacher_active()
    data = make_batch(trainer)["data"]
    with torch.no_grad():
        loss, terms = trainer.distillation_loss(trainer.extra_modules[TEACHER](data), trainer.network(data))
        assert float(loss) == pytest.approx(0.0, abs=1e-6)
        assert float(terms["distill_kl"]) == pytest.approx(0.0, abs=1e-6)
        assert float(terms["distill_dice"]) == pytest.approx(0.0, abs=1e-6)
        _, disagreed = trainer.distillation_loss(trainer.extra_modules[TEACHER](data), trainer.network(0 * data))
        assert float(disagreed["distill_kl"]) > 1e-4 and float(disagreed["distill_dice"]) > 1e-4
    trainer.on_train_epoch_start()
    trainer.train_step(make_batch(trainer, seed=3))
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), stock_weights)
    assert not torch.equal(module_parameters(trainer.network), stock_weights)


def test_robustify_with_presence_norms_starts_as_the_stock_model_and_trains_the_tables_of_the_drawn_patterns(
        nnunet_root, stock_run, monkeypatch):
    from nnunet_missingmod.training.methods.dropout.presence import PresenceConditionedNorm
    from nnunet_missingmod.training.methods.selfdistill.ablations import RobustifyTrainer_presence
    path, _ = stock_run
    monkeypatch.setenv(TEACHER_ENV, str(path))
    trainer = make_trainer(nnunet_root, RobustifyTrainer_presence)
    data = make_batch(trainer)["data"]
    masked = data.clone()
    masked[:, 1] = 0.0  # T1ce missing
    with torch.no_grad():
        for x in (data, masked):
            assert torch.allclose(trainer.network(x)[0], trainer.extra_modules[TEACHER](x)[0], atol=1e-6)
    trainer.on_train_epoch_start()
    trainer.train_step(make_batch(trainer, seed=3))
    norms = [m for m in trainer.network.modules() if isinstance(m, PresenceConditionedNorm)]
    assert norms and any(float(n.presence_shift.detach().abs().sum()) > 0 for n in norms)
