"""The base trainer's frozen teacher on the real plans of the tiny dataset: two-phase snapshots (switch, sampling,
checkpoint and resume) and teachers from a finished run (robustify: start, distillation at agreement, refusals)."""
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.base import TEACHER, SwitchAnnealedPolyLRScheduler
from nnunet_missingmod.training.distillation import TEACHER_ENV, deep_supervision_weights, logit_kl, soft_dice_loss
from nnunet_missingmod.training.mstkd.trainer import MSTKDTeacherTrainer_small, MSTKDTrainer_stockTeacher_small
from nnunet_missingmod.training.robust import (
    RobustifyTrainer, TwoPhaseDistillTrainer, TwoPhaseDistillTrainer_annealedSnapshot,
    TwoPhaseDistillTrainer_emaTeacher, TwoPhaseDistillTrainer_everyScale)
from trainer_helpers import make_batch, make_trainer, module_parameters

FULL_SET = len(SUBSETS) - 1


class _TwoPhase4Epochs(TwoPhaseDistillTrainer):
    """4 epochs of 2 iterations: the snapshot is taken at the start of epoch 2."""

    budget = {"num_epochs": 4, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
    subset_seed = 5


class _TwoPhaseEma4Epochs(TwoPhaseDistillTrainer_emaTeacher):
    """The same schedule with the mean teacher after the switch."""

    budget = _TwoPhase4Epochs.budget
    subset_seed = 5


class _TwoPhaseAnnealed4Epochs(TwoPhaseDistillTrainer_annealedSnapshot):
    """The same schedule with phase 1 annealed to the switch."""

    budget = _TwoPhase4Epochs.budget
    subset_seed = 5


def _epoch(trainer, epoch, seed):
    """What nnU-Net's loop does around the steps of one epoch (the epoch counter, the epoch start, 2 steps)."""
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()
    return [trainer.train_step(make_batch(trainer, seed=seed + i)) for i in range(2)]


def _resumed(nnunet_root, trainer, path):
    """``trainer`` saved at the end of its current epoch and loaded into a new trainer, as ``--c`` does."""
    trainer.save_checkpoint(path)
    restored = make_trainer(nnunet_root, type(trainer))
    restored.load_checkpoint(path)
    return restored


def test_two_phase_draws_the_full_set_then_snapshots_and_keeps_the_teacher_fixed(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoPhase4Epochs)
    assert trainer.teacher_switch_epoch() == 2
    assert trainer.extra_modules[TEACHER] is not trainer.network
    for epoch in (0, 1):
        terms = _epoch(trainer, epoch, seed=10 * epoch)
        assert trainer.teacher_snapshot_epoch is None
        assert all(float(t["distill_kl"]) == 0 for t in terms)  # phase 1: logged as zeros
        assert (trainer.sample_subset_indices(64) == FULL_SET).all()
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    assert trainer.teacher_snapshot_epoch == 2
    snapshot = module_parameters(trainer.extra_modules[TEACHER])
    assert torch.equal(snapshot, module_parameters(trainer.network))
    draws = trainer.sample_subset_indices(64)
    assert (draws != FULL_SET).any() and (draws == FULL_SET).any()  # cardinality sampling: 1/4 full set
    for seed in (20, 21):
        terms = trainer.train_step(make_batch(trainer, seed=seed))
        assert float(terms["distill_kl"]) > 0
    assert torch.equal(snapshot, module_parameters(trainer.extra_modules[TEACHER]))  # frozen after the switch
    assert not torch.equal(snapshot, module_parameters(trainer.network))
    assert not trainer.extra_modules[TEACHER].training
    assert not any(p.requires_grad for p in trainer.extra_modules[TEACHER].parameters())


@pytest.mark.parametrize("trainer_class", [_TwoPhase4Epochs, _TwoPhaseEma4Epochs, _TwoPhaseAnnealed4Epochs],
                         ids=["snapshot", "ema", "annealed"])
def test_two_phase_resume_before_and_after_the_switch_equals_an_uninterrupted_run(nnunet_root, tiny_preprocessed,
                                                                                  tmp_path, trainer_class):
    torch.manual_seed(0)
    uninterrupted = make_trainer(nnunet_root, trainer_class)
    torch.manual_seed(0)
    interrupted = make_trainer(nnunet_root, trainer_class)
    for trainer in (uninterrupted, interrupted):
        _epoch(trainer, 1, seed=0)
    # killed at the end of epoch 1 (phase 1): the resumed run takes its snapshot at the same epoch
    interrupted = _resumed(nnunet_root, interrupted, str(tmp_path / "phase1.pth"))
    assert interrupted.current_epoch == 2 and interrupted.teacher_snapshot_epoch is None
    for trainer in (uninterrupted, interrupted):
        _epoch(trainer, 2, seed=100)
    assert interrupted.teacher_snapshot_epoch == uninterrupted.teacher_snapshot_epoch == 2
    # killed at the end of epoch 2 (phase 2): the snapshot comes back bit-exact and the next steps are identical
    interrupted = _resumed(nnunet_root, interrupted, str(tmp_path / "phase2.pth"))
    assert interrupted.teacher_snapshot_epoch == 2
    assert torch.equal(module_parameters(interrupted.extra_modules[TEACHER]),
                       module_parameters(uninterrupted.extra_modules[TEACHER]))
    steps = [_epoch(trainer, 3, seed=200) for trainer in (uninterrupted, interrupted)]
    for a, b in zip(*steps):
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    for name in ("network", TEACHER):
        get = (lambda t: t.network) if name == "network" else (lambda t: t.extra_modules[TEACHER])
        assert torch.equal(module_parameters(get(uninterrupted)), module_parameters(get(interrupted))), name


def test_deep_supervision_weights_are_nnunets():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])  # 1, 1/2, lowest 0; normalised
    assert sum(deep_supervision_weights(5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one scale"):
        deep_supervision_weights(0)


def test_every_scale_distillation_weighs_each_scale_as_nnunets_loss(nnunet_root, tiny_preprocessed):
    every = make_trainer(nnunet_root, TwoPhaseDistillTrainer_everyScale)
    plain = make_trainer(nnunet_root, TwoPhaseDistillTrainer)
    g = torch.Generator().manual_seed(0)
    # three scales of region logits (the tiny plans have two, whose lowest weighs 0), highest resolution first
    teacher = [torch.randn(2, 3, size, size, size, generator=g) for size in (8, 4, 2)]
    with torch.no_grad():
        student = [t.clone() for t in teacher]
        student[1] = student[1] + 1.0  # only the second scale disagrees
        assert float(plain.teacher_distillation(teacher, student).loss) == pytest.approx(0.0, abs=1e-6)
        distilled = every.teacher_distillation(teacher, student)
        weight = deep_supervision_weights(len(teacher))[1]
        kl = logit_kl(teacher[1], student[1], regions=True).mean()
        dice = soft_dice_loss(teacher[1], student[1], regions=True)
        assert float(distilled.terms["distill_kl"]) == pytest.approx(weight * float(kl), rel=1e-5)
        assert float(distilled.terms["distill_dice"]) == pytest.approx(weight * float(dice), rel=1e-5)
        assert float(distilled.loss) == pytest.approx(weight * float(kl + dice), rel=1e-5)
        lowest = [t.clone() for t in teacher]
        lowest[-1] = lowest[-1] + 1.0  # nnU-Net gives the lowest scale weight 0
        assert float(every.teacher_distillation(teacher, lowest).loss) == pytest.approx(0.0, abs=1e-6)


def test_the_mean_teacher_follows_the_student_after_the_switch_only(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoPhaseEma4Epochs)
    momentum = trainer.teacher_ema_momentum
    initial_teacher = module_parameters(trainer.extra_modules[TEACHER])
    _epoch(trainer, 1, seed=0)  # phase 1: the teacher is not touched
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), initial_teacher)
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    teacher = module_parameters(trainer.extra_modules[TEACHER])
    assert torch.equal(teacher, module_parameters(trainer.network))  # the snapshot starts the average
    for seed in (30, 31):
        trainer.train_step(make_batch(trainer, seed=seed))
        student = module_parameters(trainer.network)
        expected = momentum * teacher + (1 - momentum) * student
        teacher = module_parameters(trainer.extra_modules[TEACHER])
        assert torch.allclose(teacher, expected, atol=1e-7)
        assert not torch.equal(teacher, student)
    assert not any(p.requires_grad for p in trainer.extra_modules[TEACHER].parameters())


