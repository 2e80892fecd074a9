"""Trainer names (training/naming.py): the budget table and its opt-in siblings, ablation classes generated from a
method's table, the registry, and nnU-Net finding every trainer by name through nnUNet_extTrainer in both install
modes. Nothing here depends on the order of the names."""
import os
import pickle
import shutil
import subprocess
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.base import MissingModalityTrainerBase, SamplingSettings
from nnunet_missingmod.training.methods.ccsd import ablations as ccsd_ablations
from nnunet_missingmod.training.methods.ccsd.trainer import CCSDTrainer
from nnunet_missingmod.training.methods.demoseg import ablations as demoseg_ablations
from nnunet_missingmod.training.methods.demoseg.trainer import DeMoSegTrainer
from nnunet_missingmod.training.methods.dropout import ablations as dropout_ablations
from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
from nnunet_missingmod.training.methods.mstkd import ablations as mstkd_ablations
from nnunet_missingmod.training.methods.mstkd.trainer import MSTKDTrainer
from nnunet_missingmod.training.methods.selfdistill import ablations as selfdistill_ablations
from nnunet_missingmod.training.methods.selfdistill.trainer import RobustifyTrainer, TwoPhaseDistillTrainer
from nnunet_missingmod.training.naming import (
    BUDGETS, DEBUG_SUFFIX, METHOD_PACKAGES, METHODS_ENV, Setting, define_ablations, trainer_dir, trainer_registry,
    with_budgets)

REPO = Path(__file__).resolve().parents[2]
MAX_NAMES = 120  # nnU-Net's lookup imports every module of the trainer dir; the list must stay readable
OPT_IN = {  # the trainers that have budget siblings (naming.with_budgets), and no other
    "FullSetTrainer", "ModalityDropoutTrainer", "ModalityDropoutTrainer_cardinality", "TwoPhaseDistillTrainer",
    "RobustifyTrainer", "MSTKDTrainer", "MSTKDTrainer_small", "MSTKDTrainer_vitSmall", "CCSDTrainer",
    "CCSDTrainer_small", "DeMoSegTrainer", "DeMoSegTrainer_small"}
TABLES = {  # each generated trainer's base -> its table
    ModalityDropoutTrainer: dropout_ablations.TABLE,
    TwoPhaseDistillTrainer: selfdistill_ablations.TWO_PHASE_TABLE,
    RobustifyTrainer: selfdistill_ablations.ROBUSTIFY_TABLE,
    MSTKDTrainer: mstkd_ablations.TABLE,
    CCSDTrainer: ccsd_ablations.TABLE,
    DeMoSegTrainer: demoseg_ablations.TABLE,
}
ABLATION_MODULES = {m.__name__ for m in (dropout_ablations, selfdistill_ablations, mstkd_ablations, ccsd_ablations,
                                         demoseg_ablations)}


