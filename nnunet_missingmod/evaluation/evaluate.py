"""``nnunet-missingmod evaluate``: every case under every modality subset, scored on full volumes.

Per model and case the images are read and preprocessed once; each subset then zeroes its absent channels in the
preprocessed array (as the predictor does for a real missing file) and is predicted with nnU-Net's sliding window and
exported to the original image space. The predictions are kept under ``OUT/predictions/<trainer>/<subset>/`` and
scored with :mod:`nnunet_missingmod.evaluation.scoring`, then reported by
:func:`nnunet_missingmod.evaluation.report.write_report`.

With ``--full-set-model``, that model is evaluated like the others, and for each other (robust) model one more
entry, ``<robust>+<full>_routed``, is scored without predicting anything again: its full-set predictions are the
full-set model's, its other subsets' the robust model's (what ``predict --full-set-model`` does per case).

With ``--et-rule RULE.json`` (:mod:`nnunet_missingmod.evaluation.et_rule`), every model gets one more entry,
``<model>_etRule``: its predictions with the rule applied (written under ``OUT/predictions/<model>_etRule/``),
scored beside the raw ones, again without predicting anything again.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.figures import DEFAULT_FIGURES, parse_figure_count
from nnunet_missingmod.evaluation.options import (
    ScoringSettings, add_scoring_arguments, print_overview, resolve_scoring_regions, scoring_conventions,
    scoring_settings_from_args)
from nnunet_missingmod.inference.model_folder import (
    add_model_arguments, add_pipeline_arguments, add_prediction_arguments, check_model_folder,
    check_pipeline_arguments, model_folders_from_args, parse_folds, resolve_device)
from nnunet_missingmod.modalities import FULL_SET, ModalitySubset, SUBSETS

if TYPE_CHECKING:
    from nnunet_missingmod.evaluation.et_rule import EtRule

ROUTED_SUFFIX = "_routed"
ET_RULE_SUFFIX = "_etRule"


def complete_cases(predictor, images_dir: str, labels_dir: Optional[str] = None) -> list:
    """The cases of ``images_dir``, checked before any prediction: every case has all of the model's sequences (a
    subset is simulated by zeroing, so the full set is needed) and, with ``labels_dir``, a label image."""
    from nnunet_missingmod.evaluation.scoring import list_label_files
    from nnunet_missingmod.inference.discovery import discover_cases
    ending = predictor.dataset_json["file_ending"]
    cases = discover_cases(images_dir, predictor.channel_modalities, ending)
    incomplete = [f"{c.case_id} (missing {', '.join(m for m in predictor.channel_modalities if m not in c.files)})"
                  for c in cases if c.error is None and len(c.files) < len(predictor.channel_modalities)]
    broken = [c.error for c in cases if c.error]
    if broken or incomplete:
        raise MissingModError("evaluate needs every sequence of every case: " + "; ".join(broken + incomplete))
    if labels_dir is not None:
        labels = list_label_files(labels_dir, ending)
        unlabelled = [c.case_id for c in cases if c.case_id not in labels]
        if unlabelled:
            raise MissingModError(f"no label image in {labels_dir} for case(s) {', '.join(unlabelled)}")
    return cases


def predict_all_subsets(predictor, cases, out_root: str, subsets: Sequence[ModalitySubset] = SUBSETS,
                        progress: bool = True, label: Optional[str] = None, num_processes_preprocessing: int = 0,
                        num_processes_export: int = 0) -> Dict[str, str]:
    """Predict every case under every subset into ``out_root/<subset>/`` (emptied first, so no prediction of an
    earlier run is scored); returns subset name -> prediction folder.

    A case is read and preprocessed once (by ``num_processes_preprocessing`` of nnU-Net's preprocessing workers
    while the previous case is predicted, or here with 0); its subset predictions are exported by
    ``num_processes_export`` workers while the next subsets are predicted (or here): ``predict``'s pipeline
    (:mod:`nnunet_missingmod.inference.pipeline`), with the same segmentations either way."""
    from contextlib import closing

    from nnunet_missingmod.inference import pipeline
    from nnunet_missingmod.inference.case import export_arguments
    folders = {s.name: os.path.join(out_root, s.name) for s in subsets}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    with tqdm(total=len(cases) * len(subsets), desc=f"{label or predictor.trainer_name}: case x subset",
              unit="pred", disable=not progress, leave=False) as bar:
        def finished(done) -> None:
            for _, error in done:
                if error is not None:
                    raise error
                bar.update()

        with pipeline.exports_for(num_processes_export, len(cases) * len(subsets)) as exports, \
                closing(pipeline.prepared_cases(predictor, cases, out_root, num_processes_preprocessing)) as source:
            for prepared in source:
                result = prepared.result
                if not result.ok:
                    raise MissingModError(result.error)
                if not prepared.subset.is_full:  # a constant volume counts as missing; a subset needs all
                    raise MissingModError(f"case {result.case}: {'; '.join(result.warnings)}")
                for subset in subsets:
                    logits = predictor.predict_preprocessed(prepared.data, subset)
                    exports.wait_for_room()
                    exports.submit(result, export_arguments(
                        predictor, logits, prepared.properties, os.path.join(folders[subset.name], result.case), False))
                    finished(exports.collect(wait=False))
            finished(exports.collect(wait=True))
    return folders


def unique_trainer_labels(names: Sequence[str]) -> List[str]:
    """Trainer names for the report; a repeated name gets ``#2``, ``#3`` ... so models never merge."""
    labels, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


