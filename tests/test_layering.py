"""Import structure of the package: no feature imports another feature's command-line module, there is no import
loop between ``evaluation.cli`` and ``evaluation.evaluate``, and temporary files are made in one place only."""
import ast
from pathlib import Path

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


def test_model_folder_helpers_live_in_their_own_module():
    from nnunet_missingmod.inference import model_folder
    for name in ("add_model_arguments", "add_prediction_arguments", "resolve_model_folder", "model_folders_from_args",
                 "check_model_folder", "parse_folds", "resolve_device"):
        assert callable(getattr(model_folder, name)), name
    for user in (PACKAGE / "inference" / "cli.py", PACKAGE / "evaluation" / "evaluate.py"):
        assert "nnunet_missingmod.inference.model_folder" in set(_imports(user)), user.name


def test_temporary_files_for_atomic_writes_are_made_only_in_io_checks():
    makers = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "mkstemp" in p.read_text())
    assert makers == ["nnunet_missingmod.io_checks"]
