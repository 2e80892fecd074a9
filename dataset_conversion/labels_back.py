"""Thin entry point: map predictions of a converted dataset back to the original labels of its format.

    python dataset_conversion/labels_back.py FORMAT PRED_DIR OUT_DIR

Same as ``nnunet-missingmod labels-back``.
"""
import sys

from nnunet_missingmod.cli import main

if __name__ == "__main__":
    sys.exit(main(["labels-back", *sys.argv[1:]]))
