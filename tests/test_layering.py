"""Import structure of the package: no feature imports another feature's command-line module, there is no import
loop (every module imports alone), and no writer leaves a partial file."""
import ast
import os
from pathlib import Path

import pytest
from fs_helpers import fill, small_filesystem

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


def _import_graph():
    """Module -> the ``nnunet_missingmod`` modules it imports, from every import statement in its file (also those
    inside functions, which a plain import never runs). ``from a.b import c`` imports ``a.b.c`` if that is a
    module, else ``a.b``; ``import a.b.c`` imports the longest of ``a.b.c``, ``a.b``, ``a`` that is a module. A
    package counts by its ``__init__``; importing ``a.b.c`` is not counted as importing ``a`` and ``a.b``."""
    paths = {_module_name(p).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}

    def existing(name):
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in paths else existing(node.module))
            elif isinstance(node, ast.Import):
                targets.update(existing(alias.name) for alias in node.names)
        graph[module] = sorted(t for t in targets if t and t != module)
    return graph


def _import_cycles(graph):
    """One cycle (as a list of modules, the first repeated at the end) per strongly connected component of
    ``graph`` that has one (Tarjan's algorithm, then a path back to its first module inside the component)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for component in components:
        start = min(component)
        paths = {start: [start]}  # breadth first: the shortest way round
        queue = [start]
        while queue:
            node = queue.pop(0)
            for target in graph[node]:
                if target == start:
                    cycles.append(paths[node] + [start])
                    queue = []
                    break
                if target in component and target not in paths:
                    paths[target] = paths[node] + [target]
                    queue.append(target)
    return sorted(cycles)


def test_import_cycle_finder_sees_a_loop_and_only_a_loop():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["d"]}
    assert _import_cycles(graph) == [["a", "b", "c", "a"]]
    assert _import_cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_no_import_cycle_also_counting_imports_inside_functions():
    """An import inside a function hides a loop from a plain import (and from the test below) until that function
    runs; the graph of every import statement has none. ``cli.py`` imports every feature's cli, which is fine as
    long as none imports back."""
    graph = _import_graph()
    assert graph["nnunet_missingmod.inference.predictor"]  # the graph sees the package's imports
    cycles = _import_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


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
    and labels-back: each raises DiskFullError and leaves no file behind (all go through atomic_io's atomic writes)."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.labels import convert_labels_back
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    from nnunet_missingmod.inference.discovery import CaseFiles
    from nnunet_missingmod.inference.predictor import CaseResult, MissingModalityPredictor
    from nnunet_missingmod.atomic_io import DiskFullError
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