def _cli_trainer_dir() -> str:
    return subprocess.run([str(Path(sys.executable).parent / "nnunet-missingmod"), "trainer-dir"],
                          capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------------------------------------------- budgets
def test_budgets_are_a_table_of_lengths_with_distinct_suffixes():
    assert DEBUG_SUFFIX == BUDGETS["debug"].suffix == "_debug"
    assert BUDGETS["debug"].overrides() == {"num_epochs": 1, "num_iterations_per_epoch": 2,
                                            "num_val_iterations_per_epoch": 1, "save_every": 5}
    assert [(b.suffix, b.iterations) for b in BUDGETS.values()] == [
        ("_debug", 2), ("_200iters", 200), ("_1000iters", 1000), ("_3000iters", 3000)]
    assert all(name == budget.name for name, budget in BUDGETS.items())


def test_budgets_longer_than_a_checkpoint_interval_write_checkpoint_latest_before_their_end():
    """nnU-Net writes ``checkpoint_latest.pth`` after epoch e when ``(e + 1) % save_every == 0`` (except the last):
    a killed long run resumed with ``--c`` must lose at most 250 iterations, not start again."""
    for budget in (b for b in BUDGETS.values() if b.iterations > 250):
        saved_after = [e for e in range(budget.num_epochs - 1) if (e + 1) % budget.save_every == 0]
        assert saved_after and budget.save_every * budget.num_iterations_per_epoch <= 250, budget.name


def test_exactly_the_opt_in_trainers_have_budget_siblings_with_the_budgets_overrides():
    registry = trainer_registry()
    suffixes = [b.suffix for b in BUDGETS.values()]
    siblings = {name for name, cls in registry.items() if cls.budget is not None}
    expected = {base + suffix for base in OPT_IN for suffix in suffixes}
    assert siblings == expected
    for base in OPT_IN:
        for budget in BUDGETS.values():
            sibling = registry[base + budget.suffix]
            assert sibling.__bases__ == (registry[base],), sibling
            assert dict(sibling.budget) == budget.overrides(), sibling
            assert sibling.__module__ == registry[base].__module__  # found and pickled by name where its base is
    # no sibling of a sibling, and a subclass of an opted-in trainer does not inherit the opt-in
    for name in registry:
        assert sum(name.endswith(s) or s + "_" in name for s in suffixes) <= 1, name
    assert "ModalityDropoutTrainer_keepFull50" + DEBUG_SUFFIX not in registry


def test_with_budgets_defines_leaves_beside_the_class(monkeypatch):
    module = types.ModuleType("naming_probe_budgets")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    base = type("ProbeTrainer", (ModalityDropoutTrainer,), {"__module__": module.__name__})
    assert with_budgets(base) is base
    for budget in BUDGETS.values():
        sibling = getattr(module, "ProbeTrainer" + budget.suffix)
        assert sibling.__qualname__ == sibling.__name__ and sibling.__bases__ == (base,)
        assert dict(sibling.budget) == budget.overrides()
        assert not hasattr(module, "ProbeTrainer" + budget.suffix + DEBUG_SUFFIX)
    child = type("ProbeChildTrainer", (base,), {"__module__": module.__name__})
    assert child.budget is None and not hasattr(module, "ProbeChildTrainer" + DEBUG_SUFFIX)


# ----------------------------------------------------------------------------------------------------- ablations
def _table_row_names(table):
    return [row.name for row in table]


def test_every_generated_name_is_its_base_and_settings_in_table_order_and_has_what_its_rows_set():
    registry = trainer_registry()
    generated = {name: cls for name, cls in registry.items() if cls.__module__ in ABLATION_MODULES}
    assert generated  # every method has ablations
    for name, cls in generated.items():
        base = cls.__bases__[-1]  # the rows' mixins come first
        assert base in TABLES, f"{name}: its base {base.__name__} has no table"
        assert registry[base.__name__] is base
        assert name.startswith(base.__name__ + "_"), name
        settings = name[len(base.__name__) + 1:].split("_")
        order = _table_row_names(TABLES[base])
        assert all(s in order for s in settings), f"{name}: {settings} not all in {order}"
        assert settings == sorted(settings, key=order.index) and len(set(settings)) == len(settings), name
        rows = [row for row in TABLES[base] if row.name in settings]
        rows.sort(key=lambda row: settings.index(row.name))
        assert cls.__bases__ == (*[r.mixin for r in rows if r.mixin is not None], base), name
        changed = {}
        for row in rows:  # later rows win where two change one field
            for attribute, fields in row.changes.items():
                changed.setdefault(attribute, {}).update(fields)
        for attribute, fields in changed.items():
            assert getattr(cls, attribute) == replace(getattr(base, attribute), **fields), f"{name}.{attribute}"
            assert type(getattr(cls, attribute)) is type(getattr(base, attribute))


def test_the_renamed_combinations_exist_under_the_one_grammar():
    registry = trainer_registry()
    for name in ("ModalityDropoutTrainer_cardinality_presence", "TwoPhaseDistillTrainer_tau2_weight3",
                 "TwoPhaseDistillTrainer_tau2_everyScale", "TwoPhaseDistillTrainer_tau2_annealedSnapshot",
                 "CCSDTrainer_noKD_small", "MSTKDTrainer_frozenTeacher_small", "FullSetTrainer_200iters"):
        assert name in registry, name
    for old in ("ModalityDropoutTrainer_cardinalityPresence", "TwoPhaseDistillTrainer_tau2Weight3",
                "FullSetTrainer_demoSmall", "CCSDTrainer_noKD_small_debug"):
        assert old not in registry, old


def test_the_registry_has_at_most_120_names_and_no_base_class():
    registry = trainer_registry()
    assert len(registry) <= MAX_NAMES
    assert MissingModalityTrainerBase.__name__ not in registry
    assert all(not name.startswith("_") and name == cls.__name__ for name, cls in registry.items())
    assert {cls.__module__.rsplit(".", 1)[0] for cls in registry.values()} == set(METHOD_PACKAGES)


def _probe_module(monkeypatch, name="naming_probe_ablations"):
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


PROBE_TABLE = (
    Setting("uniform", "uniform sampling", {"sampling": {"strategy": "uniform"}}),
    Setting("keepAll", "the full set only", {"sampling": {"full_set_probability": 1.0}}),
    Setting("seeded", "reproducible draws", {"sampling": {"seed": 1}}),
)


def test_define_ablations_generates_classes_in_the_module_from_the_table(monkeypatch):
    module = _probe_module(monkeypatch)
    defined = define_ablations(ModalityDropoutTrainer, PROBE_TABLE, [("keepAll",), ("uniform", "seeded")],
                               module.__name__)
    assert sorted(defined) == ["ModalityDropoutTrainer_keepAll", "ModalityDropoutTrainer_uniform_seeded"]
    cls = module.ModalityDropoutTrainer_uniform_seeded
    assert cls is defined[cls.__name__] and cls.__module__ == module.__name__
    assert cls.sampling == SamplingSettings(strategy="uniform", seed=1)
    assert "uniform sampling; reproducible draws" in cls.__doc__
    assert ModalityDropoutTrainer.sampling == SamplingSettings()  # the base is not changed


@pytest.mark.parametrize("combination, message", [
    (("seeded", "uniform"), r"settings \['seeded', 'uniform'\] must follow the table order "
                            r"\['uniform', 'keepAll', 'seeded'\], each once"),
    (("uniform", "uniform"), "must follow the table order .*each once"),
    (("uniform", "fast"), r"ModalityDropoutTrainer: no setting \['fast'\] in its table"),
])
def test_define_ablations_refuses_a_combination_out_of_table_order_or_with_an_unknown_setting(
        monkeypatch, combination, message):
    module = _probe_module(monkeypatch)
    with pytest.raises(MissingModError, match=message):
        define_ablations(ModalityDropoutTrainer, PROBE_TABLE, [combination], module.__name__)
    assert not [name for name in vars(module) if name.startswith("ModalityDropoutTrainer")]


def test_define_ablations_refuses_a_field_the_settings_do_not_have_and_a_bad_value(monkeypatch):
    module = _probe_module(monkeypatch)
    typo = (Setting("fast", "a typo", {"sampling": {"strategie": "cardinality"}}),)
    with pytest.raises(MissingModError, match=r"setting _fast of ModalityDropoutTrainer changes \['strategie'\], "
                                              r"which SamplingSettings does not have"):
        define_ablations(ModalityDropoutTrainer, typo, [("fast",)], module.__name__)
    bad = (Setting("half", "a bad value", {"sampling": {"full_set_probability": 2.0}}),)
    with pytest.raises(ValueError, match="SamplingSettings.full_set_probability must lie in .*got 2.0"):
        define_ablations(ModalityDropoutTrainer, bad, [("half",)], module.__name__)


# ------------------------------------------------------------------------------------------------------ registry
def _method_package(root: Path, name: str, trainer_source: str) -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "trainer.py").write_text(trainer_source)