def test_a_mean_teacher_needs_a_snapshot_teacher_and_a_momentum_below_one(nnunet_root, tiny_preprocessed):
    class _EmaOfACheckpoint(RobustifyTrainer):
        teacher_ema_momentum = 0.99

    class _MomentumOne(TwoPhaseDistillTrainer):
        teacher_ema_momentum = 1.0

    for cls in (_EmaOfACheckpoint, _MomentumOne):
        with pytest.raises(ValueError, match="teacher_ema_momentum needs teacher_source 'snapshot'"):
            make_trainer(nnunet_root, cls)


def test_the_switch_annealed_schedule_ends_phase_1_near_zero_and_then_follows_nnunets_poly():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = SwitchAnnealedPolyLRScheduler(optimizer, 0.01, max_steps=20, switch_epoch=10)
    expected = {0: 0.01, 5: 0.01 * 0.5 ** 0.9, 9: 0.01 * 0.1 ** 0.9,  # phase 1: its own poly over 10 epochs
                10: 0.01 * 0.5 ** 0.9, 15: 0.01 * 0.25 ** 0.9, 19: 0.01 * 0.05 ** 0.9}  # nnU-Net's over 20
    for epoch, lr in expected.items():
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch
    for switch in (0, 20):
        with pytest.raises(ValueError, match="inside the run's 20 epochs, got " + str(switch)):
            SwitchAnnealedPolyLRScheduler(optimizer, 0.01, max_steps=20, switch_epoch=switch)


