"""nnU-Net finds every trainer of this package by name through nnUNet_extTrainer, in both install modes."""
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nnunet_missingmod.training.registry import trainer_registry
from nnunet_missingmod.training.base import BUDGET_VARIANTS, DEBUG_SUFFIX
from nnunet_missingmod.training.registry import trainer_dir

REPO = Path(__file__).resolve().parents[2]


def test_trainer_dir_cli_prints_an_existing_directory_with_the_shim():
    out = subprocess.run([str(Path(sys.executable).parent / "nnunet-missingmod"), "trainer-dir"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.isabs(out) and out == trainer_dir()
    assert (Path(out) / "nnunet_missingmod_trainers.py").is_file()


def test_every_trainer_has_a_debug_sibling_with_the_smoke_budget():
    registry = trainer_registry()
    assert "ModalityDropoutTrainer" in registry
    for name, cls in registry.items():
        if cls.budget is None:
            debug = registry[name + DEBUG_SUFFIX]
            assert issubclass(debug, cls)
            assert debug.budget == {"num_epochs": 1, "num_iterations_per_epoch": 2,
                                    "num_val_iterations_per_epoch": 1}
            for suffix, budget in BUDGET_VARIANTS.items():
                assert registry[name + suffix].budget == budget
                assert name + DEBUG_SUFFIX + suffix not in registry


def test_nnunet_lookup_resolves_every_trainer_to_our_class(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    monkeypatch.setenv("nnUNet_extTrainer", trainer_dir())
    for name, cls in trainer_registry().items():
        # nnU-Net searches its own trainers first, so a name that clashed with one of them would return theirs
        found = recursive_find_trainer_class_by_name(name)
        assert found is cls, name
        assert found.__module__.startswith("nnunet_missingmod."), name
        assert pickle.loads(pickle.dumps(found)) is found
    # a second lookup (nnU-Net's training and its predictor each look the class up) finds the same class object
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
        "from nnunet_missingmod.training.registry import trainer_dir\n"
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
    assert module_file == str(source / "nnunet_missingmod" / "training" / "dropout.py")


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
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    script = (
        "import os, pickle, nnunet_missingmod\n"
        "from nnunet_missingmod.training.registry import trainer_dir\n"
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


def test_every_trainers_checkpoint_loads_strictly_into_its_inference_network(nnunet_root, tiny_preprocessed,
                                                                             tmp_path, monkeypatch):
    """What nnU-Net's predictor does with a checkpoint: ``trainer_class.build_network_architecture(...,
    enable_deep_supervision=False)`` then a strict ``load_state_dict(checkpoint['network_weights'])``."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from trainer_helpers import make_trainer
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    make_trainer(nnunet_root, nnUNetTrainer).save_checkpoint(str(tmp_path / "nnUNetTrainer.pth"))  # stock teacher
    for name, cls in sorted(trainer_registry().items()):
        if cls.budget is not None:
            continue  # a budget variant has its parent's network
        if cls.teacher_source == "checkpoint":  # its teacher: a checkpoint saved before (stock, MSTKDTeacherTrainer)
            teacher = tmp_path / f"{cls.teacher_trainer_name()}.pth"
            assert teacher.is_file()
            monkeypatch.setenv("nnUNet_missingmod_teacher", str(teacher))
        trainer = make_trainer(nnunet_root, cls)
        path = str(tmp_path / f"{name}.pth")
        trainer.save_checkpoint(path)
        checkpoint = torch.load(path, weights_only=False)
        plans_manager = PlansManager(trainer.plans_manager.plans)
        inference_network = cls.build_network_architecture(
            plans_manager, plans_manager.get_configuration("3d_fullres"), trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
        inference_network.load_state_dict(checkpoint["network_weights"], strict=True)
        assert checkpoint["trainer_name"] == name
        del trainer
