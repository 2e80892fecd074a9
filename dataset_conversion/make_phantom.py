"""Thin entry point: write synthetic BraTS-like phantom cases in the source layout of any format.

    python dataset_conversion/make_phantom.py OUT_DIR -n N [--layout FORMAT] [--spacing MM] [--seed S]

Same as ``nnunet-missingmod phantom``.
"""
import sys

from nnunet_missingmod.cli import main

if __name__ == "__main__":
    sys.exit(main(["phantom", *sys.argv[1:]]))
