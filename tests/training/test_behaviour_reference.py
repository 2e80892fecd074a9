"""Behaviour reference: what one seeded training step of every trainer computes, and whether checkpoints of the
public trainers still load, compared with what the code computed before the refactor.

``tests/reference_data/step_reference.json`` was written by ``tests/reference_data/make_step_reference.py`` on the
pre-refactor commit; this test never regenerates it. Per trainer it holds the seeded schedule that was run (see
:func:`run_reference_steps`; the generator's docstring explains each choice), the learning rate and every logged
term of each step, the sum and sum of squares (float64) of each module's parameters after ``initialize()``, and the
same per parameter tensor of the network and of every extra module after the last step. A difference beyond float
rounding (rtol 1e-5, atol 1e-6) is a change of behaviour; the message says whether construction or the step
changed.

The steps run in child processes, the generator's (one per CPU core), with its portable arithmetic
(``PORTABLE_ARITHMETIC_ENV`` and ``use_portable_arithmetic`` there): ATen's baseline kernels, MKL's compatible code
path, oneDNN off, one thread. With the arithmetic each CPU picks for itself, the weights after a few steps differ
between an AVX2 and an AVX-512 machine by more than the tolerance (the biases in front of an instance norm have a
zero gradient, so what they hold after a step is rounding alone); pinned, every x86-64 CPU computes the same
operations in the same order.

``tests/reference_data/models/`` holds tiny model folders of the public trainers (plans.json, dataset.json,
fold_0/checkpoint_final.pth written by the trainer's own ``save_checkpoint`` before the refactor, slimmed as the
generator says); both ``nnunet-missingmod predict`` and stock ``nnUNetv2_predict`` must load them and agree on a
complete case.

Takes several minutes on 2 CPU cores (the full-size MST-KD trainers hold two 115 M-parameter networks, and the
portable arithmetic is about three times slower than oneDNN's), hence slow.

Trainers renamed by the refactor are looked up through :data:`RENAMED`; classes come from ``trainer_registry()``
only, everything else from the trainer instance, so the test runs on the code before and after the refactor.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

try:
    from nnunet_missingmod.training.naming import trainer_registry
except ImportError:  # before the refactor
    from nnunet_missingmod.training.registry import trainer_registry

from conftest import DATASET_NAME, nnunet_env, plans_and_dataset_json
from trainer_helpers import make_batch

pytestmark = pytest.mark.slow

# Class names of the reference (pre-refactor) -> class names after the refactor.
RENAMED = {"ModalityDropoutTrainer_cardinalityPresence": "ModalityDropoutTrainer_cardinality_presence",
           "TwoPhaseDistillTrainer_tau2Weight3": "TwoPhaseDistillTrainer_tau2_weight3",
           "TwoPhaseDistillTrainer_tau2EveryScale": "TwoPhaseDistillTrainer_tau2_everyScale",
           "TwoPhaseDistillTrainer_tau2AnnealedSnapshot": "TwoPhaseDistillTrainer_tau2_annealedSnapshot"}

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference_data"
STEP_REFERENCE = REFERENCE_DIR / "step_reference.json"
GENERATOR = REFERENCE_DIR / "make_step_reference.py"
MODELS_DIR = REFERENCE_DIR / "models"
RTOL, ATOL = 1e-5, 1e-6  # float rounding only

# The seeded protocol (make_step_reference.py runs these same functions).
INIT_SEED = 0  # torch.manual_seed before the trainer (and with it every network) is built
SUBSET_SEED = 5  # trainer.subset_generator (subsets, CCSD's level, students, random path); with 5 the batch's two
# samples draw different subsets under uniform, cardinality and keep-full-50 sampling, one of them the full set
# under keep-full-50 (with 0 that sampler draws the full set twice and equals FullSetTrainer)
STEP_SEED = 1000  # torch.manual_seed(STEP_SEED + epoch) before each step: MST-KD's transformer dropout
BATCH_SEED = 0  # make_batch(trainer, seed=BATCH_SEED), one batch for every step
TEACHER_SEED = 7  # torch.manual_seed before a teacher run's trainer is built
TEACHER_ENV = "nnUNet_missingmod_teacher"


def current_name(reference_name: str) -> str:
    return RENAMED.get(reference_name, reference_name)


def trainer_class(reference_name: str) -> type:
    """The class recorded as ``reference_name``: under its new name, or its old one on the pre-refactor code."""
    registry = trainer_registry()
    for name in (current_name(reference_name), reference_name):
        if name in registry:
            return registry[name]
    raise AssertionError(f"trainer {reference_name!r} (renamed {current_name(reference_name)!r}) is not in "
                         f"trainer_registry()")


def is_budget_sibling(cls: type) -> bool:
    """A generated budget sibling (``X_debug``, ``X_demoSmall``, ...): a subclass of a trainer that sets nothing
    but ``budget``. Told by that, not by its suffix, so the test does not depend on how the siblings are named."""
    own = {name for name in vars(cls) if not (name.startswith("__") and name.endswith("__"))}
    return own == {"budget"}


def hand_written_trainer_names() -> list:
    """The registry's trainers without the generated budget siblings."""
    return sorted(name for name, cls in trainer_registry().items() if not is_budget_sibling(cls))