def test_a_method_package_named_in_the_environment_is_registered_and_clashes_are_refused(tmp_path, monkeypatch):
    _method_package(tmp_path, "probe_method", (
        "from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer\n"
        "class ProbeMethodTrainer(ModalityDropoutTrainer):\n    pass\n"
        "class _Helper(ModalityDropoutTrainer):\n    pass\n"))
    _method_package(tmp_path, "clashing_method", (
        "from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer\n"
        "class FullSetTrainer(ModalityDropoutTrainer):\n    pass\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(METHODS_ENV, " probe_method , ")
    registry = trainer_registry()
    assert registry["ProbeMethodTrainer"].__module__ == "probe_method.trainer"  # a method without ablations
    assert "_Helper" not in registry and "ModalityDropoutTrainer" in registry
    monkeypatch.setenv(METHODS_ENV, "clashing_method")
    with pytest.raises(MissingModError, match="trainer name FullSetTrainer is defined twice"):
        trainer_registry()
    monkeypatch.setenv(METHODS_ENV, "no_such_method_package")
    with pytest.raises(MissingModError, match=f"{METHODS_ENV}: method package 'no_such_method_package' has no "
                                              f"module 'trainer' \\(is its folder on PYTHONPATH\\?\\)"):
        trainer_registry()


# -------------------------------------------------------------------------------------------- nnU-Net's lookup
def test_trainer_dir_cli_prints_an_existing_directory_with_the_shim():
    out = _cli_trainer_dir()
    assert os.path.isabs(out) and out == trainer_dir()
    assert (Path(out) / "nnunet_missingmod_trainers.py").is_file()


def test_nnunet_lookup_through_the_cli_trainer_dir_resolves_every_trainer_to_our_class(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    monkeypatch.setenv("nnUNet_extTrainer", _cli_trainer_dir())
    found = None
    for name, cls in trainer_registry().items():
        # nnU-Net searches its own trainers first, so a name that clashed with one of them would return theirs
        found = recursive_find_trainer_class_by_name(name)
        assert found is cls, name
        assert found.__module__.startswith("nnunet_missingmod."), name
        assert pickle.loads(pickle.dumps(found)) is found
    # a second lookup (nnU-Net's training and its predictor each look the class up) finds the same class object
    # (one name: each lookup walks nnU-Net's package tree again)
    assert recursive_find_trainer_class_by_name(name) is found


def test_lookup_fails_clearly_without_the_environment_variable(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="ModalityDropoutTrainer"):
        recursive_find_trainer_class_by_name("ModalityDropoutTrainer")


def _copy_of_repository(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info",
                                                                     "__pycache__", ".pytest_cache", "demo_output"))
    return destination


def test_editable_install_maps_the_shim_to_the_checkout(tmp_path):
    """`pip install -e .`: setuptools' editable wheel maps nnunet_missingmod.ext_trainers to the checkout's
    trainers/ folder, and nnU-Net finds the trainers there."""
    source, wheel_dir, target = _copy_of_repository(tmp_path / "checkout"), tmp_path / "wheel", tmp_path / "site"
    build = ("from setuptools import build_meta; import sys; "
             "print(build_meta.build_editable(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", build, str(wheel_dir)], cwd=source, check=True, capture_output=True)
    wheel = next(wheel_dir.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    finder_file = next(target.glob("__editable___*_finder.py"))  # what the install's .pth imports at start-up
    script = (
        "import importlib.util, os, pickle, sys\n"
        f"spec = importlib.util.spec_from_file_location('editable_finder_under_test', {str(finder_file)!r})\n"
        "finder = importlib.util.module_from_spec(spec); spec.loader.exec_module(finder)\n"
        "# this interpreter has its own install of the package too: put the finder under test first, as in a venv\n"
        "# where the package is installed only editable\n"
        "n = len(sys.meta_path); finder.install(); sys.meta_path.insert(0, sys.meta_path.pop(n))\n"
        "import nnunet_missingmod.ext_trainers as shims  # the mapping itself, not the source-checkout fallback\n"
        "from nnunet_missingmod.training.naming import trainer_dir\n"
        "assert list(shims.__path__)[0] == trainer_dir()\n"
        "os.environ['nnUNet_extTrainer'] = trainer_dir()\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "cls = find('ModalityDropoutTrainer_debug')\n"
        "assert pickle.loads(pickle.dumps(cls)) is cls\n"
        "print(trainer_dir()); print(sys.modules[cls.__module__].__file__)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shim_dir, module_file = out.stdout.split()[-2:]
    assert shim_dir == str(source / "trainers")
    assert module_file == str(source / "nnunet_missingmod" / "training" / "methods" / "dropout" / "trainer.py")


def test_non_editable_install_ships_the_shim_and_nnunet_finds_it(tmp_path):
    """Builds the wheel, installs it into a separate folder (not editable) and resolves the trainers from there."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    # build from a copy: an in-tree build would reuse (and could ship stale files from) the checkout's build/
    source = _copy_of_repository(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(source)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("nnunet_missingmod-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnunet_missingmod/ext_trainers/nnunet_missingmod_trainers.py" in names
    assert not any(n.startswith("trainers/") for n in names)
    # every module of the checkout is in the wheel (pyproject lists the packages: a new one missing there would only
    # fail where the package is installed, never with the checkout on the path)
    package = Path(source) / "nnunet_missingmod"
    modules = {str(p.relative_to(package.parent)) for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - set(names) == set()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    script = (
        "import os, pickle, nnunet_missingmod\n"
        "from nnunet_missingmod.training.naming import trainer_dir\n"
        "os.environ['nnUNet_extTrainer'] = trainer_dir()\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "cls = find('ModalityDropoutTrainer_debug')\n"
        "assert pickle.loads(pickle.dumps(cls)) is cls\n"
        "import sys; print(trainer_dir()); print(sys.modules[cls.__module__].__file__)\n")
    env = dict(os.environ, PYTHONPATH=str(target))
    # run outside the checkout so that the source tree is not importable
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shim_dir, module_file = out.stdout.split()[-2:]
    assert shim_dir == str(target / "nnunet_missingmod" / "ext_trainers")
    assert module_file.startswith(str(target))


def _checkpoint_teacher(cls) -> bool:
    """Whether ``cls`` loads a finished run (``nnUNet_missingmod_teacher``) as its teacher."""
    teacher = getattr(cls, "teacher", None)
    method = getattr(cls, "method", None)
    return getattr(teacher, "source", None) == "checkpoint" or getattr(method, "teacher", None) == "checkpoint"


def test_every_trainers_checkpoint_loads_strictly_into_its_inference_network(nnunet_root, tiny_preprocessed,
                                                                             tmp_path, monkeypatch):
    """What nnU-Net's predictor does with a checkpoint: ``trainer_class.build_network_architecture(...,
    enable_deep_supervision=False)`` then a strict ``load_state_dict(checkpoint['network_weights'])``."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from trainer_helpers import make_trainer
    registry = trainer_registry()
    # the teachers first, whatever the names' order: a checkpoint of each trainer a teacher must come from
    teachers = {cls.teacher_trainer_name() for cls in registry.values() if _checkpoint_teacher(cls)}
    assert teachers == {"nnUNetTrainer", "MSTKDTeacherTrainer", "MSTKDTeacherTrainer_small"}
    for teacher in teachers:
        teacher_class = nnUNetTrainer if teacher == "nnUNetTrainer" else registry[teacher]
        make_trainer(nnunet_root, teacher_class).save_checkpoint(str(tmp_path / f"{teacher}.pth"))
    for name, cls in registry.items():
        if cls.budget is not None:
            continue  # a budget sibling has its parent's network
        if _checkpoint_teacher(cls):
            monkeypatch.setenv("nnUNet_missingmod_teacher", str(tmp_path / f"{cls.teacher_trainer_name()}.pth"))
        else:
            monkeypatch.delenv("nnUNet_missingmod_teacher", raising=False)
        trainer = make_trainer(nnunet_root, cls)
        path = tmp_path / f"{name}_checked.pth"  # not the teachers' files above
        trainer.save_checkpoint(str(path))
        # mmap: only the tensors read (the network's) come from the file; a full-size MST-KD checkpoint also holds
        # its teacher and the optimisers' states, several times the network's size
        checkpoint = torch.load(path, weights_only=False, mmap=True)
        plans_manager = PlansManager(trainer.plans_manager.plans)
        inference_network = cls.build_network_architecture(
            plans_manager, plans_manager.get_configuration("3d_fullres"), trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
        inference_network.load_state_dict(checkpoint["network_weights"], strict=True)
        assert checkpoint["trainer_name"] == name
        del trainer, checkpoint
        path.unlink()


def test_a_method_that_fails_to_import_raises_or_is_skipped_and_named(tmp_path, monkeypatch):
    _method_package(tmp_path, "broken_method", "raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(METHODS_ENV, "broken_method")
    with pytest.raises(RuntimeError, match="half written"):
        trainer_registry()
    errors = []
    registry = trainer_registry(import_errors=errors)  # what bench_train_cost.py times: every other trainer
    assert "FullSetTrainer" in registry
    assert errors == ["cannot import broken_method.trainer: RuntimeError: half written"]
