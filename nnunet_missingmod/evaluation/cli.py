"""Subcommands about evaluation: ``score`` (an existing prediction folder), ``evaluate`` (predict every case
under every modality subset, then score; defined in :mod:`.evaluate`) and ``et-rule`` (fit and apply the ET volume
rule of :mod:`.et_rule`). Both take the options of :mod:`.options`, so
that they accept the same flags and write the same files."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

from nnunet_missingmod.evaluation.evaluate import register_evaluate
from nnunet_missingmod.evaluation.parts import register_evaluate_merge
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
    from nnunet_missingmod.atomic_io import check_writable_folder
    check_writable_folder(scoring.output, "-o", create=False)  # now, not after the scoring work it would lose
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
    summary = write_report(records, scoring.output, scoring_conventions(scoring), bootstrap=scoring.bootstrap)
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
                    "HD95 374 mm as the BraTS 2023 scorer (373 with --hd95-variant pooled, as the 2024/25 "
                    "package; 373.13 with voxel_max_directed).")
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


def _regions_for_et_rule(args: argparse.Namespace):
    from nnunet_missingmod.evaluation.regions import resolve_regions
    return resolve_regions(args.dataset_json, args.regions, None)


def _et_rule_fit(args: argparse.Namespace) -> int:
    from nnunet_missingmod.evaluation.et_rule import fit_et_rule_on_folders, save_et_rule
    source = args.dataset_json or "--regions"
    rule = fit_et_rule_on_folders(args.i, args.ref, _regions_for_et_rule(args), args.file_ending, source)
    save_et_rule(rule, args.o)
    fit = rule.fit
    state = (f"ET below {rule.min_volume_ml:.4g} ml becomes label {rule.replacement_label}"
             if rule.min_volume_ml > 0 else "off (no threshold raises the mean ET Dice of these cases)")
    print(f"ET rule: {state}; fitted on {fit['cases']} case(s): mean ET Dice {fit['mean_et_dice_without_rule']:.4f} "
          f"without, {fit['mean_et_dice_with_rule']:.4f} with ({fit['cases_relabelled']} case(s) relabelled); "
          f"written to {args.o}")
    return 0


def _et_rule_apply(args: argparse.Namespace) -> int:
    from nnunet_missingmod.evaluation.et_rule import apply_et_rule_to_folder, load_et_rule
    rule = load_et_rule(args.rule)
    changed = apply_et_rule_to_folder(rule, args.i, args.o, args.file_ending, progress=True)
    print(f"wrote {len(changed)} segmentation(s) to {args.o}; {sum(changed.values())} had their ET relabelled "
          f"(below {rule.min_volume_ml:.4g} ml)")
    return 0


def _register_et_rule(subparsers) -> None:
    p = subparsers.add_parser(
        "et-rule", help="fit or apply the ET volume rule (small predicted ET relabelled as necrosis)",
        description="Isensee et al.'s BraTS 2020 post-processing: when a case's predicted enhancing tumour is "
                    "smaller than a threshold it is relabelled as necrosis (WT and TC unchanged, ET empty). 'fit' "
                    "chooses the threshold on predictions with their ground truth (e.g. nnU-Net's "
                    "fold_X/validation folders), 'apply' writes a folder of segmentations with it applied; "
                    "evaluate --et-rule scores a model with and without it.")
    actions = p.add_subparsers(dest="et_rule_action", required=True, metavar="ACTION")
    fit = actions.add_parser(
        "fit", help="choose the threshold that maximises the mean ET Dice of prediction folders",
        description="Try every threshold that changes the outcome on the given predictions (0 = off) and keep the "
                    "one with the highest mean whole-volume ET Dice (BraTS convention: no ET in the reference and "
                    "none predicted scores 1); on a tie the smallest, so the rule stays off unless it helps.")
    fit.add_argument("-i", nargs="+", required=True, metavar="PRED_DIR",
                     help="prediction folders, e.g. the fold_X/validation folders of a cross-validation")
    fit.add_argument("-ref", required=True, metavar="REF_DIR",
                     help="reference segmentations with the same file names (e.g. nnUNet_preprocessed/"
                          "DatasetXXX/gt_segmentations or labelsTr)")
    fit.add_argument("-o", required=True, metavar="RULE_JSON", help="where to write the rule (JSON)")
    actions_apply = actions.add_parser(
        "apply", help="write PRED_DIR's segmentations with the rule applied to OUT_DIR",
        description="Never modifies PRED_DIR; each file is written atomically, with the same name and geometry.")
    actions_apply.add_argument("-i", required=True, metavar="PRED_DIR", help="folder of predicted segmentations")
    actions_apply.add_argument("-o", required=True, metavar="OUT_DIR", help="output folder (not PRED_DIR)")
    actions_apply.add_argument("-rule", "--rule", dest="rule", required=True, metavar="RULE_JSON",
                               help="a rule written by 'et-rule fit'")
    for action in (fit, actions_apply):
        action.add_argument("--file-ending", dest="file_ending", default=".nii.gz",
                            help="file ending of the segmentations (default .nii.gz)")
    group = fit.add_mutually_exclusive_group(required=True)
    group.add_argument("-djfile", "--dataset-json", dest="dataset_json", default=None, metavar="DATASET_JSON",
                       help="the model's dataset.json: its regions give the ET label and the label it becomes "
                            "(TC minus ET)")
    group.add_argument("--regions", default=None, metavar="SPEC",
                       help="instead of -djfile, e.g. 'WT=1,2,3;TC=2,3;ET=3'")
    fit.set_defaults(func=_et_rule_fit)
    actions_apply.set_defaults(func=_et_rule_apply)


def register(subparsers) -> None:
    _register_score(subparsers)
    register_evaluate(subparsers)
    register_evaluate_merge(subparsers)
    _register_et_rule(subparsers)
