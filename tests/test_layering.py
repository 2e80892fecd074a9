"""Import structure of the package: no feature imports another feature's command-line module, there is no import
loop (every module imports alone), and no writer leaves a partial file."""
import ast
import os
from pathlib import Path

import pytest
from fs_helpers import fill, small_filesystem
from inference.test_cli import model_folder as tiny_model  # noqa: F401 (the fixture, under this name)

import nnunet_missingmod

PACKAGE = Path(nnunet_missingmod.__file__).parent


def _imports(path: Path):
    """Absolute module names imported anywhere in ``path`` (also inside functions)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_no_module_imports_another_features_cli():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module == "nnunet_missingmod.cli":  # the top-level command collects every feature's cli, by design
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "nnunet_missingmod" and "cli" in parts[1:]:
                cli_module = ".".join(parts[:parts.index("cli", 1) + 1])
                if cli_module != module:
                    offenders.append(f"{module} imports {name}")
    assert offenders == []


def test_evaluate_and_its_cli_do_not_import_each_other_in_a_loop():
    evaluate_imports = set(_imports(PACKAGE / "evaluation" / "evaluate.py"))
    assert not any(name.startswith("nnunet_missingmod.evaluation.cli") for name in evaluate_imports)
    assert any(name.startswith("nnunet_missingmod.evaluation.options") for name in evaluate_imports)


def test_every_module_imports_alone_so_there_is_no_import_loop(tmp_path):
    """Each module imported first, in a fresh interpreter state for our package (torch stays loaded, so this is
    fast): an import loop fails for the module that starts it, whatever order other tests imported them in."""
    import subprocess
    import sys
    modules = sorted(_module_name(p).removesuffix(".__init__") for p in PACKAGE.rglob("*.py"))
    script = (
        "import importlib, sys, torch, nnunetv2\n"
        f"failures = []\nfor name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'nnunet_missingmod']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as e:\n        failures.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failures))\n")
    # cwd outside the checkout: the installed package (with its ext_trainers) is the one imported
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "", result.stdout


def test_every_writer_of_inference_and_conversion_leaves_no_partial_file_when_a_write_fails(tmp_path, tiny_model):  # noqa: E501,F811
    """A real failed write (a full tmpfs) in the predictor's export and sidecar, the converter's images and labels,
    and labels-back: each raises DiskFullError and leaves no file behind (all go through io_checks' atomic writes)."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.labels import convert_labels_back
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    from nnunet_missingmod.inference.discovery import CaseFiles
    from nnunet_missingmod.inference.predictor import CaseResult, MissingModalityPredictor
    from nnunet_missingmod.io_checks import DiskFullError
    from nnunet_missingmod.modalities import MODALITIES

    predictor = MissingModalityPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(tiny_model), (0,))
    image = str(tmp_path / "case_0000.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, (16, 16, 16)).astype(np.float32)),
                    image)
    source = tmp_path / "source"
    write_phantom_dataset(source, 1, "brats2019", spacing=4.0, progress=False)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 4, (40, 40, 40)).astype(np.uint8)),
                    str(predictions / "case.nii.gz"))
    data, properties, subset, _ = predictor.load_case(CaseFiles("case", {MODALITIES[0]: image}))
    preprocessed, properties = predictor.preprocess(data, properties)
    logits = predictor.predict_preprocessed(preprocessed, subset)

    with small_filesystem(tmp_path / "full", size_kb=256) as full:
        fill(full)
        os.environ["nnUNet_raw"], raw_before = str(full), os.environ.get("nnUNet_raw")
        writers = {
            "export": lambda: predictor.export(logits, properties, str(full / "case"), save_probabilities=True),
            "sidecar": lambda: predictor._write_sidecar(CaseResult("case"), str(full)),
            "convert": lambda: convert_dataset("brats2019", source, 955, progress=False),
            "labels-back": lambda: convert_labels_back("brats2019", predictions, full, progress=False),
        }
        try:
            for name, write in writers.items():
                with pytest.raises(DiskFullError):
                    write()
                assert sorted(p.name for p in full.iterdir()) == ["filler"], name
        finally:
            if raw_before is None:
                del os.environ["nnUNet_raw"]
            else:
                os.environ["nnUNet_raw"] = raw_before
