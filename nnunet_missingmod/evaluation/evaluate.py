"""``nnunet-missingmod evaluate``: every case under every modality subset, scored on full volumes.

Per model and case the images are read and preprocessed once; each subset then zeroes its absent channels in the
preprocessed array (as the predictor does for a real missing file) and is predicted with nnU-Net's sliding window and
exported to the original image space; ``--subset-batch K`` subsets share one sliding window, each tile's K masked
copies going through the network as one batch. The predictions are kept under
``OUT/predictions/<trainer>/<subset>/`` and scored with :mod:`nnunet_missingmod.evaluation.scoring`, then reported
by :func:`nnunet_missingmod.evaluation.report.write_report`.

With ``--full-set-model``, that model is evaluated like the others, and for each other (robust) model one more
entry, ``<robust>+<full>_routed``, is scored without predicting anything again: its full-set predictions are the
full-set model's, its other subsets' the robust model's (what ``predict --full-set-model`` does per case).

With ``--et-rule RULE.json`` (:mod:`nnunet_missingmod.evaluation.et_rule`), every model gets one more entry,
``<model>_etRule``: its predictions with the rule applied (written under ``OUT/predictions/<model>_etRule/``),
scored beside the raw ones, again without predicting anything again.

With ``-num_parts N -part_id I`` the call evaluates only every N-th case from I (nnU-Net's split), resumes when
rerun, and ``evaluate-merge`` writes the report once every part is done (:mod:`nnunet_missingmod.evaluation.parts`).
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
DEFAULT_SUBSET_BATCH = 15
"""--subset-batch: the subsets whose masked copies of a tile go through the network as one batch (docs/benchmarks.md,
"Subsets batched per tile", for the measurement that chose it)."""


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
                        num_processes_export: int = 0,
                        todo: Optional[Mapping[str, Sequence[ModalitySubset]]] = None,
                        subset_batch: int = 1) -> Dict[str, str]:
    """Predict every case under every subset into ``out_root/<subset>/`` (emptied first, so no prediction of an
    earlier run is scored); returns subset name -> prediction folder.

    A case is read and preprocessed once (by ``num_processes_preprocessing`` of nnU-Net's preprocessing workers
    while the previous case is predicted, or here with 0); its subset predictions are exported by
    ``num_processes_export`` workers while the next subsets are predicted (or here): ``predict``'s pipeline
    (:mod:`nnunet_missingmod.inference.pipeline`), with the same segmentations either way.

    ``todo`` (a ``-num_parts`` part, which resumes): case -> the subsets still to predict; the folders are kept,
    not emptied, and a case with nothing left is not even read.

    ``subset_batch`` K: the subsets of a case are predicted K at a time in one sliding window, each tile's K masked
    copies as one batch (:meth:`~nnunet_missingmod.inference.predictor.MissingModalityPredictor.
    predict_preprocessed_subsets`); 1: one sliding window per subset."""
    from contextlib import closing

    from nnunet_missingmod.inference import pipeline
    from nnunet_missingmod.inference.case import export_arguments
    folders = {s.name: os.path.join(out_root, s.name) for s in subsets}
    for folder in folders.values():
        if todo is None:
            shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=todo is not None)
    if todo is not None:
        cases = [c for c in cases if todo.get(c.case_id)]
    n_predictions = sum(len(todo[c.case_id]) for c in cases) if todo is not None else len(cases) * len(subsets)
    if not cases:
        return folders
    with tqdm(total=n_predictions, desc=f"{label or predictor.trainer_name}: case x subset",
              unit="pred", disable=not progress, leave=False) as bar:
        def finished(done) -> None:
            for _, error in done:
                if error is not None:
                    raise error
                bar.update()

        with pipeline.exports_for(num_processes_export, n_predictions) as exports, \
                closing(pipeline.prepared_cases(predictor, cases, out_root, num_processes_preprocessing)) as source:
            for prepared in source:
                result = prepared.result
                if not result.ok:
                    raise MissingModError(result.error)
                if not prepared.subset.is_full:  # a constant volume counts as missing; a subset needs all
                    raise MissingModError(f"case {result.case}: {'; '.join(result.warnings)}")
                case_subsets = list(subsets if todo is None else todo[result.case])
                for start in range(0, len(case_subsets), subset_batch):
                    batch = case_subsets[start:start + subset_batch]
                    for subset, logits in zip(batch, predictor.predict_preprocessed_subsets(prepared.data, batch)):
                        exports.wait_for_room()
                        exports.submit(result, export_arguments(predictor, logits, prepared.properties,
                                                                os.path.join(folders[subset.name], result.case), False))
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
    num_parts: int = 1  # -num_parts: > 1 evaluates every num_parts-th case from part_id (evaluate-merge reports)
    part_id: int = 0  # -part_id
    subset_batch: int = DEFAULT_SUBSET_BATCH  # --subset-batch: subsets per tile batch (1: a sliding window each)


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
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise MissingModError(f"-part_id must be 0 .. -num_parts - 1 and -num_parts at least 1, got -part_id "
                              f"{args.part_id} and -num_parts {args.num_parts}")
    if args.subset_batch < 1:
        raise MissingModError(f"--subset-batch must be 1 (one sliding window per subset) or more, got "
                              f"{args.subset_batch}")
    if args.num_parts > 1 and args.et_rule is not None:
        raise MissingModError("--et-rule cannot be combined with -num_parts yet: evaluate without --et-rule, or in "
                              "one call")
    et_rule = None
    if args.et_rule is not None:
        from nnunet_missingmod.evaluation.et_rule import load_et_rule
        et_rule = load_et_rule(args.et_rule)
    return EvaluateSettings(images=args.i, labels=args.l, model_folders=model_folders,
                            full_set_model=args.full_set_model, folds=folds,
                            checkpoint=args.chk, subsets=subsets, device=args.device, step_size=args.step_size,
                            use_mirroring=not args.disable_tta, verbose=args.verbose, scoring=scoring,
                            figures=figures, num_processes_preprocessing=args.npp, num_processes_export=args.nps,
                            et_rule=et_rule, num_parts=args.num_parts, part_id=args.part_id,
                            subset_batch=args.subset_batch)


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


def load_predictors(settings: EvaluateSettings, log: Optional[str]) -> list:
    """One predictor per model folder, the full-set model last (nnU-Net's messages go to ``log``)."""
    from nnunet_missingmod.inference.nnunet_log import nnunet_output_to
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    device = resolve_device(settings.device)
    predictors = []
    for folder in all_model_folders(settings):
        with nnunet_output_to(log):  # nnU-Net prints while it builds the predictor and loads the checkpoint
            predictor = MissingModalityPredictor(tile_step_size=settings.step_size,
                                                 use_mirroring=settings.use_mirroring, device=device,
                                                 verbose=settings.verbose, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(folder, settings.folds,
                                                           checkpoint_name=settings.checkpoint)
        predictor.nnunet_log = log
        predictors.append(predictor)
    return predictors


def all_model_folders(settings: EvaluateSettings) -> Tuple[str, ...]:
    return settings.model_folders + ((settings.full_set_model,) if settings.full_set_model else ())


def run_evaluate(settings: EvaluateSettings) -> int:
    if settings.num_parts > 1:
        return run_evaluate_part(settings)
    from nnunet_missingmod.evaluation.figures import write_pictures
    from nnunet_missingmod.evaluation.report import write_report
    from nnunet_missingmod.evaluation.scoring import PredictionFolder, score_prediction_folders
    from nnunet_missingmod.inference.nnunet_log import start_log

    scoring = settings.scoring
    resolve_device(settings.device)  # before anything is written
    log = start_log(scoring.output, "evaluate", settings.verbose)
    from nnunet_missingmod.evaluation.parts import remove_parts
    remove_parts(scoring.output)  # parts of an earlier -num_parts run into this folder are out of date now
    predictors = load_predictors(settings, log)
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
                                      num_processes_export=settings.num_processes_export,
                                      subset_batch=settings.subset_batch)
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
    write_pictures(scoring.output, settings.figures, records, {c.case_id: c.files for c in cases[0]},
                   settings.labels, prediction_folders, regions, file_ending)
    if log:
        print(f"nnU-Net's messages in {log}")
    return 0


def run_evaluate_part(settings: EvaluateSettings) -> int:
    """Part ``part_id`` of ``num_parts`` (see :mod:`nnunet_missingmod.evaluation.parts`): the cases
    ``sorted_cases[part_id::num_parts]``, as ``nnUNetv2_predict`` splits them; what an earlier call of this part
    wrote with the same checkpoints and settings is kept, the rest predicted and scored."""
    from nnunet_missingmod.evaluation import parts
    from nnunet_missingmod.evaluation.scoring import PredictionFolder
    from nnunet_missingmod.inference.nnunet_log import start_log

    scoring, out = settings.scoring, settings.scoring.output
    part_id, num_parts = settings.part_id, settings.num_parts
    name = f"part {part_id} of {num_parts}"
    resolve_device(settings.device)  # before anything is written
    log = start_log(out, "evaluate", settings.verbose, (part_id, num_parts))
    record = parts.settings_record(settings)
    checkpoints = parts.checkpoint_identities(all_model_folders(settings), settings.folds, settings.checkpoint)
    previous = parts.start_part(out, part_id, num_parts, record, checkpoints)  # before the models load
    predictors = load_predictors(settings, log)
    labels = unique_trainer_labels([p.trainer_name for p in predictors])
    check_reference(scoring.reference, report_entries(labels, settings.full_set_model is not None, False))
    regions = resolve_scoring_regions(scoring, os.path.join(settings.model_folders[0], "dataset.json"))
    file_ending = predictors[0].dataset_json["file_ending"]
    all_cases = [complete_cases(predictor, settings.images, settings.labels) for predictor in predictors]
    case_ids = [c.case_id for c in all_cases[0]]
    part_cases = [cases[part_id::num_parts] for cases in all_cases]  # discover_cases sorts, as nnU-Net does
    ids = [c.case_id for c in part_cases[0]]
    if previous is not None and previous.get("all_cases") != case_ids:
        raise MissingModError(f"the cases of {settings.images} changed since {name} started "
                              f"({parts.manifest_path(out, part_id, num_parts)}): evaluate into another folder")
    folders_by_label = {label: {s.name: os.path.join(out, "predictions", label, s.name) for s in settings.subsets}
                        for label in labels}
    entries = [PredictionFolder(label, subset, folder)
               for label in labels for subset, folder in folders_by_label[label].items()]
    if settings.full_set_model:
        for robust in labels[:-1]:
            entries += routed_prediction_folders(robust, folders_by_label[robust], labels[-1],
                                                 folders_by_label[labels[-1]])
    if previous is None:
        parts.clear_part_files(out, part_id, num_parts,
                               [os.path.join(folder, case + file_ending) for folders in folders_by_label.values()
                                for folder in folders.values() for case in ids])
    manifest = {"format": parts.MANIFEST_FORMAT, "part_id": part_id, "num_parts": num_parts, "settings": record,
                "checkpoints": checkpoints, "all_cases": case_ids, "cases": ids, "finished": False,
                "entries": [[e.trainer, str(e.subset), os.path.relpath(e.folder, out)] for e in entries],
                "regions": {region: list(values) for region, values in regions.items()}, "file_ending": file_ending,
                "case_files": {c.case_id: {m: os.path.abspath(f) for m, f in c.files.items()} for c in part_cases[0]}}
    manifest_file = parts.manifest_path(out, part_id, num_parts)
    parts.write_manifest(manifest_file, manifest)
    for label, predictor, cases in zip(labels, predictors, part_cases):
        folders = folders_by_label[label]
        todo = {c.case_id: [s for s in settings.subsets
                            if not os.path.isfile(os.path.join(folders[s.name], c.case_id + file_ending))]
                for c in cases}
        predict_all_subsets(predictor, cases, os.path.join(out, "predictions", label), settings.subsets,
                            label=label, num_processes_preprocessing=settings.num_processes_preprocessing,
                            num_processes_export=settings.num_processes_export, todo=todo,
                            subset_batch=settings.subset_batch)
        n_done = sum(len(v) for v in todo.values())
        print(f"{label}: {name}: {n_done} of {len(cases) * len(settings.subsets)} case x subset prediction(s) "
              f"made ({len(cases) * len(settings.subsets) - n_done} kept from an earlier call)")
    scored = parts.score_part_cases(out, part_id, num_parts, settings.labels, entries, ids, regions, scoring,
                                    file_ending)
    print(f"{name}: {scored} of {len(ids)} case(s) scored ({len(ids) - scored} kept from an earlier call)")
    parts.write_manifest(manifest_file, {**manifest, "finished": True})
    print(f"{name} finished in {out}; once all {num_parts} parts are: nnunet-missingmod evaluate-merge {out}"
          + (f"; nnU-Net's messages in {log}" if log else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """SIGTERM (a scheduler's time limit) stops at once: the prediction being written is removed by its atomic
    writer, so every file left is complete; the exit status is 143, as ``predict``'s."""
    from nnunet_missingmod.faults import Terminated, sigterm_raises
    with sigterm_raises():
        try:
            return run_evaluate(settings_from_args(args))
        except Terminated:
            again = ("it goes on with the predictions and scores of its part not yet written" if args.num_parts > 1
                     else "it predicts again")
            print(f"evaluate: stopped by SIGTERM; every file in {args.output} is complete (the prediction being "
                  f"written was removed), but the evaluation is not: rerun the command ({again})",
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
    p.add_argument("--subset-batch", dest="subset_batch", type=int, default=DEFAULT_SUBSET_BATCH, metavar="K",
                   help="predict K subsets of a case in one sliding window: each tile's K masked copies go through "
                        "the network as one batch (default %(default)s; memory: K tiles' activations and K times a "
                        "case's logits); 1: one sliding window per subset. Segmentations as with 1, up to voxels "
                        "whose class probabilities tie within float rounding")
    add_pipeline_arguments(p)
    add_scoring_arguments(p)
    p.add_argument("-num_parts", type=int, default=1,
                   help="split the cases over this many calls, as nnUNetv2_predict does (sorted cases, every "
                        "num_parts-th from part_id): each call writes its part of OUT, resumes when rerun, and "
                        "'nnunet-missingmod evaluate-merge OUT' writes the report once every part is done")
    p.add_argument("-part_id", type=int, default=0, help="which part this call evaluates (0 .. num_parts-1)")
    p.add_argument("--figures", default=str(DEFAULT_FIGURES), metavar="N|all",
                   help="pictures cases/CASE.png of N cases (default %(default)s: the best, median and worst by the "
                        "first model's full-set WT Dice), 'all', or 0 for none: per model the four sequences, the "
                        "ground truth and the segmentations under the full set, FLAIR+T1ce+T2, FLAIR+T1ce and FLAIR")
    p.set_defaults(func=_evaluate)

