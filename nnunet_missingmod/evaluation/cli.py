"""Subcommands about evaluation: ``score`` (an existing prediction folder) and ``evaluate`` (predict every case
under every modality subset, then score; defined in :mod:`.evaluate`). Both take the options of :mod:`.options`, so
that they accept the same flags and write the same files."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

from nnunet_missingmod.evaluation.evaluate import register_evaluate
from nnunet_missingmod.evaluation.options import (
    ScoringSettings, add_scoring_arguments, print_overview, resolve_scoring_regions, scoring_conventions,
    scoring_file_ending, scoring_settings_from_args)


@dataclass(frozen=True)
class ScoreSettings:
    """``score``'s command line, read once."""
    gt_dir: str
    pred_dir: str
    name: str  # the trainer column; default the name of PRED_DIR
    subset: Optional[str]  # None: no subset applies ("all")
    scoring: ScoringSettings


def score_settings_from_args(args: argparse.Namespace) -> ScoreSettings:
    """``score``'s settings; bad values (-np, missing folders, an empty --name) are one usage error each."""
    from nnunet_missingmod.errors import MissingModError
    scoring = scoring_settings_from_args(args)
    for folder in (args.gt_dir, args.pred_dir):
        if not os.path.isdir(folder):
            raise MissingModError(f"not a folder: {folder}")
    name = args.name if args.name is not None else os.path.basename(os.path.normpath(args.pred_dir))
    if not name.strip():
        raise MissingModError(f"--name must not be empty, got {args.name!r}")
    return ScoreSettings(gt_dir=args.gt_dir, pred_dir=args.pred_dir, name=name, subset=args.subset,
                         scoring=scoring)


def run_score(settings: ScoreSettings) -> int:
    from nnunet_missingmod.evaluation.report import write_report
    from nnunet_missingmod.evaluation.scoring import score_prediction_folder

    scoring = settings.scoring
    regions = resolve_scoring_regions(scoring)
    records = score_prediction_folder(settings.gt_dir, settings.pred_dir, regions, trainer=settings.name,
                                      subset=settings.subset, hd95_variant=scoring.hd95_variant,
                                      num_processes=scoring.num_processes, file_ending=scoring_file_ending(scoring),
                                      lesion_protocol=scoring.lesion_protocol)
    summary = write_report(records, scoring.output, scoring_conventions(scoring))
    print_overview(summary, scoring.output)
    return 0


def _score(args: argparse.Namespace) -> int:
    return run_score(score_settings_from_args(args))


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
    p.add_argument("--name", "--trainer", dest="name", default=None, metavar="NAME",
                   help="name of the model that made PRED_DIR, used in metrics.csv's trainer column, the tables and "
                        "the plot legends (default: the name of PRED_DIR); --trainer is an older spelling")
    p.add_argument("--subset", default=None, metavar="SUBSET",
                   help="the sequences available when PRED_DIR was predicted, e.g. 'T1ce+FLAIR' (default: 'all', "
                        "no subset applies)")
    p.set_defaults(func=_score)


def register(subparsers) -> None:
    _register_score(subparsers)
    register_evaluate(subparsers)
