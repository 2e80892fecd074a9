"""Which trainers this package defines, and where nnU-Net finds them (``nnUNet_extTrainer``).

Trainer classes register themselves when their module is imported (``MissingModalityTrainerBase.__init_subclass__``);
:func:`trainer_registry` imports every module under :mod:`nnunet_missingmod.training` first, so a new method
subpackage needs no list to be edited.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import Dict

from nnunet_missingmod.errors import MissingModError

SHIM_MODULE = "nnunet_missingmod_trainers.py"
_TRAINERS: Dict[str, type] = {}


def register_trainer(cls: type) -> None:
    """Called for every subclass of the base trainer defined inside this package."""
    _TRAINERS[cls.__name__] = cls


def _import_training_modules() -> None:
    import nnunet_missingmod.training as training
    for module in pkgutil.walk_packages(training.__path__, prefix=training.__name__ + "."):
        if not module.name.endswith(".cli"):
            importlib.import_module(module.name)


def trainer_registry() -> Dict[str, type]:
    """Every concrete trainer of this package (with its generated ``_debug`` sibling), by class name."""
    _import_training_modules()
    return dict(_TRAINERS)


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