def tensor_digest(named_tensors) -> dict:
    """name -> [sum, sum of squares], in float64."""
    digest = {}
    for name, tensor in named_tensors:
        t = tensor.detach().to(torch.float64)
        digest[name] = [t.sum().item(), (t * t).sum().item()]
    return digest


def parameter_digests(trainer) -> dict:
    """Per-parameter digests of the network and of every extra module (``trainer.extra_modules``)."""
    extra = getattr(trainer, "extra_modules", {}) or {}
    return {"network": tensor_digest(trainer.network.named_parameters()),
            "extra_modules": {name: tensor_digest(module.named_parameters()) for name, module in extra.items()}}


def module_totals(trainer) -> dict:
    """One [sum, sum of squares] over all parameters per module: ``network`` and ``extra/<name>`` (the weights
    after initialisation; a difference there means the construction, not the step, changed)."""
    extra = getattr(trainer, "extra_modules", {}) or {}
    modules = {"network": trainer.network, **{f"extra/{name}": module for name, module in extra.items()}}
    totals = {}
    for name, module in modules.items():
        digest = np.array(list(tensor_digest(module.named_parameters()).values()) or [[0.0, 0.0]])
        totals[name] = digest.sum(axis=0).tolist()
    return totals


def four_stage_plans(plans: dict) -> dict:
    """The tiny plans with a fourth encoder stage (stride (2, 1, 1), 128 features; same patch), so that the network
    has 3 deep-supervision outputs. With the tiny plans' 2 outputs nnU-Net weighs the scales (1, 0), and
    distillation at every scale equals distillation at full resolution; here the second scale counts."""
    plans = copy.deepcopy(plans)
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch.update(n_stages=4, features_per_stage=arch["features_per_stage"] + [arch["features_per_stage"][-1]],
                kernel_sizes=arch["kernel_sizes"] + [[3, 3, 3]], strides=arch["strides"] + [[2, 1, 1]],
                n_conv_per_stage=arch["n_conv_per_stage"] + [2],
                n_conv_per_stage_decoder=arch["n_conv_per_stage_decoder"] + [2])
    return plans


PLANS_VARIANTS = {"tiny": lambda plans: plans, "four_stages": four_stage_plans}


def build_trainer(nnunet_root, cls, num_epochs: int, plans: dict = None, dataset_json: dict = None):
    """``cls`` on the CPU as tests/trainer_helpers.make_trainer builds it, with the budget set before
    ``initialize()`` (1 iteration per epoch, ``num_epochs`` epochs) and the seeds of the protocol."""
    if plans is None:
        plans, dataset_json = plans_and_dataset_json(nnunet_root)
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    torch.manual_seed(INIT_SEED)
    trainer = cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.num_epochs = num_epochs
    trainer.num_iterations_per_epoch = 1
    trainer.num_val_iterations_per_epoch = 1
    trainer.initialize()
    trainer.subset_generator.manual_seed(SUBSET_SEED)
    return trainer


