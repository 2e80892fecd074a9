"""CCSDTrainer on the real nnU-Net plans of the tiny dataset: its settings; one step trains every parameter; the
loss is the weighted sum of the terms that are on (ablations switch terms off, not their measurement); the level and
the students decoded; the path strategies; warm-up; checkpoint resume; end to end through nnUNetv2_train, stock
nnUNetv2_predict and our predict."""
import json
from dataclasses import replace

import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, nnunet_env, run_command, train_model
from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.base import MaskedBatch
from nnunet_missingmod.training.methods.ccsd import trainer as ccsd_trainer
from nnunet_missingmod.training.methods.ccsd.ablations import (
    CCSDTrainer_gradCriticality, CCSDTrainer_noDMCD_small, CCSDTrainer_noHMSD_small, CCSDTrainer_noKD_small)
from nnunet_missingmod.training.methods.ccsd.losses import hierarchy_level_subsets
from nnunet_missingmod.training.methods.ccsd.network import FUSED, SUBSET_LOGITS
from nnunet_missingmod.training.methods.ccsd.path import FULL_SET_INDEX, subset_index_of
from nnunet_missingmod.training.methods.ccsd.trainer import CCSDSettings, CCSDTrainer, CCSDTrainer_small
from trainer_helpers import make_batch, make_trainer, module_parameters

SEED = 3  # of the subset generator, which draws the level, the students and a random path


def _full_batch(trainer, seed=0):
    raw = make_batch(trainer, seed=seed)
    indices = torch.full((raw["data"].shape[0],), FULL_SET_INDEX)
    return MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])


def _step(trainer, seed=0, draws=SEED):
    """compute_loss_terms on a full-set batch (``seed``) with the subset generator seeded (``draws``), recording what
    the network decoded and the path DMCD was given."""
    calls = {}

    def record_forward(module, args, kwargs, output):
        calls["decode_subsets"] = tuple(kwargs.get("decode_subsets", ()))
        calls["decoded"] = tuple(sorted(output[SUBSET_LOGITS])) if isinstance(output, dict) else None
        calls["fused"] = output[FUSED] if isinstance(output, dict) else None

    dmcd_loss = trainer.dmcd_loss

    def record_dmcd(fused, path):
        calls["path"] = path
        return dmcd_loss(fused, path)

    handle = trainer.network.register_forward_hook(record_forward, with_kwargs=True)
    trainer.dmcd_loss = record_dmcd
    trainer.subset_generator.manual_seed(draws)
    try:
        result = trainer.compute_loss_terms(_full_batch(trainer, seed))
    finally:
        handle.remove()
        trainer.dmcd_loss = dmcd_loss
    return result, calls


def _made(nnunet_root, cls):
    torch.manual_seed(0)  # the same initial weights for classes with the same network
    return make_trainer(nnunet_root, cls)


@pytest.mark.parametrize("bad, message", [
    (dict(specific_width=0), "CCSDSettings.specific_width must be > 0, got 0"),
    (dict(temperature=-1.0), "CCSDSettings.temperature must be > 0, got -1.0"),
    (dict(hmsd_weight=-0.1), "CCSDSettings.hmsd_weight must be >= 0, got -0.1"),
    (dict(domain_weight=-2), "CCSDSettings.domain_weight must be >= 0, got -2"),
    (dict(missing_slot="mean"), "CCSDSettings.missing_slot must be one of .*got 'mean'"),
    (dict(path_strategy="greedy"), "CCSDSettings.path_strategy must be one of .*got 'greedy'"),
    (dict(hierarchy_levels=(1, 4)), r"CCSDSettings.hierarchy_levels must be a non-empty tuple of levels in 1..3, "
                                    r"got \(1, 4\)"),
    (dict(hierarchy_levels=()), r"CCSDSettings.hierarchy_levels .*got \(\)"),
    (dict(max_level_subsets=0), "CCSDSettings.max_level_subsets must be None or >= 1, got 0"),
    (dict(warmup=1.0), r"CCSDSettings.warmup must be in \[0, 1\), got 1.0"),
])
def test_ccsd_settings_refuse_a_bad_value_naming_the_setting_and_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        CCSDSettings(**bad)


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
    # the network gets every sequence; students come from its cache
    assert trainer.subset_masks[trainer.sample_subset_indices(16)].all()