def test_an_annealed_two_phase_run_sets_each_epochs_learning_rate_and_needs_a_snapshot(nnunet_root,
                                                                                        tiny_preprocessed):
    trainer = make_trainer(nnunet_root, _TwoPhaseAnnealed4Epochs)
    initial = trainer.initial_lr
    expected = [initial, initial * 0.5 ** 0.9, initial * 0.5 ** 0.9, initial * 0.25 ** 0.9]  # switch at epoch 2
    for epoch, lr in enumerate(expected):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch
    assert trainer.missingmod_config()["anneal_before_switch"] is True

    class _AnnealedRobustify(RobustifyTrainer):
        anneal_before_switch = True

    with pytest.raises(ValueError, match="anneal_before_switch needs teacher_source 'snapshot'"):
        make_trainer(nnunet_root, _AnnealedRobustify)


@pytest.fixture(scope="module")
def stock_run(nnunet_root, tiny_preprocessed, tmp_path_factory):
    """A stock ``nnUNetTrainer`` checkpoint after one step (what a user already has, at toy size)."""
    stock = make_trainer(nnunet_root, nnUNetTrainer)
    stock.on_train_epoch_start()
    stock.train_step(make_batch(stock))
    path = tmp_path_factory.mktemp("stock") / "checkpoint_final.pth"
    stock.save_checkpoint(str(path))
    return path, module_parameters(stock.network)


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
        agreed = trainer.teacher_distillation(trainer.extra_modules[TEACHER](data), trainer.network(data))
        assert float(agreed.loss) == pytest.approx(0.0, abs=1e-6)
        assert float(agreed.terms["distill_kl"]) == pytest.approx(0.0, abs=1e-6)
        assert float(agreed.terms["distill_dice"]) == pytest.approx(0.0, abs=1e-6)
        disagreed = trainer.teacher_distillation(trainer.extra_modules[TEACHER](data), trainer.network(0 * data))
        assert float(disagreed.terms["distill_kl"]) > 1e-4 and float(disagreed.terms["distill_dice"]) > 1e-4
    trainer.on_train_epoch_start()
    trainer.train_step(make_batch(trainer, seed=3))
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), stock_weights)
    assert not torch.equal(module_parameters(trainer.network), stock_weights)


