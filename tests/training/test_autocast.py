"""Every method's training step under autocast, on the CPU in bfloat16 (``cpu_autocast_dtype``), the stand-in in CI
for CUDA AMP: the step runs (network, extra modules, the discriminator's own step), every loss term is float32 and
finite, and the losses are close to the float32 step's on the same batch. Also: each distillation loss casts its
inputs to float32 once, so the gradient into a half-precision input is summed in float32."""
from dataclasses import replace

import pytest
import torch

from nnunet_missingmod.training.base import MaskedBatch
from nnunet_missingmod.training.methods.ccsd.ablations import CCSDTrainer_gradCriticality
from nnunet_missingmod.training.methods.ccsd.trainer import CCSDTrainer_small
from nnunet_missingmod.training.methods.demoseg.trainer import DeMoSegTrainer_small
from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
from nnunet_missingmod.training.methods.mstkd.ablations import MSTKDTrainer_content, MSTKDTrainer_frozenTeacher_small
from nnunet_missingmod.training.methods.mstkd.losses import EVDLoss, GramStyleLoss
from nnunet_missingmod.training.methods.mstkd.network import ATTENTION, MST_FEATURES, SMALL
from nnunet_missingmod.training.methods.mstkd.trainer import MSTKDTeacherTrainer_small, MSTKDTrainer_small
from nnunet_missingmod.training.teacher import TEACHER_ENV
from trainer_helpers import make_batch, make_trainer, module_parameters

torch.set_num_threads(1)

# The U-Net widths of every network here, a quarter of the tiny plans' [32, 64, 128]: without AVX-512-BF16 or AMX a
# CPU has no fast bfloat16 convolution (about 30 times float32's time on an AVX2 machine), and the step's code paths
# and casts do not depend on the widths.
NARROW = [8, 16, 32]


class _ContentSmall(MSTKDTrainer_content):
    """The content-MSE variant at the CPU size (the default sizes differ only in widths, not in the step)."""
    method = replace(MSTKDTrainer_content.method, transformer=SMALL)


class _GradCriticalitySmall(CCSDTrainer_gradCriticality):
    """The gradient-criticality path (an autograd.grad inside the step) at CCSDTrainer_small's sizes."""
    method = replace(CCSDTrainer_gradCriticality.method, shared_width=0.5, specific_width=0.25, max_level_subsets=1)


# Every step that code paths of the default trainers take: dropout; MST-KD with all terms and the discriminator's
# step, with the content MSE, with a frozen teacher; CCSD with the feature and the gradient criticality.
TRAINERS = [ModalityDropoutTrainer, MSTKDTrainer_small, _ContentSmall, MSTKDTrainer_frozenTeacher_small,
            CCSDTrainer_small, _GradCriticalitySmall, DeMoSegTrainer_small]

# bfloat16 keeps 8 significant bits: each conv/linear output is rounded by up to 2^-9 (0.2%) relative, and a loss
# (a mean over many voxels) averages these errors. Measured at the NARROW widths on the tiny plans: every term within
# 0.21% of the float32 step's (largest: CCSD's HMSD; the segmentation losses within 0.04%). 1% relative gives ~5x
# margin for other seeds and kernels, yet catches a term computed in bfloat16 throughout; no absolute slack, since the
# Gram term is ~4e-15 (EVD is checked after its weight 1e8, as the trainer adds it).
RTOL, ATOL = 1e-2, 0.0
WEIGHTED = {"evd": 1e8}


@pytest.fixture
def frozen_teacher(nnunet_root, tiny_preprocessed, tmp_path, monkeypatch):
    teacher = make_trainer(nnunet_root, MSTKDTeacherTrainer_small, features_per_stage=NARROW)
    teacher.save_checkpoint(str(tmp_path / "teacher.pth"))
    monkeypatch.setenv(TEACHER_ENV, str(tmp_path / "teacher.pth"))


def _losses(trainer, batch, dtype):
    """The loss terms of compute_loss_terms and of every extra module's own loss, under ``trainer.autocast()`` with
    CPU autocast in ``dtype`` (None: float32), networks in eval mode (no dropout) and the draws of the step reset."""
    trainer.cpu_autocast_dtype = dtype
    trainer.subset_generator.manual_seed(5)
    for module in (trainer.network, *trainer.extra_modules.values()):
        module.eval()
    with trainer.autocast():
        result = trainer.compute_loss_terms(batch)
        terms = {"loss": result.loss, **result.terms}
        for name in trainer.extra_optimizers:
            terms.update(trainer.extra_module_loss(name, batch, result.context).terms)
    return {name: value.detach() for name, value in terms.items()}


