"""Thin entry point: convert BraTS 2018-2024, FeTS 2022/2024 or MSD Task01 data to an nnU-Net raw dataset.

    python dataset_conversion/convert_brats.py FORMAT SOURCE_DIR DATASET_ID [--name NAME] [--link] ...

Same as ``nnunet-missingmod convert``; see ``nnunet_missingmod/conversion`` for the library code.
"""
import sys

from nnunet_missingmod.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