def run_reference_steps(nnunet_root, cls, num_epochs: int, epochs, plans=None, dataset_json=None):
    """Build ``cls`` seeded, then for each epoch in ``epochs``: set ``current_epoch``, run the trainer's own
    ``on_train_epoch_start`` (learning rate of that epoch, a two-phase teacher's snapshot at its switch epoch),
    seed the global generator and run ``train_step`` on the one fixed batch. Returns the trainer and the record."""
    trainer = build_trainer(nnunet_root, cls, num_epochs, plans, dataset_json)
    record = {"num_epochs": num_epochs, "epochs": list(epochs), "initial": module_totals(trainer), "steps": []}
    batch = make_batch(trainer, seed=BATCH_SEED)
    for epoch in epochs:
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        torch.manual_seed(STEP_SEED + epoch)
        logged = trainer.train_step(batch)
        record["steps"].append({"epoch": epoch, "lr": float(trainer.optimizer.param_groups[0]["lr"]),
                                "terms": {k: float(np.asarray(v)) for k, v in sorted(logged.items())}})
    record["final"] = parameter_digests(trainer)
    return trainer, record


def reference_record(nnunet_root, cls, num_epochs: int, epochs, plans_variant: str = "tiny") -> dict:
    """:func:`run_reference_steps`'s record on the session's tiny plans (or a variant of them), with the trainer
    freed at once (the full-size MST-KD trainers hold about 3 GB each)."""
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    trainer, record = run_reference_steps(nnunet_root, cls, num_epochs, epochs,
                                          PLANS_VARIANTS[plans_variant](plans), dataset_json)
    record["plans_variant"] = plans_variant
    del trainer
    gc.collect()
    return record


def write_teacher_run(folder: Path, teacher_cls, plans: dict, dataset_json: dict) -> Path:
    """A finished run as nnU-Net lays it out (``<folder>/plans.json``, ``dataset.json``,
    ``fold_0/checkpoint_final.pth``): ``teacher_cls`` seeded and initialised, saved by its own ``save_checkpoint``
    without training. Returns the fold folder (what ``nnUNet_missingmod_teacher`` names)."""
    fold = folder / "fold_0"
    checkpoint = fold / "checkpoint_final.pth"
    if checkpoint.is_file():
        return fold
    fold.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    torch.manual_seed(TEACHER_SEED)
    teacher = teacher_cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    teacher.initialize()
    teacher.save_checkpoint(str(checkpoint))
    del teacher
    gc.collect()
    return fold


def teacher_class(name: str) -> type:
    if name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        return nnUNetTrainer
    return trainer_class(name)


def record_as_in_reference(nnunet_root, name: str, expected: dict, teachers: Path) -> dict:
    """The record of trainer ``name`` on the schedule, plans variant and teacher run that ``expected`` (its entry
    in the reference) was recorded with; the teacher run is written under ``teachers`` on first use."""
    if expected.get("teacher"):
        plans, dataset_json = plans_and_dataset_json(nnunet_root)
        teacher = expected["teacher"]
        os.environ[TEACHER_ENV] = str(write_teacher_run(teachers / f"{teacher}__nnUNetPlans__3d_fullres",
                                                        teacher_class(teacher), plans, dataset_json))
    else:
        os.environ.pop(TEACHER_ENV, None)
    try:
        return reference_record(nnunet_root, trainer_class(name), expected["num_epochs"], expected["epochs"],
                                expected["plans_variant"])
    finally:
        os.environ.pop(TEACHER_ENV, None)