@pytest.mark.parametrize("trainer_class", TRAINERS, ids=lambda c: c.__name__)
def test_training_step_under_bfloat16_autocast(nnunet_root, tiny_preprocessed, request, trainer_class):
    if getattr(getattr(trainer_class, "method", None), "teacher", None) == "checkpoint":  # MST-KD's frozen teacher
        request.getfixturevalue("frozen_teacher")
    torch.manual_seed(0)  # the same initial weights whatever ran before (the tolerance was measured on these)
    trainer = make_trainer(nnunet_root, trainer_class, features_per_stage=NARROW)
    raw = make_batch(trainer, seed=1)
    indices = torch.tensor([0, 9])  # T1 alone, T2 + FLAIR: the students differ from the teacher
    batch = MaskedBatch(raw["data"], trainer.subset_masks[indices], indices, raw["target"])

    reference = _losses(trainer, batch, None)
    mixed = _losses(trainer, batch, torch.bfloat16)
    assert set(mixed) == set(reference) and set(trainer.loss_terms) <= set(mixed) | {"discriminator"}
    if "dmcd" in mixed:
        # CCSD's decremental path is an argmax over per-sequence criticalities; where two are nearly equal, bfloat16
        # may pick the other (equally valid) path, which changes DMCD discretely, not by rounding. The path-free
        # part of the loss is compared instead; DMCD itself is checked for dtype and finiteness.
        for terms in (mixed, reference):
            terms["loss"] = terms["loss"] - trainer.method.dmcd_weight * terms["dmcd"]
    for name, value in mixed.items():
        assert value.dtype == torch.float32, f"{name} is {value.dtype} under autocast"
        assert torch.isfinite(value).all(), name
        if name == "dmcd":
            continue
        weight = WEIGHTED.get(name, 1.0)
        torch.testing.assert_close(value * weight, reference[name] * weight, rtol=RTOL, atol=ATOL, msg=name)

    # the whole step under autocast: backward, clipping, the main and the extra optimisers' steps
    before = {"network": module_parameters(trainer.network),
              **{n: module_parameters(m) for n, m in trainer.extra_modules.items()}}
    trainer.on_train_epoch_start()  # training modes back, dropout on
    out = trainer.train_step(raw)
    assert set(out) == {"loss", *trainer.loss_terms}
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.values())
    for name, params in before.items():
        module = trainer.network if name == "network" else trainer.extra_modules[name]
        assert torch.isfinite(module_parameters(module)).all(), name
        frozen = name == "teacher" and getattr(trainer, "frozen_teacher", False)
        assert torch.equal(params, module_parameters(module)) == frozen, name


def test_mstkd_attention_maps_are_float32_in_the_trainers_autocast(nnunet_root, tiny_preprocessed):
    """The maps EVD compares (the docs say float32) are float32 under the trainer's autocast, not just cast later:
    their differences (~1e-8 before the weight 1e8) are below half precision."""
    trainer = make_trainer(nnunet_root, MSTKDTrainer_small, features_per_stage=NARROW)
    trainer.cpu_autocast_dtype = torch.bfloat16
    raw = make_batch(trainer, seed=1)
    with trainer.autocast(), torch.no_grad():
        features = trainer.network(raw["data"], return_features=True)
    assert features[MST_FEATURES][0].dtype == torch.bfloat16  # the autocast is on
    assert features[ATTENTION] and all(a.dtype == torch.float32 for a in features[ATTENTION])


def _gradient_matches_one_cast(loss_fn, make_inputs):
    """The bfloat16 inputs' gradient equals the float32 gradient (of the same values) cast once to bfloat16, as it
    is when the loss casts each input once; casting an input twice sums two bfloat16-rounded parts instead."""
    half = [x.detach().requires_grad_() for x in make_inputs()]
    full = [x.detach().float().requires_grad_() for x in half]
    n = len(half) // 2
    loss_fn(half[:n], half[n:]).backward()
    loss_fn(full[:n], full[n:]).backward()
    for h, f in zip(half, full):
        assert h.grad.dtype == torch.bfloat16
        assert torch.equal(h.grad, f.grad.to(torch.bfloat16))


def test_evd_and_gram_cast_each_input_once():
    g = torch.Generator().manual_seed(0)

    def attention():
        return [torch.randn(2, 2, 16, 16, generator=g).softmax(-1).to(torch.bfloat16) for _ in range(8)]

    def features():
        return [torch.randn(2, 4, 3, 3, 3, generator=g).to(torch.bfloat16) for _ in range(6)]

    _gradient_matches_one_cast(lambda t, s: EVDLoss()(t, s) * 1e8, attention)
    _gradient_matches_one_cast(lambda t, s: GramStyleLoss()(t, s) * 1e4, features)
