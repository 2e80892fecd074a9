"""Subcommands about trainers: ``trainer-dir``."""
from __future__ import annotations

from nnunet_missingmod.training.naming import trainer_dir


def _print_trainer_dir(args) -> int:
    print(trainer_dir())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "trainer-dir", help="print the directory for nnUNet_extTrainer",
        description="Print the absolute path of the directory that makes nnU-Net find this package's trainers: "
                    "export nnUNet_extTrainer=$(nnunet-missingmod trainer-dir)")
    p.set_defaults(func=_print_trainer_dir)