# --------------------------------------------------------------------------------------------------- comparison
def _close(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= ATOL + RTOL * abs(expected)


def compare_values(what: str, actual: dict, expected: dict) -> list:
    """Differences between two flat ``name -> float or [floats]`` dicts, as lines."""
    problems = []
    if set(actual) != set(expected):
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        problems.append(f"{what}: names differ; missing {missing[:8]}, unexpected {extra[:8]}")
    for name in sorted(set(actual) & set(expected)):
        a, e = np.atleast_1d(actual[name]), np.atleast_1d(expected[name])
        if not all(_close(float(x), float(y)) for x, y in zip(a, e)):
            problems.append(f"{what}[{name}]: {a.tolist()} != reference {e.tolist()}")
    return problems


def compare_digests(what: str, actual: dict, expected: dict) -> list:
    problems = compare_values(f"{what} network", actual["network"], expected["network"])
    if set(actual["extra_modules"]) != set(expected["extra_modules"]):
        problems.append(f"{what} extra modules: {sorted(actual['extra_modules'])} != reference "
                        f"{sorted(expected['extra_modules'])}")
    for name in sorted(set(actual["extra_modules"]) & set(expected["extra_modules"])):
        problems += compare_values(f"{what} extra module {name!r}", actual["extra_modules"][name],
                                   expected["extra_modules"][name])
    return problems


def compare_records(actual: dict, expected: dict) -> list:
    problems = compare_values("weights after initialize() (seeded construction)", actual["initial"],
                              expected["initial"])
    for step, (a, e) in enumerate(zip(actual["steps"], expected["steps"])):
        where = f"step {step} (epoch {e['epoch']})"
        problems += compare_values(f"{where} learning rate", {"lr": a["lr"]}, {"lr": e["lr"]})
        problems += compare_values(f"{where} logged terms", a["terms"], e["terms"])
    problems += compare_digests("weights after the steps", actual["final"], expected["final"])
    return problems


# ------------------------------------------------------------------------------------------------------- tests
def _reference() -> dict:
    return json.loads(STEP_REFERENCE.read_text())


REFERENCE = _reference() if STEP_REFERENCE.is_file() else {"trainers": {}, "models": {}}


# The generator computes on one thread (its portable arithmetic), so one process per CPU core shares the trainers
# out (each holds at most one full-size MST-KD trainer, about 3 GB).
STEP_PROCESSES = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))


@pytest.fixture(scope="module")
def step_records(nnunet_root, tiny_preprocessed, tmp_path_factory):
    """Reference name -> the record of :func:`reference_record` (or ``{"error": traceback}``) for every name in
    :data:`STEP_NAMES`, computed by the generator (with its portable arithmetic) in ``STEP_PROCESSES`` child
    processes that share the names out."""
    work = tmp_path_factory.mktemp("step_records")
    claims = work / "claims"
    claims.mkdir()
    env = nnunet_env(nnunet_root)
    env.pop(TEACHER_ENV, None)
    children = []
    for k in range(STEP_PROCESSES):
        out, log = work / f"records_{k}.json", work / f"generator_{k}.log"
        with open(log, "w") as stream:
            process = subprocess.Popen([sys.executable, str(GENERATOR), "--nnunet-root", str(nnunet_root),
                                        "--work-dir", str(work / f"work_{k}"), "--records-to", str(out),
                                        "--claim-dir", str(claims), "--only", *STEP_NAMES], env=env,
                                       stdout=stream, stderr=subprocess.STDOUT, text=True)
        children.append((process, out, log))
    records = {}
    try:
        for process, out, log in children:
            if process.wait() != 0 or not out.is_file():
                pytest.fail(f"the generator failed ({process.returncode}):\n{log.read_text()[-8000:]}")
            records.update(json.loads(out.read_text()))
    finally:
        for process, _, _ in children:
            if process.poll() is None:
                process.kill()
                process.wait()
    return records


# methods added after the reference was recorded (on the pre-refactor commit) have none; their own tests cover them
ADDED_AFTER_REFERENCE = ("nnunet_missingmod.training.methods.demoseg.",)


def test_the_reference_covers_every_hand_written_trainer():
    recorded = {trainer_class(n).__name__ for n in REFERENCE["trainers"]}  # raises for a trainer that is gone
    registry = trainer_registry()
    existing = {n for n in hand_written_trainer_names() if not registry[n].__module__.startswith(ADDED_AFTER_REFERENCE)}
    assert recorded == existing, f"trainers without a reference: {sorted(existing - recorded)}"