def _expected_loss(method, terms):
    """The loss the settings ask for: nnU-Net's loss on the full set (and on the students), each term that is on
    with its weight, and ShaSpec's two auxiliary terms with theirs."""
    loss = terms["seg_full"] + (terms["seg_students"] if method.student_segmentation else 0.0)
    loss = loss + (method.hmsd_weight * terms["hmsd"] if method.use_hmsd else 0.0)
    loss = loss + (method.dmcd_weight * terms["dmcd"] if method.use_dmcd else 0.0)
    return loss + method.shared_alignment_weight * terms["shared_alignment"] + method.domain_weight * terms["domain"]


class _Weighted_small(CCSDTrainer_small):
    """Weights far from 1 and no student segmentation: each weight's effect is visible in the loss."""
    method = replace(CCSDTrainer_small.method, hmsd_weight=2.0, dmcd_weight=3.0, shared_alignment_weight=0.5,
                     domain_weight=0.25, student_segmentation=False)


def test_the_loss_is_the_weighted_sum_of_the_terms_that_are_on_and_an_ablation_changes_only_that(nnunet_root,
                                                                                                  tiny_preprocessed):
    variants = (CCSDTrainer_small, CCSDTrainer_noHMSD_small, CCSDTrainer_noDMCD_small, CCSDTrainer_noKD_small,
                _Weighted_small)
    steps = {cls: _step(_made(nnunet_root, cls))[0] for cls in variants}
    for cls, result in steps.items():
        torch.testing.assert_close(result.loss, _expected_loss(cls.method, result.terms), msg=cls.__name__)
        assert result.terms["hmsd"] > 0 and result.terms["dmcd"] > 0, cls.__name__  # still measured and logged
    # same initial weights and draws: every term is the same number in every variant, only what enters the loss
    # differs, by exactly the weighted term an ablation switches off
    full = steps[CCSDTrainer_small]
    for cls, result in steps.items():
        for name in ("seg_full", "seg_students", "hmsd", "dmcd", "shared_alignment", "domain", "level"):
            torch.testing.assert_close(result.terms[name], full.terms[name], msg=f"{cls.__name__}: {name}")
    torch.testing.assert_close(full.loss - steps[CCSDTrainer_noHMSD_small].loss, full.terms["hmsd"])
    torch.testing.assert_close(full.loss - steps[CCSDTrainer_noDMCD_small].loss, full.terms["dmcd"])
    torch.testing.assert_close(full.loss - steps[CCSDTrainer_noKD_small].loss,
                               full.terms["hmsd"] + full.terms["dmcd"])
    weighted = steps[_Weighted_small].loss
    expected = full.loss - full.terms["seg_students"] + full.terms["hmsd"] + 2 * full.terms["dmcd"] \
        + 0.4 * full.terms["shared_alignment"] + 0.23 * full.terms["domain"]
    torch.testing.assert_close(weighted, expected)


@pytest.mark.parametrize("cls", [CCSDTrainer, CCSDTrainer_small], ids=lambda c: c.__name__)
def test_the_level_is_a_hierarchy_level_and_the_students_decoded_are_its_subsets(nnunet_root, tiny_preprocessed,
                                                                                 cls):
    trainer = make_trainer(nnunet_root, cls)
    levels = set()
    for draws in range(6):
        result, calls = _step(trainer, draws=draws)
        level = int(result.terms["level"])
        levels.add(level)
        assert level in trainer.method.hierarchy_levels
        trainer.subset_generator.manual_seed(draws)  # replay the step's draws: the level, then the students
        assert ccsd_trainer.sample_hierarchy_level(trainer.subset_generator, trainer.method.hierarchy_levels) == level
        students = trainer.level_subsets(level)
        assert calls["decode_subsets"] == students and calls["decoded"] == tuple(sorted(students))
        assert all(SUBSETS[i].cardinality == level for i in students)
        if trainer.method.max_level_subsets is None:
            assert students == hierarchy_level_subsets(level)  # every subset of the level
        else:
            assert len(students) == trainer.method.max_level_subsets and set(students) <= set(
                hierarchy_level_subsets(level))
    assert len(levels) > 1  # the draws differ between steps
    assert trainer.trainable_subsets() == [s.name for s in SUBSETS]  # levels 1..3 and the full set