@dataclass(frozen=True)
class EvaluateSettings:
    """``evaluate``'s command line, read once (:func:`settings_from_args`) and checked before any model loads."""
    images: str  # -i
    labels: str  # -l
    model_folders: Tuple[str, ...]  # -m, or one per -tr under $nnUNet_results
    full_set_model: Optional[str]  # --full-set-model: evaluated last, and routed with each of model_folders
    folds: Tuple  # -f: ints or "all"
    checkpoint: str  # -chk
    subsets: Tuple[ModalitySubset, ...]  # --subsets (default all 15)
    device: str  # -device name; resolved to a torch.device when the models load
    step_size: float
    use_mirroring: bool  # not --disable_tta
    verbose: bool
    scoring: ScoringSettings
    figures: Union[int, str] = DEFAULT_FIGURES  # --figures: pictures of this many cases, or "all"
    num_processes_preprocessing: int = 0  # -npp
    num_processes_export: int = 0  # -nps
    et_rule: Optional["EtRule"] = None  # --et-rule, loaded


def settings_from_args(args: argparse.Namespace) -> EvaluateSettings:
    """``evaluate``'s settings; each bad value (a folder, -np, a subset, a model folder or fold) is one usage error."""
    from nnunet_missingmod.modalities import parse_subsets
    for folder in (args.i, args.l):
        if not os.path.isdir(folder):
            raise MissingModError(f"not a folder: {folder}")
    scoring = scoring_settings_from_args(args)
    check_pipeline_arguments(args)
    subsets = tuple(parse_subsets(args.subsets))
    figures = parse_figure_count(args.figures)
    model_folders = tuple(model_folders_from_args(args))
    folds = tuple(parse_folds(args.f))
    if args.full_set_model is not None and not os.path.isdir(args.full_set_model):
        raise MissingModError(f"--full-set-model: model folder {args.full_set_model} does not exist")
    for folder in model_folders + ((args.full_set_model,) if args.full_set_model else ()):
        check_model_folder(folder, folds, args.chk)
    et_rule = None
    if args.et_rule is not None:
        from nnunet_missingmod.evaluation.et_rule import load_et_rule
        et_rule = load_et_rule(args.et_rule)
    return EvaluateSettings(images=args.i, labels=args.l, model_folders=model_folders,
                            full_set_model=args.full_set_model, folds=folds,
                            checkpoint=args.chk, subsets=subsets, device=args.device, step_size=args.step_size,
                            use_mirroring=not args.disable_tta, verbose=args.verbose, scoring=scoring,
                            figures=figures, num_processes_preprocessing=args.npp, num_processes_export=args.nps,
                            et_rule=et_rule)


def routed_label(robust_label: str, full_set_label: str) -> str:
    """The report entry of a robust model routed with a full-set model: ``<robust>+<full>_routed`` (only characters
    the two labels already have, so as safe in a file name as they are)."""
    return f"{robust_label}+{full_set_label}{ROUTED_SUFFIX}"


def routed_prediction_folders(robust_label: str, robust_folders: Mapping[str, str], full_set_label: str,
                              full_set_folders: Mapping[str, str]) -> List:
    """The routed entry's :class:`~nnunet_missingmod.evaluation.scoring.PredictionFolder` items: the full set from
    the full-set model's folder, every other subset from the robust model's; no prediction is repeated."""
    from nnunet_missingmod.evaluation.scoring import PredictionFolder
    label = routed_label(robust_label, full_set_label)
    return [PredictionFolder(label, name, full_set_folders[name] if name == FULL_SET.name else folder)
            for name, folder in robust_folders.items()]


def et_rule_label(label: str) -> str:
    return f"{label}{ET_RULE_SUFFIX}"