def test_the_tiny_plans_are_the_reference_plans(nnunet_root, tiny_preprocessed):
    plans, _ = plans_and_dataset_json(nnunet_root)
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["patch_size"] == REFERENCE["plans"]["patch_size"]
    assert configuration["batch_size"] == REFERENCE["plans"]["batch_size"]
    assert configuration["architecture"] == REFERENCE["plans"]["architecture"]


# A full-size ablation (MST-KD's, CCSD's) whose _small form is in the reference is checked through that form: the
# same settings and code at a smaller width (the full-size MST-KD step alone takes ~40 s with the portable
# arithmetic). The methods' own trainers (MSTKDTrainer, MSTKDTeacherTrainer, CCSDTrainer) keep their full-size step.
STEP_NAMES = [name for name in sorted(REFERENCE["trainers"])
              if not ("_" in name and not name.endswith("_small") and f"{name}_small" in REFERENCE["trainers"])]


@pytest.mark.parametrize("name", STEP_NAMES)
def test_one_seeded_step_matches_the_reference(name, step_records):
    assert name in step_records, f"{name}: no generator process recorded it"
    actual = step_records[name]
    assert "error" not in actual, f"{name} ({current_name(name)}) failed:\n{actual.get('error')}"
    problems = compare_records(actual, REFERENCE["trainers"][name])
    assert not problems, f"{name} ({current_name(name)}) differs from the reference:\n" + "\n".join(problems[:30])


# ------------------------------------------------------------------------------------------ checkpoint loading
def _segmentation(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_stored_checkpoints_load_in_both_predictors(nnunet_root, tiny_preprocessed, tmp_path, monkeypatch):
    """Each stored model folder loads strictly in our predictor and in nnU-Net's own ``nnUNetPredictor`` (what
    ``nnUNetv2_predict`` runs, here in this process: one torch import instead of two per model) and both give the
    same segmentation of a complete case."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    models = REFERENCE["models"]
    assert models, "the reference lists no model folders"
    results = tmp_path / "results"
    case = REFERENCE["prediction_case"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for channel in range(4):
        shutil.copy(tiny_preprocessed / "imagesTr" / f"{case}_{channel:04d}.nii.gz", inputs)
    for folder in models.values():
        shutil.copytree(MODELS_DIR / folder, results / DATASET_NAME / folder)
    for key, value in nnunet_env(nnunet_root).items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)  # nnU-Net finds our trainers through nnUNet_extTrainer
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.delenv(TEACHER_ENV, raising=False)
    failures = []
    for name in sorted(models):
        folder = str(results / DATASET_NAME / models[name])
        segmentations = {}
        for label, predictor_class in (("ours", MissingModalityPredictor), ("stock", nnUNetPredictor)):
            predictor = predictor_class(device=torch.device("cpu"), use_mirroring=False,
                                        perform_everything_on_device=False, allow_tqdm=False)
            out = tmp_path / label / name
            out.mkdir(parents=True)  # nnUNetv2_predict makes it before calling the predictor
            try:
                predictor.initialize_from_trained_model_folder(folder, (0,), "checkpoint_final.pth")
                if predictor_class is nnUNetPredictor:
                    predictor.predict_from_files_sequential(str(inputs), str(out), save_probabilities=False)
                else:
                    predictor.predict_from_files(str(inputs), str(out))
            except Exception as e:  # noqa: BLE001 - every model's outcome is reported together
                failures.append(f"{label} predictor on {models[name]}: {type(e).__name__}: {e}")
                continue
            segmentation = out / f"{case}.nii.gz"
            if segmentation.is_file():
                segmentations[label] = _segmentation(segmentation)
            else:
                failures.append(f"{label} predictor on {models[name]}: no segmentation written")
        if len(segmentations) == 2 and not np.array_equal(segmentations["ours"], segmentations["stock"]):
            failures.append(f"{name}: our predictor and nnU-Net's disagree on the complete case")
    assert not failures, "\n\n".join(failures)
