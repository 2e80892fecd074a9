"""Subcommands about trainers: ``trainer-dir``."""
from __future__ import annotations

import os
from pathlib import Path

from nnunet_missingmod.errors import MissingModError

SHIM_MODULE = "nnunet_missingmod_trainers.py"


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


def _print_trainer_dir(args) -> int:
    print(trainer_dir())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "trainer-dir", help="print the directory for nnUNet_extTrainer",
        description="Print the absolute path of the directory that makes nnU-Net find this package's trainers: "
                    "export nnUNet_extTrainer=$(nnunet-missingmod trainer-dir)")
    p.set_defaults(func=_print_trainer_dir)