def et_rule_prediction_folders(rule, folders_by_label: Mapping[str, Mapping[str, str]], predictions_root: str,
                               file_ending: str) -> List:
    """Each model's predictions with the ET rule applied, as one more entry per model (``<model>_etRule``)."""
    from nnunet_missingmod.evaluation.et_rule import apply_et_rule_to_folder
    from nnunet_missingmod.evaluation.scoring import PredictionFolder
    entries = []
    for label, folders in folders_by_label.items():
        written = relabelled = 0
        for name, folder in folders.items():
            out = os.path.join(predictions_root, et_rule_label(label), name)
            changed = apply_et_rule_to_folder(rule, folder, out, file_ending)
            written, relabelled = written + len(changed), relabelled + sum(changed.values())
            entries.append(PredictionFolder(et_rule_label(label), name, out))
        print(f"{et_rule_label(label)}: {label}'s predictions with ET below {rule.min_volume_ml:.4g} ml relabelled "
              f"({relabelled} of {written} changed)")
    return entries


def report_entries(labels: Sequence[str], full_set_model: bool, et_rule: bool) -> List[str]:
    """The trainer names of the report, in order: the models (``labels``, the full-set model last when
    ``full_set_model``), the routed entries, then the ET-rule entries."""
    entries = list(labels)
    if full_set_model:
        entries += [routed_label(robust, labels[-1]) for robust in labels[:-1]]
    if et_rule:
        entries += [et_rule_label(label) for label in labels]
    return entries


def check_reference(reference: Optional[str], entries: Sequence[str]) -> None:
    """``--reference`` must name one of the report's entries: checked before anything is predicted."""
    if reference is not None and reference not in entries:
        raise MissingModError(f"--reference {reference!r} is not one of the models evaluated: {', '.join(entries)}")


