"""Regenerate ``tests/reference_data/step_reference.json`` and ``tests/reference_data/models/``.

Run it on the commit whose behaviour is the reference, never to make tests/training/test_behaviour_reference.py
pass: the files it writes are what that test compares the code with. The shipped files were written with the
package of commit 226572d, the last one before the trainer refactor (nnU-Net 2.8.1, torch 2.14.1, CPU, 1 thread,
portable arithmetic; ``versions`` and ``protocol`` in the JSON). That commit has neither this script nor the test,
so to regenerate there:

    git worktree add /tmp/ref 226572d
    mkdir -p /tmp/ref/tests/reference_data
    cp tests/reference_data/make_step_reference.py /tmp/ref/tests/reference_data/
    cp tests/training/test_behaviour_reference.py /tmp/ref/tests/training/
    PYTHONPATH=/tmp/ref nnUNet_compile=f .venv/bin/python /tmp/ref/tests/reference_data/make_step_reference.py
    # then copy /tmp/ref/tests/reference_data/step_reference.json and models/ back here

(``PYTHONPATH`` first, so that the worktree's package is imported, not the installed one; the JSON records the
commit of the package that was imported and whether its folder had local changes.) ``--only NAME ...`` prints
the records of some trainers without writing anything; with ``--records-to FILE`` it writes them there instead,
each trainer run once on the schedule, plans and teacher of its entry in the shipped reference (what the test
does; with ``--claim-dir``, processes started alike share the names out: the test runs one per CPU core). About
25 minutes on 2 CPU cores.

Everything runs with portable arithmetic (``PORTABLE_ARITHMETIC_ENV``, ``use_portable_arithmetic``), so that
every x86-64 CPU computes the same numbers: the script starts itself again with that environment when it was not
given, so that torch sees it at import.

It plans the tiny phantom dataset exactly as the ``tiny_preprocessed`` fixture of tests/conftest.py does (in a
temporary folder, or ``--work-dir``) and runs the protocol functions of test_behaviour_reference.py itself, so the
generator and the test cannot drift apart:

* every hand-written trainer of ``trainer_registry()`` (budget siblings ``_debug``/``_demo*`` left out), built on
  the CPU with ``torch.manual_seed(INIT_SEED)`` before construction, 1 iteration per epoch set before
  ``initialize()``, ``trainer.subset_generator.manual_seed(SUBSET_SEED)`` after it (the sampler's generator also
  draws CCSD's hierarchy level, its students and its random path), ``torch.manual_seed(STEP_SEED + epoch)`` before
  each step (MST-KD's transformer dropout draws from the global generator), one batch ``make_batch(trainer,
  seed=BATCH_SEED)``;
* the schedule (``num_epochs``, the epochs stepped; each epoch starts with the trainer's own
  ``on_train_epoch_start``):

  - default: ``num_epochs=1``, one step at epoch 0. The generator checks that these numbers do not depend on
    ``num_epochs`` (the same step with ``num_epochs=4`` must give identical values: epoch 0's learning rate and
    MST-KD's consistency ramp at training progress 0 do not depend on it);
  - two-phase trainers (``teacher_source == "snapshot"``): ``num_epochs=4``, one step in the last epoch of phase 1
    (switch - 1; full set only; the annealed schedule's learning rate differs there) and one at the switch epoch
    (2 for ``teacher_switch`` 0.5, 1 for 0.25, 3 for 0.75), whose ``on_train_epoch_start`` takes the snapshot of
    the weights after the first step: the step where distillation (and the mean teacher's update) acts;
  - CCSD with ``warmup``: ``num_epochs=4``, one step in the warm-up (epoch 0) and one after it (epoch 1);
* plans: the session's tiny plans (3 stages, 2 deep-supervision outputs), except for the trainers with
  ``distillation_every_scale``, which run on ``four_stage_plans`` (a fourth stage, 3 outputs): with 2 outputs
  nnU-Net's scale weights are (1, 0) and their step equals the full-resolution one;
* trainers with a teacher from a finished run (``teacher_source == "checkpoint"``: RobustifyTrainer*,
  MSTKDTrainer_frozenTeacher*, MSTKDTrainer_stockTeacher*): the run of ``teacher_trainer_name()`` (stock
  nnUNetTrainer, MSTKDTeacherTrainer or MSTKDTeacherTrainer_small), built with ``torch.manual_seed(TEACHER_SEED)``
  and initialised, saved by its own ``save_checkpoint`` without training, named by ``nnUNet_missingmod_teacher``;
  the test writes the identical teacher.

Every trainer is run twice in this process and must give identical numbers (determinism); the generator stops
otherwise. It also lists trainers whose record equals another's (a setting the reference could not see); with
``SUBSET_SEED = 5`` there are none.

Model folders (``models/<Trainer>__nnUNetPlans__3d_fullres``, for the checkpoint-loading test): the public
trainers on the tiny plans with the U-Net's widths cut to ``TINY_FEATURES`` (so that the files stay small), one
seeded step as above at ``num_epochs=1`` (RobustifyTrainer: on a stock teacher run with the same tiny plans), then
the trainer's own ``save_checkpoint``. A stored checkpoint over 1.5 MB loses ``optimizer_state`` and our extra
training state (``missingmod_extra``: extra modules such as MST-KD's teacher and discriminator, their optimisers,
the sampler state); the predictors read only ``network_weights``, ``trainer_name``, ``init_args`` and
``inference_allowed_mirroring_axes``. MSTKDTrainer_small's network alone is over 13 MB in float32 (its
transformer stage does not shrink with the plans), so its ``network_weights`` are stored in float16 (the
predictors load them into the float32 network; the file says so under ``reference_note``).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
MAX_CHECKPOINT_BYTES = int(1.5 * 1024 * 1024)
TINY_FEATURES = [4, 8, 16]
MODEL_TRAINERS = ("FullSetTrainer", "ModalityDropoutTrainer", "ModalityDropoutTrainer_cardinality",
                  "TwoPhaseDistillTrainer", "RobustifyTrainer", "MSTKDTrainer_small", "CCSDTrainer_small")
DROPPED_KEYS = ("optimizer_state", "missingmod_extra")
PREDICTION_CASE = "BraTS2021_00001"
sys.path[:0] = [str(TESTS)]  # conftest and trainer_helpers, as pytest's pythonpath = ["tests"]


def load_test_module():
    spec = importlib.util.spec_from_file_location("test_behaviour_reference",
                                                  TESTS / "training" / "test_behaviour_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_root(root: Path) -> None:
    """The ``nnunet_root`` and ``tiny_preprocessed`` fixtures of tests/conftest.py, outside pytest."""
    import conftest
    for key, value in conftest.nnunet_env(root).items():
        if key.startswith("nnUNet_"):
            os.environ[key] = value
    if (root / "preprocessed" / conftest.DATASET_NAME / "nnUNetPlans.json").is_file():
        return
    conftest.write_tiny_dataset(root)
    conftest.run_command(["nnUNetv2_plan_and_preprocess", "-d", conftest.DATASET_ID, "-c", "3d_fullres", "-npfp", "1",
                          "-np", "1", "--verify_dataset_integrity"], conftest.nnunet_env(root, n_proc_da="1"))


def schedule(t, cls, root) -> dict:
    """num_epochs and the epochs stepped for ``cls`` (see the module docstring)."""
    if getattr(cls, "teacher_source", None) == "snapshot":
        probe = t.build_trainer(root, cls, 4)
        switch = probe.teacher_switch_epoch()
        del probe
        return {"num_epochs": 4, "epochs": [switch - 1, switch], "why": "two-phase: last phase-1 epoch, switch"}
    if getattr(cls, "warmup", 0):
        probe = t.build_trainer(root, cls, 4)
        probe.current_epoch = 0
        assert probe.in_warmup()
        end = round(cls.warmup * 4)
        probe.current_epoch = end
        assert not probe.in_warmup()
        del probe
        return {"num_epochs": 4, "epochs": [0, end], "why": "CCSD warm-up: in it, after it"}
    return {"num_epochs": 1, "epochs": [0], "why": "one step; checked independent of num_epochs"}


def same(a: dict, b: dict) -> bool:
    keys = ("initial", "steps", "final")
    return json.dumps({k: a[k] for k in keys}, sort_keys=True) == json.dumps({k: b[k] for k in keys}, sort_keys=True)


def record_trainer(t, name: str, root: Path, teachers: Path) -> dict:
    """The record of trainer ``name`` on the schedule, plans variant and teacher its class calls for, run a second
    time (identical, or the script stops) and, for a single step at epoch 0, with ``num_epochs=4`` (identical too)."""
    cls = t.trainer_class(name)
    plan = schedule(t, cls, root)
    entry = {"num_epochs": plan["num_epochs"], "epochs": plan["epochs"],
             "plans_variant": "four_stages" if getattr(cls, "distillation_every_scale", False) else "tiny",
             "teacher": cls.teacher_trainer_name() if getattr(cls, "teacher_source", None) == "checkpoint" else None}
    first = t.record_as_in_reference(root, name, entry, teachers)
    if not same(first, t.record_as_in_reference(root, name, entry, teachers)):
        raise SystemExit(f"{name}: two seeded runs in one process differ; find the unseeded generator")
    if plan["epochs"] == [0] and plan["num_epochs"] == 1:
        if not same(first, t.record_as_in_reference(root, name, dict(entry, num_epochs=4), teachers)):
            raise SystemExit(f"{name}: the step at epoch 0 depends on num_epochs; give it a documented schedule")
    first["teacher"] = entry["teacher"]
    first["schedule"] = plan["why"]
    return first


def write_model_folder(t, name: str, root: Path, models: Path, work: Path) -> str:
    import torch
    plans, dataset_json = t.plans_and_dataset_json(root)
    plans = copy.deepcopy(plans)
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = TINY_FEATURES
    cls = t.trainer_class(name)
    os.environ.pop(t.TEACHER_ENV, None)
    if getattr(cls, "teacher_source", None) == "checkpoint":
        teacher = cls.teacher_trainer_name()
        run = work / "tiny_teachers" / f"{teacher}__nnUNetPlans__3d_fullres"
        os.environ[t.TEACHER_ENV] = str(t.write_teacher_run(run, t.teacher_class(teacher), plans, dataset_json))
    trainer, _ = t.run_reference_steps(root, cls, 1, [0], plans=plans, dataset_json=dataset_json)
    os.environ.pop(t.TEACHER_ENV, None)
    folder_name = f"{name}__nnUNetPlans__3d_fullres"
    folder = models / folder_name
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    checkpoint_file = folder / "fold_0" / "checkpoint_final.pth"
    trainer.save_checkpoint(str(checkpoint_file))
    if checkpoint_file.stat().st_size > MAX_CHECKPOINT_BYTES:
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
        notes = [f"{key} dropped (file over 1.5 MB)" for key in DROPPED_KEYS if checkpoint.pop(key, None) is not None]
        torch.save(checkpoint, checkpoint_file)
        if checkpoint_file.stat().st_size > MAX_CHECKPOINT_BYTES:
            checkpoint["network_weights"] = {k: v.half() if v.is_floating_point() else v
                                             for k, v in checkpoint["network_weights"].items()}
            notes.append("network_weights stored in float16 (float32 over 1.5 MB)")
        checkpoint["reference_note"] = "; ".join(notes)
        torch.save(checkpoint, checkpoint_file)
    return folder_name


def rounded(value):
    """Floats to 10 significant digits (the test's tolerance is 1e-5 relative): a smaller file."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def _git(package_dir: Path, *args) -> str:
    try:
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict:
    """Where the recorded behaviour comes from: the commit of the checkout whose package was imported (and whether
    its package folder had local changes), and the library versions."""
    from importlib.metadata import version

    import torch

    import nnunet_missingmod
    package_dir = Path(nnunet_missingmod.__file__).resolve().parent
    changes = _git(package_dir, "status", "--porcelain", "--", ".")
    return {"commit": _git(package_dir, "rev-parse", "HEAD"), "package_changed": None if changes is None else
            bool(changes), "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
            "dynamic_network_architectures": version("dynamic_network_architectures"), "python": sys.version.split()[0]}


# Read when torch starts, so set before it is imported: ATen's dispatch to its baseline (not AVX2/AVX-512) kernels,
# MKL's conditional numerical reproducibility on its compatible branch, one OpenMP/MKL thread.
PORTABLE_ARITHMETIC_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
                           "MKL_NUM_THREADS": "1"}


