"""Subcommands about datasets: ``convert``, ``labels-back`` and ``phantom``."""
from __future__ import annotations

import sys

from nnunet_missingmod.conversion.formats import FORMAT_KEYS


def _convert(args) -> int:
    from nnunet_missingmod.conversion.convert import REPORT_NAME, convert_dataset
    from nnunet_missingmod.faults import Terminated, sigterm_raises

    try:
        with sigterm_raises():
            result = convert_dataset(args.format, args.source_dir, args.dataset_id, name=args.name, link=args.link,
                                     allow_missing=args.allow_missing, keep_rc=args.keep_rc,
                                     test_cases=args.test_cases)
    except Terminated:
        print(f"convert: stopped by SIGTERM; the partial conversion was removed and nothing was written to "
              f"$nnUNet_raw for dataset ID {args.dataset_id}", file=sys.stderr)
        return Terminated.exit_code
    if result.already_done:
        print(f"{result.dataset_dir} already holds this conversion (same source, files and options); nothing to do")
        return 0
    print(f"wrote {result.dataset_dir}: {result.num_training} training case(s) in imagesTr/labelsTr, "
          + (f"{len(result.held_out)} held-out labelled case(s) in imagesTs/labelsTs, " if result.held_out else "")
          + f"{result.num_test} unlabelled case(s) in imagesTs")
    for case_id, sequences in result.blank_sequences.items():
        print(f"warning: case {case_id}: {' and '.join(sequences)} {'is' if len(sequences) == 1 else 'are'} all zero "
              f"in the source; converted as given (check the source if that is not intended)", file=sys.stderr)
    if result.missing_sequences:
        print(f"{len(result.missing_sequences)} case(s) with missing sequences written as zero images; "
              f"see {result.dataset_dir / REPORT_NAME}")
    return 0


def _labels_back(args) -> int:
    from nnunet_missingmod.conversion.labels import convert_labels_back

    written = convert_labels_back(args.format, args.pred_dir, args.out_dir)
    print(f"wrote {len(written)} segmentation(s) with {args.format} label values to {args.out_dir}")
    return 0


def _phantom(args) -> int:
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset

    cases = write_phantom_dataset(args.out_dir, args.n, args.layout, spacing=args.spacing, seed=args.seed,
                                  n_unlabelled=args.unlabelled, first_index=args.first_index)
    print(f"wrote {len(cases)} phantom case(s) in the {args.layout} layout to {args.out_dir}; convert with: "
          f"nnunet-missingmod convert {args.layout} {args.out_dir} DATASET_ID")
    return 0


def register(subparsers) -> None:
    formats = ", ".join(FORMAT_KEYS)
    p = subparsers.add_parser(
        "convert", help="convert BraTS 2018-2024, FeTS or MSD data to an nnU-Net raw dataset",
        description="Convert a source folder to $nnUNet_raw/DatasetXXX_NAME with channels _0000 T1, _0001 T1ce, "
                    "_0002 T2, _0003 FLAIR and region labels (1 oedema, 2 NCR/NET, 3 ET; regions WT, TC, ET). "
                    "Cases without a segmentation go to imagesTs; --test-cases holds out labelled cases in "
                    "imagesTs/labelsTs. Nothing is written if any check fails; a rerun with the same input is a "
                    "no-op.")
    p.add_argument("format", choices=FORMAT_KEYS, metavar="FORMAT", help=f"source format: {formats}")
    p.add_argument("source_dir", metavar="SOURCE_DIR",
                   help="folder with one sub-folder per case (or HGG/LGG for 2018/2019); for msd the "
                        "Task01_BrainTumour folder")
    p.add_argument("dataset_id", type=int, metavar="DATASET_ID", help="nnU-Net dataset ID (1-999)")
    p.add_argument("--name", help="dataset name (default from the format, e.g. BraTS2021)")
    p.add_argument("--link", action="store_true",
                   help="symlink source images that are already .nii.gz instead of copying them")
    p.add_argument("--allow-missing", action="store_true",
                   help="convert cases with missing sequences; absent channels become zero images "
                        "(listed in conversion_report.json)")
    p.add_argument("--keep-rc", action="store_true",
                   help="brats2024: keep the resection cavity as label 4 and its own region (default: background, "
                        "as the official scorer excludes RC from WT and TC)")
    p.add_argument("--test-cases", type=int, default=0, metavar="N",
                   help="hold out N labelled cases as a test set: their images go to imagesTs and their labels, "
                        "converted like the training labels, to labelsTs (for 'evaluate -i imagesTs -l labelsTs'). "
                        "The choice is deterministic: the N case ids with the smallest SHA-256 hash, the same on "
                        "every run and machine; they are listed in conversion_report.json. Default 0")
    p.set_defaults(func=_convert)

    p = subparsers.add_parser(
        "labels-back", help="map predictions back to a format's original label values",
        description="Write each prediction of PRED_DIR (nnU-Net labels of a converted dataset) to OUT_DIR with the "
                    "original label values of FORMAT, e.g. 1 NCR, 2 ED, 4 ET for brats2021, for submission.")
    p.add_argument("format", choices=FORMAT_KEYS, metavar="FORMAT", help=f"source format: {formats}")
    p.add_argument("pred_dir", metavar="PRED_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.set_defaults(func=_labels_back)

    p = subparsers.add_parser(
        "phantom", help="write synthetic BraTS-like cases on ICBM152 anatomy in any source layout",
        description="Generate deterministic phantom cases (four contrasts and a tumour) on the ICBM152 2009a "
                    "anatomy shipped with nilearn, in the source layout of a format, ready for 'convert'.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder (for msd: the Task01 folder)")
    p.add_argument("-n", type=int, required=True, help="number of labelled cases")
    p.add_argument("--unlabelled", type=int, default=0, help="number of extra image-only cases (default 0)")
    p.add_argument("--layout", choices=FORMAT_KEYS, default="brats2021", metavar="FORMAT",
                   help=f"source layout (default brats2021): {formats}")
    p.add_argument("--spacing", type=float, default=6.0, help="isotropic voxel size in mm (default 6: ~33x39x32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--first-index", type=int, default=None, metavar="I",
                   help="number of the first case in the case ids (default: the format's, e.g. BraTS2021_00000); "
                        "give test phantoms an offset, e.g. --first-index 1000, so that their ids differ from "
                        "the training phantoms'")
    p.set_defaults(func=_phantom)
