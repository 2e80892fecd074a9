"""Trainer names: the budget table, ablation classes generated from a method's table, and the registry that
nnU-Net's ``nnUNet_extTrainer`` lookup reads.

One grammar for every generated name: ``Method_setting_setting[_budget]``, the settings in the order of their
method's table (``TwoPhaseDistillTrainer_tau2_weight3``, ``CCSDTrainer_noKD_small``), the budget last
(``FullSetTrainer_200iters``). Budget siblings exist only for the trainers that opt in with :func:`with_budgets`.

A method is one package (``training/methods/<name>/``) whose ``trainer`` module holds its public trainers and whose
``ablations`` module generates the rest from one table (:func:`define_ablations`). The registry imports the built-in
methods of :data:`METHOD_PACKAGES` and the packages named in ``nnUNet_missingmod_methods`` (a method of your own, in
a folder of the same shape on ``PYTHONPATH``), so adding a method edits no list outside its folder.

Imports nothing heavy at module level: the command line reads :data:`BUDGETS` at start-up.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from nnunet_missingmod.errors import MissingModError

SHIM_MODULE = "nnunet_missingmod_trainers.py"
METHODS_ENV = "nnUNet_missingmod_methods"
"""Comma-separated importable packages of methods of your own (each with ``trainer`` and optionally ``ablations``
modules), registered beside the built-in ones."""
METHOD_PACKAGES = tuple(f"nnunet_missingmod.training.methods.{name}"
                        for name in ("dropout", "selfdistill", "mstkd", "ccsd", "demoseg"))
METHOD_MODULES = ("trainer", "ablations")


# ------------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """A training length: the demo's ``--budget NAME`` and the trainer sibling ``X<suffix>``."""

    name: str
    suffix: str
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    purpose: str
    save_every: int = 5
    """Epochs between nnU-Net's ``checkpoint_latest.pth`` writes. nnU-Net's 50 epochs would be longer than the 1000-
    and 3000-iteration budgets' 20 and 60: a killed run resumed with ``--c`` would start again from the first
    iteration instead of losing at most 250. (A checkpoint of the robustness benchmark's 3 mm plans is 45 MB.)"""

    @property
    def iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def overrides(self) -> Dict[str, int]:
        """The nnU-Net attributes this budget sets."""
        return {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch, "save_every": self.save_every}


# 50 iterations per epoch so that the progress plot has points; 5 validation iterations: the demo's validation
# cases are tiny.
BUDGETS: Dict[str, Budget] = {b.name: b for b in (
    Budget("debug", "_debug", 1, 2, 1, "smoke test: 2 iterations"),
    Budget("small", "_200iters", 4, 50, 5, "200 iterations (a CPU demo)"),
    Budget("medium", "_1000iters", 20, 50, 5, "1000 iterations"),
    Budget("large", "_3000iters", 60, 50, 5, "3000 iterations (a GPU)"),
)}
"""Budget name -> :class:`Budget`; a trainer that opts in (:func:`with_budgets`) gets ``X<suffix>`` for each."""
DEBUG_SUFFIX = BUDGETS["debug"].suffix


def _define_in_module(cls_name: str, bases: Tuple[type, ...], namespace: Dict[str, Any], module: str) -> type:
    """A class defined in ``module`` (so that it pickles for DDP and nnU-Net finds it by name)."""
    cls = type(cls_name, bases, {"__module__": module, "__qualname__": cls_name, **namespace})
    setattr(sys.modules[module], cls_name, cls)
    return cls


def with_budgets(cls: type) -> type:
    """Class decorator: define ``cls``'s budget siblings ``X_debug``, ``X_200iters``, ... beside it. Siblings are
    leaves (no ``X_debug_200iters``), and subclasses of ``cls`` do not inherit the opt-in."""
    for budget in BUDGETS.values():
        _define_in_module(cls.__name__ + budget.suffix, (cls,), {
            "budget": MappingProxyType(budget.overrides()),
            "__doc__": f"{cls.__name__} trained for {budget.purpose}.",
        }, cls.__module__)
    return cls


# ------------------------------------------------------------------------------------------------- ablations
@dataclass(frozen=True)
class Setting:
    """One row of a method's ablation table: the name part ``_<name>``, what it changes and why it exists.

    ``changes`` maps a settings attribute of the trainer class (a frozen dataclass such as ``method`` or
    ``sampling``) to the fields it replaces; ``mixin`` is a class put in front of the bases (e.g. a network change).
    """

    name: str
    doc: str
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mixin: Optional[type] = None