def restart_with_portable_arithmetic() -> None:
    """Start this script again with ``PORTABLE_ARITHMETIC_ENV`` unless it already has it (torch, not yet imported
    here, reads it at import)."""
    if any(os.environ.get(k) != v for k, v in PORTABLE_ARITHMETIC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **PORTABLE_ARITHMETIC_ENV))


def use_portable_arithmetic() -> None:
    """The rest of it, once torch is imported: oneDNN off (its convolutions choose kernels and blocking by CPU;
    without it ATen's vol2col and MKL's GEMM compute them) and one torch thread. Raises if torch did not see the
    environment."""
    import torch
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise RuntimeError(f"ATen runs its {torch.backends.cpu.get_cpu_capability()} kernels: "
                           f"{PORTABLE_ARITHMETIC_ENV} must be set before torch is imported")
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)


def claim(claims: Path, name: str) -> bool:
    """Whether this process takes trainer ``name``: the first of the processes sharing ``claims`` to create
    ``claims/name`` does (creation with O_EXCL is atomic)."""
    try:
        os.close(os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def record_to_file(t, names, root: Path, teachers: Path, out: Path, claims: Path = None) -> None:
    """Each trainer's record on the schedule, plans variant and teacher of its entry in the shipped reference, run
    once, or the traceback that stopped it; written to ``out`` when all are done. With ``claims``, several processes
    given the same names share them out, each recording the names it claims first (see :func:`claim`)."""
    expected = t.REFERENCE["trainers"]
    records = {}
    for name in names:
        if claims is not None and not claim(claims, name):
            continue
        try:
            records[name] = t.record_as_in_reference(root, name, expected[name], teachers)
        except Exception:  # noqa: BLE001 - one trainer's failure is that trainer's test failure
            records[name] = {"error": traceback.format_exc()}
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(records))
    partial.replace(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, help="nnU-Net roots and teacher runs (default: a temporary folder)")
    parser.add_argument("--nnunet-root", type=Path, help="an nnU-Net root where the tiny dataset is already planned "
                                                         "(default: one planned under --work-dir)")
    parser.add_argument("--only", nargs="+", help="record these trainers only and print the records (no files)")
    parser.add_argument("--records-to", type=Path, help="with --only: write the records (each trainer run once, "
                                                        "on its schedule in the shipped reference) to this JSON file")
    parser.add_argument("--claim-dir", type=Path, help="with --records-to: an existing folder shared by processes "
                                                       "given the same --only names; each records the names it "
                                                       "claims there first")
    args = parser.parse_args(argv)
    if args.records_to and not args.only:
        parser.error("--records-to needs --only")
    if args.claim_dir and not args.records_to:
        parser.error("--claim-dir needs --records-to")
    restart_with_portable_arithmetic()
    os.environ["nnUNet_compile"] = "f"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="step_reference_"))
    work.mkdir(parents=True, exist_ok=True)
    root = args.nnunet_root or work / "nnunet"
    root.mkdir(exist_ok=True)
    prepare_root(root)
    t = load_test_module()
    use_portable_arithmetic()

    names = args.only or t.hand_written_trainer_names()
    if args.records_to:
        record_to_file(t, names, root, work / "teachers", args.records_to, args.claim_dir)
        return
    records = {}
    for name in names:
        start = time.time()
        records[name] = record_trainer(t, name, root, work / "teachers")
        print(f"{name}: {time.time() - start:.1f} s, terms {records[name]['steps'][-1]['terms']}", flush=True)
    if args.only:
        return

    fingerprints = {}
    for name, record in records.items():
        fingerprints.setdefault(json.dumps([record["steps"], record["final"]], sort_keys=True), []).append(name)
    for names_alike in fingerprints.values():
        if len(names_alike) > 1:
            print(f"WARNING: identical records, the reference cannot tell these apart: {names_alike}")

    models_dir = HERE / "models"
    models = {name: write_model_folder(t, name, root, models_dir, work) for name in MODEL_TRAINERS}
    plans, _ = t.plans_and_dataset_json(root)
    configuration = plans["configurations"]["3d_fullres"]
    reference = {
        "about": "tests/training/test_behaviour_reference.py compares the code with this file; regenerate only on "
                 "the reference commit with tests/reference_data/make_step_reference.py (its docstring says how "
                 "every number was made).",
        "versions": versions(),
        "protocol": {"INIT_SEED": t.INIT_SEED, "SUBSET_SEED": t.SUBSET_SEED, "STEP_SEED": t.STEP_SEED,
                     "BATCH_SEED": t.BATCH_SEED, "TEACHER_SEED": t.TEACHER_SEED, "num_iterations_per_epoch": 1,
                     "device": "cpu", "torch_threads": 1, "arithmetic": dict(PORTABLE_ARITHMETIC_ENV, onednn=False)},
        "plans": {"patch_size": configuration["patch_size"], "batch_size": configuration["batch_size"],
                  "architecture": configuration["architecture"]},
        "prediction_case": PREDICTION_CASE,
        "models": models,
        "trainers": records,
    }
    text = json.dumps(rounded(reference), indent=1, sort_keys=True)
    text = re.sub(r"\[\s+([-0-9.e+]+),\s+([-0-9.e+]+)\s+\]", r"[\1, \2]", text)  # a digest on one line
    (HERE / "step_reference.json").write_text(text + "\n")
    print(f"wrote {HERE / 'step_reference.json'} ({len(records)} trainers) and {len(models)} model folders")


if __name__ == "__main__":
    main()
