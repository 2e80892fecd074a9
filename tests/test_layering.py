"""Import structure of the package: no feature imports another feature's command-line module, there is no import
loop (every module imports alone), and temporary files are made in one place only."""
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


def test_temporary_files_for_atomic_writes_are_made_only_in_io_checks():
    makers = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "mkstemp" in p.read_text())
    assert makers == ["nnunet_missingmod.io_checks"]