def test_hierarchy_levels_restrict_the_drawn_level(nnunet_root, tiny_preprocessed):
    class _Level2_small(CCSDTrainer_small):
        method = replace(CCSDTrainer_small.method, hierarchy_levels=(2,), max_level_subsets=None)

    trainer = make_trainer(nnunet_root, _Level2_small)
    for draws in range(3):
        result, calls = _step(trainer, draws=draws)
        assert int(result.terms["level"]) == 2 and calls["decode_subsets"] == hierarchy_level_subsets(2)
    assert trainer.trainable_subsets() == [SUBSETS[i].name for i in hierarchy_level_subsets(2)] + \
        [SUBSETS[FULL_SET_INDEX].name]


def test_the_gradient_path_removes_the_sequence_of_the_largest_gradient_first(nnunet_root, tiny_preprocessed,
                                                                               monkeypatch):
    trainer = make_trainer(nnunet_root, CCSDTrainer_gradCriticality)
    assert trainer.method.path_strategy == "gradient"
    seen = {}
    real = ccsd_trainer.gradient_criticality

    def criticality(loss, features):
        seen["norms"] = real(loss, features)
        seen["loss"] = loss
        return norms

    # T1ce, then T2, then FLAIR carry the largest gradients (per sample): removed in that order
    norms = torch.tensor([[0.1, 5.0, 3.0, 0.2], [0.1, 5.0, 3.0, 0.2]])
    monkeypatch.setattr(ccsd_trainer, "gradient_criticality", criticality)
    result, calls = _step(trainer)
    t1, t1ce, t2, flair = range(4)
    idx = lambda *m: subset_index_of(tuple(i in m for i in range(4)))  # noqa: E731
    expected = [FULL_SET_INDEX, idx(t1, t2, flair), idx(t1, flair), idx(t1)]
    assert calls["path"].tolist() == [expected, expected]
    assert seen["loss"] is result.terms["seg_full"]  # the criticality is the segmentation loss's gradient
    real_norms = seen["norms"]
    assert real_norms.shape == (2, 4) and (real_norms > 0).all() and not real_norms.requires_grad
    torch.testing.assert_close(result.terms["dmcd"], trainer.dmcd_loss(calls["fused"], calls["path"]))
    # the default strategy reads the features, not a gradient
    default = make_trainer(nnunet_root, CCSDTrainer_small)
    seen.clear()
    _step(default)
    assert "norms" not in seen


def test_warmup_trains_the_full_set_alone_and_logs_the_methods_terms_as_zero(nnunet_root, tiny_preprocessed):
    class _Warmup_small(CCSDTrainer_small):
        method = replace(CCSDTrainer_small.method, warmup=0.5)
        budget = {"num_epochs": 4, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}

    trainer = make_trainer(nnunet_root, _Warmup_small)
    result, calls = _step(trainer)
    assert trainer.in_warmup() and calls["decode_subsets"] == ()
    assert all(float(result.terms[name]) == 0 for name in ("seg_students", "hmsd", "dmcd", "level"))
    torch.testing.assert_close(result.loss, _expected_loss(trainer.method, result.terms))
    trainer.current_epoch = 2
    result, calls = _step(trainer)
    assert not trainer.in_warmup() and calls["decode_subsets"] and float(result.terms["level"]) >= 1


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
    return train_model(nnunet_root, "CCSDTrainer_small_debug")


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
