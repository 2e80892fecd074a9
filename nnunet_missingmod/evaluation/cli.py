"""Subcommands about evaluation: ``score`` (an existing prediction folder).

``evaluate`` (predict every case under every modality subset, then score) is registered here too; it reuses
:func:`add_scoring_arguments`, :func:`regions_from_args` and :func:`conventions_from_args` so that both commands
take the same options and write the same files.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

from nnunet_missingmod.evaluation.metrics import DEFAULT_HD95_VARIANT, HD95_VARIANTS
from nnunet_missingmod.evaluation.regions import REGION_PRESETS

DEFAULT_NUM_PROCESSES = 2


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``score`` and ``evaluate``: regions, HD95 variant, worker processes, output folder."""
    parser.add_argument("-djfile", "--dataset-json", dest="dataset_json", default=None, metavar="DATASET_JSON",
                        help="nnU-Net dataset.json whose 'labels' define the regions (lists/tuples = regions, e.g. "
                             "\"whole tumor\": [1, 2, 3]) and whose 'file_ending' selects the files")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--regions", default=None, metavar="SPEC",
                       help="regions of plain label maps, e.g. 'WT=1,2,3;TC=2,3;ET=3' (overrides dataset.json)")
    group.add_argument("--format", dest="label_format", choices=sorted(REGION_PRESETS), default=None,
                       help="BraTS label convention of the label maps (the FORMAT of convert/labels-back): "
                            "brats2018-2021/fets2022 (WT=1,2,4 TC=1,4 ET=4), "
                            "brats2023/brats2024/fets2024 (WT=1,2,3 TC=1,3 ET=3), msd (WT=1,2,3 TC=2,3 ET=3); "
                            "overrides dataset.json")
    parser.add_argument("--hd95-variant", choices=HD95_VARIANTS, default=DEFAULT_HD95_VARIANT,
                        help="max_directed (default): max of the two directed 95th percentiles, as BraTS 2023 and "
                             "MONAI; pooled: 95th percentile of both directions pooled, as medpy")
    parser.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=DEFAULT_NUM_PROCESSES,
                        help=f"worker processes for scoring, over cases (default {DEFAULT_NUM_PROCESSES})")
    parser.add_argument("-o", "--output", dest="output", required=True, metavar="OUT",
                        help="output folder for metrics.csv, summary.json, summary.md, robustness.png, subsets.png")


def regions_from_args(args: argparse.Namespace):
    """Regions chosen by ``--regions``, ``--format`` or ``-djfile`` (in that priority)."""
    from nnunet_missingmod.evaluation.regions import resolve_regions
    return resolve_regions(args.dataset_json, args.regions, args.label_format)


def file_ending_from_args(args: argparse.Namespace) -> Optional[str]:
    """dataset.json's ``file_ending`` when ``-djfile`` is given, else ``None`` (any label image ending)."""
    if args.dataset_json is None:
        return None
    from nnunet_missingmod.evaluation.regions import load_dataset_json
    return load_dataset_json(args.dataset_json).get("file_ending")


def conventions_from_args(args: argparse.Namespace) -> dict:
    from nnunet_missingmod.evaluation.metrics import conventions
    return conventions(args.hd95_variant)


def _score(args: argparse.Namespace) -> int:
    from nnunet_missingmod.errors import MissingModError
    from nnunet_missingmod.evaluation.report import write_report
    from nnunet_missingmod.evaluation.scoring import score_prediction_folder

    if args.num_processes < 1:
        raise MissingModError(f"-np must be at least 1, got {args.num_processes}")
    for folder in (args.gt_dir, args.pred_dir):
        if not os.path.isdir(folder):
            raise MissingModError(f"not a folder: {folder}")
    regions = regions_from_args(args)
    trainer = args.trainer if args.trainer is not None else os.path.basename(os.path.normpath(args.pred_dir))
    records = score_prediction_folder(args.gt_dir, args.pred_dir, regions, trainer=trainer, subset=args.subset,
                                      hd95_variant=args.hd95_variant, num_processes=args.num_processes,
                                      file_ending=file_ending_from_args(args))
    summary = write_report(records, args.output, conventions_from_args(args))
    print_overview(summary, args.output)
    return 0


def print_overview(summary: dict, out_dir: str) -> None:
    print(f"scored {len(summary['cases'])} case(s), regions {', '.join(summary['regions'])}; "
          f"Dice in [0, 1], HD95 in mm ({summary['conventions']['hd95_variant']})")
    for trainer in summary["trainers"]:
        for region in summary["regions"]:
            stats = summary["mean_over_subsets"][trainer][region]
            print(f"  {trainer} {region}: Dice {stats['dice']['mean']:.3f}, HD95 {stats['hd95']['mean']:.2f} mm")
    print(f"wrote {os.path.join(out_dir, 'summary.md')} (and metrics.csv, summary.json, plots)")


def _register_score(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score an existing prediction folder (Dice, HD95 per case and region)",
        description="Score the label maps in PRED_DIR against those in GT_DIR (matched by file name, full volumes, "
                    "spacing from the images) and write metrics.csv, summary.json, summary.md and plots into OUT. "
                    "Conventions: Dice in [0, 1]; both empty -> Dice 1, HD95 0; exactly one empty -> Dice 0, "
                    "HD95 373.13 mm (diagonal of the 240x240x155 BraTS volume).")
    p.add_argument("gt_dir", metavar="GT_DIR", help="folder of ground-truth label images (e.g. labelsTr)")
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted label images, same file names")
    add_scoring_arguments(p)
    p.add_argument("--trainer", default=None, metavar="NAME",
                   help="name in the trainer column (default: the name of PRED_DIR)")
    p.add_argument("--subset", default=None, metavar="SUBSET",
                   help="the sequences available when PRED_DIR was predicted, e.g. 'T1ce+FLAIR' (default: 'all', "
                        "no subset applies)")
    p.set_defaults(func=_score)


def register(subparsers) -> None:
    from nnunet_missingmod.evaluation.evaluate import register_evaluate
    _register_score(subparsers)
    register_evaluate(subparsers, add_scoring_arguments)