def test_a_stock_teacher_for_mstkd_seeds_the_student_where_names_and_shapes_match(nnunet_root, stock_run,
                                                                                   monkeypatch):
    path, stock_weights = stock_run
    monkeypatch.setenv(TEACHER_ENV, str(path))
    trainer = make_trainer(nnunet_root, MSTKDTrainer_stockTeacher_small)
    stock = torch.load(path, weights_only=False)["network_weights"]
    student = trainer.network.state_dict()
    shared = [k for k in stock if k in student and student[k].shape == stock[k].shape]
    assert len(shared) > len(stock) // 2 and all(torch.equal(student[k], stock[k]) for k in shared)
    assert torch.equal(module_parameters(trainer.extra_modules[TEACHER]), stock_weights)
    terms = trainer.train_step(make_batch(trainer))
    assert "evd" not in terms and torch.isfinite(torch.as_tensor(terms["slkd"]))


def test_teachers_that_do_not_fit_are_refused_naming_file_trainer_and_the_trainer_to_use(
        nnunet_root, stock_run, tmp_path, monkeypatch):
    monkeypatch.delenv(TEACHER_ENV, raising=False)
    with pytest.raises(MissingModError, match=f"{TEACHER_ENV}.*-tr nnUNetTrainer"):
        make_trainer(nnunet_root, RobustifyTrainer)

    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    monkeypatch.setenv(TEACHER_ENV, str(not_a_checkpoint))
    with pytest.raises(MissingModError, match="notes.pth is not a PyTorch checkpoint"):
        make_trainer(nnunet_root, RobustifyTrainer)
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "missing"))
    with pytest.raises(MissingModError, match="missing: no such checkpoint file or fold folder"):
        make_trainer(nnunet_root, RobustifyTrainer)

    path, _ = stock_run
    other_plans = torch.load(path, weights_only=False)
    configuration = other_plans["init_args"]["plans"]["configurations"]["3d_fullres"]
    configuration["patch_size"] = [p * 2 for p in configuration["patch_size"]]
    torch.save(other_plans, tmp_path / "other_plans.pth")
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "other_plans.pth"))
    with pytest.raises(MissingModError, match=r"other_plans.pth \(trainer nnUNetTrainer.*patch_size.*"
                                              r"-tr nnUNetTrainer"):
        make_trainer(nnunet_root, RobustifyTrainer)

    mstkd = make_trainer(nnunet_root, MSTKDTeacherTrainer_small)  # another architecture: robustify cannot start
    mstkd.save_checkpoint(str(tmp_path / "mstkd.pth"))
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "mstkd.pth"))
    with pytest.raises(MissingModError, match=r"mstkd.pth \(trainer MSTKDTeacherTrainer_small.*does not fit "
                                              r"RobustifyTrainer's network.*-tr nnUNetTrainer"):
        make_trainer(nnunet_root, RobustifyTrainer)


def test_plain_weights_strips_the_ddp_prefix_except_from_the_networks_own_names():
    from nnunet_missingmod.training.distillation import plain_weights, same_state_dict_layout

    class HasModuleChild(torch.nn.Module):  # a submodule literally called "module", as DDP's own wrapper has
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Linear(2, 2)

    net = HasModuleChild()
    own = net.state_dict()
    assert plain_weights({"module.w": 1, "b": 2}) == {"w": 1, "b": 2}
    assert plain_weights(own, own.keys()).keys() == own.keys()  # "module.weight" is the network's own name
    ddp_saved = {"module." + k: v for k, v in own.items()}
    assert same_state_dict_layout(net, ddp_saved)
    assert not same_state_dict_layout(net, {"module.weight": own["module.weight"]})


def test_robustify_with_presence_norms_starts_as_the_stock_model_and_trains_the_tables_of_the_drawn_patterns(
        nnunet_root, stock_run, monkeypatch):
    from nnunet_missingmod.training.presence import PresenceConditionedNorm
    from nnunet_missingmod.training.robust import RobustifyTrainer_presence
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
    assert norms and any(float(n.presence_shift.abs().sum()) > 0 for n in norms)