def _apply(base: type, setting: Setting, namespace: Dict[str, Any]) -> None:
    """Replace, in ``namespace``, the settings that ``setting`` changes (starting from ``base``'s)."""
    for attribute, changes in setting.changes.items():
        current = namespace.get(attribute, getattr(base, attribute, None))
        if not is_dataclass(current):
            raise MissingModError(f"setting _{setting.name} of {base.__name__} changes {attribute!r}, which is not a "
                                  f"settings dataclass of {base.__name__}")
        known = {f.name for f in fields(current)}
        unknown = set(changes) - known
        if unknown:
            raise MissingModError(f"setting _{setting.name} of {base.__name__} changes {sorted(unknown)}, which "
                                  f"{type(current).__name__} does not have")
        namespace[attribute] = replace(current, **changes)


def define_ablations(base: type, table: Sequence[Setting], combinations: Iterable[Sequence[str]],
                     module: str) -> Dict[str, type]:
    """Define one class per combination of table rows in ``module``: ``<base>_<row>_<row>``, rows in table order.

    Each class replaces the settings its rows change (later rows win where two change one field) and puts the rows'
    mixins in front of ``base``. Returns name -> class.
    """
    by_name = {s.name: s for s in table}
    order = [s.name for s in table]
    defined = {}
    for combination in combinations:
        missing = [n for n in combination if n not in by_name]
        if missing:
            raise MissingModError(f"{base.__name__}: no setting {missing} in its table ({order})")
        if list(combination) != sorted(combination, key=order.index) or len(set(combination)) != len(combination):
            raise MissingModError(f"{base.__name__}: settings {list(combination)} must follow the table order "
                                  f"{order}, each once")
        rows = [by_name[n] for n in combination]
        namespace: Dict[str, Any] = {}
        for row in rows:
            _apply(base, row, namespace)
        mixins = tuple(row.mixin for row in rows if row.mixin is not None)
        name = "_".join([base.__name__, *combination])
        namespace["__doc__"] = f"{base.__name__} " + "; ".join(row.doc for row in rows)
        defined[name] = _define_in_module(name, (*mixins, base), namespace, module)
    return defined


# ------------------------------------------------------------------------------------------------- registry
def method_packages() -> Tuple[str, ...]:
    """The built-in method packages and those named in ``nnUNet_missingmod_methods``."""
    extra = [p.strip() for p in os.environ.get(METHODS_ENV, "").split(",") if p.strip()]
    return METHOD_PACKAGES + tuple(extra)


def trainer_registry(import_errors: Optional[List[str]] = None) -> Dict[str, type]:
    """Every concrete trainer of the method packages, by class name: the classes defined in their ``trainer`` and
    ``ablations`` modules, generated siblings included. With ``import_errors`` (a list), a module that fails to
    import is skipped and its error appended there (a benchmark that should time the rest); otherwise it raises."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    registry: Dict[str, type] = {}
    for package in method_packages():
        for part in METHOD_MODULES:
            try:
                module = importlib.import_module(f"{package}.{part}")
            except Exception as e:
                missing = isinstance(e, ModuleNotFoundError) and e.name in (package, f"{package}.{part}")
                if missing and e.name == f"{package}.{part}" and part != "trainer":
                    continue  # a method without ablations
                if missing:
                    raise MissingModError(f"{METHODS_ENV}: method package {package!r} has no module {part!r} "
                                          f"(is its folder on PYTHONPATH?)") from None
                if import_errors is None:
                    raise
                import_errors.append(f"cannot import {package}.{part}: {type(e).__name__}: {e}")
                continue
            for name, obj in vars(module).items():
                if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__ \
                        and not name.startswith("_"):
                    if name in registry and registry[name] is not obj:
                        raise MissingModError(f"trainer name {name} is defined twice: in {registry[name].__module__} "
                                              f"and {module.__name__}")
                    registry[name] = obj
    return registry


def trainer_dir() -> str:
    """Absolute path of the directory to put in ``nnUNet_extTrainer`` (re-export shims of our trainers).

    Installed (editable or not), that is the package ``nnunet_missingmod.ext_trainers``; when the package is
    imported straight from a source checkout (e.g. ``python -m`` in the repository root), the checkout's
    ``trainers/`` folder.
    """
    try:
        import nnunet_missingmod.ext_trainers as shims
        return os.path.abspath(list(shims.__path__)[0])
    except ModuleNotFoundError:
        import nnunet_missingmod
        checkout = Path(nnunet_missingmod.__file__).resolve().parents[1] / "trainers"
        if (checkout / SHIM_MODULE).is_file():
            return str(checkout)
        raise MissingModError("nnunet_missingmod.ext_trainers is not installed; reinstall the package "
                              "(pip install nnunet-missingmod)") from None