def run_evaluate(settings: EvaluateSettings) -> int:
    from nnunet_missingmod.evaluation.report import write_report
    from nnunet_missingmod.evaluation.scoring import PredictionFolder, score_prediction_folders
    from nnunet_missingmod.inference.nnunet_log import nnunet_output_to, start_log
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor

    scoring = settings.scoring
    device = resolve_device(settings.device)
    log = start_log(scoring.output, "evaluate", settings.verbose)
    predictors = []
    all_folders = settings.model_folders + ((settings.full_set_model,) if settings.full_set_model else ())
    for folder in all_folders:
        with nnunet_output_to(log):  # nnU-Net prints while it builds the predictor and loads the checkpoint
            predictor = MissingModalityPredictor(tile_step_size=settings.step_size,
                                                 use_mirroring=settings.use_mirroring, device=device,
                                                 verbose=settings.verbose, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(folder, settings.folds,
                                                           checkpoint_name=settings.checkpoint)
        predictor.nnunet_log = log
        predictors.append(predictor)
    labels = unique_trainer_labels([p.trainer_name for p in predictors])
    check_reference(scoring.reference, report_entries(labels, settings.full_set_model is not None,
                                                      settings.et_rule is not None))
    # without -djfile/--regions/--format: the labels the models were trained on
    regions = resolve_scoring_regions(scoring, os.path.join(settings.model_folders[0], "dataset.json"))

    cases = [complete_cases(predictor, settings.images, settings.labels) for predictor in predictors]
    prediction_folders, folders_by_label = [], {}
    for label, predictor, model_cases in zip(labels, predictors, cases):
        folders = predict_all_subsets(predictor, model_cases, os.path.join(scoring.output, "predictions", label),
                                      settings.subsets, label=label,
                                      num_processes_preprocessing=settings.num_processes_preprocessing,
                                      num_processes_export=settings.num_processes_export)
        print(f"{label}: {len(model_cases)} case(s) x {len(settings.subsets)} subset(s) predicted")
        prediction_folders += [PredictionFolder(label, name, folder) for name, folder in folders.items()]
        folders_by_label[label] = folders
    if settings.full_set_model:
        full_label = labels[-1]
        for robust in labels[:-1]:
            prediction_folders += routed_prediction_folders(robust, folders_by_label[robust], full_label,
                                                            folders_by_label[full_label])
            print(f"{routed_label(robust, full_label)}: {full_label}'s {FULL_SET.name} predictions, {robust}'s "
                  "for the other subsets (scored, not predicted again)")
    file_ending = predictors[0].dataset_json["file_ending"]
    if settings.et_rule is not None:
        prediction_folders += et_rule_prediction_folders(settings.et_rule, folders_by_label,
                                                         os.path.join(scoring.output, "predictions"), file_ending)
    records = score_prediction_folders(settings.labels, prediction_folders, regions,
                                       hd95_variant=scoring.hd95_variant, num_processes=scoring.num_processes,
                                       file_ending=file_ending, lesion_protocol=scoring.lesion_protocol)
    summary = write_report(records, scoring.output, scoring_conventions(scoring), bootstrap=scoring.bootstrap)
    print_overview(summary, scoring.output)
    write_pictures(settings, records, cases[0], prediction_folders, regions, file_ending)
    if log:
        print(f"nnU-Net's messages in {log}")
    return 0


def write_pictures(settings: EvaluateSettings, records, cases, prediction_folders, regions, file_ending: str) -> None:
    """``OUT/cases/CASE.png`` for the ``--figures`` cases (see :mod:`nnunet_missingmod.evaluation.figures`): a row
    per scored entry, routed ones included, in the order they were scored."""
    from nnunet_missingmod.evaluation.figures import write_case_figures
    from nnunet_missingmod.evaluation.scoring import list_label_files
    by_entry: Dict[str, Dict[str, str]] = {}
    for entry in prediction_folders:
        by_entry.setdefault(entry.trainer, {})[str(entry.subset)] = entry.folder
    written, notes = write_case_figures(settings.scoring.output, records, settings.figures,
                                        {c.case_id: c.files for c in cases},
                                        list_label_files(settings.labels, file_ending), by_entry, regions,
                                        file_ending)
    if written:
        print(f"pictures of {len(written)} case(s) in {os.path.join(settings.scoring.output, 'cases')}"
              + "".join(f"; {note}" for note in notes))


def _evaluate(args: argparse.Namespace) -> int:
    """SIGTERM (a scheduler's time limit) stops at once: the prediction being written is removed by its atomic
    writer, so every file left is complete; the exit status is 143, as ``predict``'s."""
    from nnunet_missingmod.faults import Terminated, sigterm_raises
    with sigterm_raises():
        try:
            return run_evaluate(settings_from_args(args))
        except Terminated:
            print(f"evaluate: stopped by SIGTERM; every file in {args.output} is complete (the prediction being "
                  "written was removed), but the evaluation is not: rerun the command (it predicts again)",
                  file=sys.stderr)
            return Terminated.exit_code


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="predict every case under every modality subset and score it (Dice, HD95, AURC)",
        description="For each model, predict every case of IMAGES (nnU-Net raw layout, all sequences present) "
                    "under every modality subset (default all 15), preprocessing each case once, and score the "
                    "full volumes in the original image space against LABELS. Writes metrics.csv, summary.json, "
                    "summary.md, robustness.png, subsets.png, pictures of a few cases (cases/CASE.png), the "
                    "predictions and nnU-Net's own messages (evaluate.log; --verbose: to the terminal) into OUT.")
    p.add_argument("-i", required=True, help="images folder (nnU-Net raw layout, e.g. imagesTs)")
    p.add_argument("-l", required=True, help="labels folder (e.g. labelsTs), same case names")
    add_model_arguments(p, several=True)
    p.add_argument("--full-set-model", dest="full_set_model", default=None, metavar="MODEL_FOLDER",
                   help="a trained model folder (as -m takes) of a full-set model, e.g. stock nnU-Net's: it is "
                        "evaluated as its own entry, and for every other model one more entry "
                        "'<model>+<full-set model>" + ROUTED_SUFFIX + "' is scored whose T1+T1ce+T2+FLAIR "
                        "predictions are this model's and whose other subsets' are the other model's (what "
                        "predict --full-set-model does: a complete scan gets stock's segmentation); no extra "
                        "prediction. Same -f and -chk as the other models")
    p.add_argument("--subsets", default=None,
                   help="subsets to evaluate, separated by ';' (e.g. 'T1ce+FLAIR;T2'); default: all 15")
    p.add_argument("--et-rule", dest="et_rule", default=None, metavar="RULE_JSON",
                   help="an ET volume rule ('nnunet-missingmod et-rule fit'): every model gets one more entry "
                        "'<model>" + ET_RULE_SUFFIX + "', its predictions with the rule applied (no extra prediction)")
    add_prediction_arguments(p)
    add_pipeline_arguments(p)
    add_scoring_arguments(p)
    p.add_argument("--figures", default=str(DEFAULT_FIGURES), metavar="N|all",
                   help="pictures cases/CASE.png of N cases (default %(default)s: the best, median and worst by the "
                        "first model's full-set WT Dice), 'all', or 0 for none: per model the four sequences, the "
                        "ground truth and the segmentations under the full set, FLAIR+T1ce+T2, FLAIR+T1ce and FLAIR")
    p.set_defaults(func=_evaluate)

