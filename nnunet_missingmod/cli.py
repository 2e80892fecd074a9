"""``nnunet-missingmod``: one console command with subcommands.

Each feature package owns its subcommands in a ``cli`` module exposing ``register(subparsers)``; this file only
collects them, so that heavy imports (torch, nnU-Net) happen inside the subcommand that needs them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from nnunet_missingmod import __version__
from nnunet_missingmod.errors import MissingModError

SUBCOMMAND_MODULES = (
    "nnunet_missingmod.training.cli",
    "nnunet_missingmod.inference.cli",
    "nnunet_missingmod.conversion.cli",
    "nnunet_missingmod.evaluation.cli",
    "nnunet_missingmod.demo.cli",
    "nnunet_missingmod.export.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-missingmod",
        description="nnU-Net v2 plugin for brain-tumour segmentation with missing MRI sequences.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MissingModError as e:
        print(f"nnunet-missingmod {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
