"""``nnunet-missingmod predict``: nnUNetv2_predict's flags, for cases with any subset of the sequences."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.inference.model_folder import (
    add_model_arguments, add_pipeline_arguments, add_prediction_arguments, check_model_folder,
    check_pipeline_arguments, parse_folds, resolve_device, resolve_model_folder)


def _predict(args) -> int:
    from nnunet_missingmod.atomic_io import DiskFullError
    from nnunet_missingmod.faults import Terminated, sigterm_raises
    run = _Run()
    with sigterm_raises():
        try:
            return _predict_folder(args, run)
        except Terminated as stop:
            done = len(getattr(stop, "results", []))
            remaining = getattr(stop, "remaining", None)
            print("predict: stopped by SIGTERM" + (f" after {done} case(s), {remaining} not predicted" if remaining
                                                     is not None else " before any case was predicted")
                  + f"; every file in {args.o} is complete{run.unrecorded_note(args.o)}. Rerun with "
                    f"--continue_prediction to predict the rest", file=sys.stderr)
            return Terminated.exit_code
        except DiskFullError as e:
            raise DiskFullError(f"{e}. {run.progress_note(args.o)}") from None


@dataclass
class _Run:
    """What the messages after an interruption need to know of the run: the ending of its segmentations (known
    once the model is loaded)."""
    file_ending: Optional[str] = None

    def _folder_state(self, folder: str) -> Tuple[int, List[str]]:
        """(cases in ``folder`` with a segmentation and its sidecar, segmentations without a sidecar)."""
        from nnunet_missingmod.inference.predictor import SIDECAR_SUFFIX
        if self.file_ending is None or not os.path.isdir(folder):
            return 0, []
        names = set(os.listdir(folder))
        segmentations = sorted(n for n in names if n.endswith(self.file_ending) and not n.startswith("."))
        recorded = [n for n in segmentations if n[:-len(self.file_ending)] + SIDECAR_SUFFIX in names]
        return len(recorded), [n for n in segmentations if n not in recorded]

    def unrecorded_note(self, folder: str) -> str:
        """A segmentation whose export finished while its sidecar was not written yet: complete, but the rerun
        counts it as not predicted (it predicts it again), which the user should not mistake for a lost file."""
        _, unrecorded = self._folder_state(folder)
        if not unrecorded:
            return ""
        from nnunet_missingmod.inference.predictor import SIDECAR_SUFFIX
        names = ", ".join(unrecorded[:3]) + (f" and {len(unrecorded) - 3} more" if len(unrecorded) > 3 else "")
        return (f", but {names} {'has' if len(unrecorded) == 1 else 'have'} no {SIDECAR_SUFFIX} sidecar yet (the "
                f"run stopped between the two files), so --continue_prediction predicts "
                f"{'it' if len(unrecorded) == 1 else 'them'} again")

    def progress_note(self, folder: str) -> str:
        if self.file_ending is None:  # stopped before the model was loaded: no case of this run is written
            return f"the complete cases in {folder} are kept: --continue_prediction predicts the rest"
        complete, _ = self._folder_state(folder)
        return (f"{complete} case(s) in {folder} are complete (segmentation and sidecar){self.unrecorded_note(folder)}"
                f": --continue_prediction keeps them and predicts the rest")


def _predict_folder(args, run: _Run) -> int:
    from nnunet_missingmod.atomic_io import claim_folder
    from nnunet_missingmod.modalities import parse_subset
    check_pipeline_arguments(args)
    if args.part_id >= args.num_parts:
        raise MissingModError(f"-part_id {args.part_id} must be smaller than -num_parts {args.num_parts}")
    requested = parse_subset(args.modalities) if args.modalities is not None else None  # "" is refused there
    device = resolve_device(args.device)  # before anything is written
    part = (args.part_id, args.num_parts) if args.num_parts > 1 else None
    claim_folder(args.o, "predict", part)  # a second job on the folder refuses now, before nnU-Net loads
    from nnunet_missingmod.inference.nnunet_log import start_log
    model_folder = resolve_model_folder(args)
    folds = parse_folds(args.f)
    check_model_folder(model_folder, folds, args.chk)
    full_set_folder = resolve_full_set_model_folder(args.full_set_model, folds, args.chk)
    log = start_log(args.o, "predict", args.verbose, part)
    predictor = _predictor(args, device, model_folder, folds, log)
    run.file_ending = predictor.dataset_json["file_ending"]
    if full_set_folder:
        predictor.use_full_set_model(_predictor(args, device, full_set_folder, folds, log))
    if not predictor.trained_for_missing_modalities:
        print(f"warning: {predictor.trainer_name} was not trained with modality dropout; predictions with missing "
              f"sequences will be poor")
    results = predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                           overwrite=not args.continue_prediction,
                                           num_processes_preprocessing=args.npp,
                                           num_processes_segmentation_export=args.nps,
                                           num_parts=args.num_parts, part_id=args.part_id, modalities=requested)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} cases predicted into {args.o}"
          + (f"; {len(failed)} failed: {', '.join(r.case for r in failed)}" if failed else "")
          + (f"; nnU-Net's messages in {log}" if log else ""))
    return 1 if failed else 0


def resolve_full_set_model_folder(folder: Optional[str], folds, checkpoint_name: str) -> Optional[str]:
    """``--full-set-model``: checked like ``-m`` (same folds and checkpoint), before any model is loaded."""
    if folder is None:
        return None
    if not os.path.isdir(folder):
        raise MissingModError(f"--full-set-model: model folder {folder} does not exist")
    check_model_folder(folder, folds, checkpoint_name, what="--full-set-model: model folder")
    return folder


def _predictor(args, device, model_folder: str, folds, log: Optional[str]):
    from nnunet_missingmod.inference.nnunet_log import nnunet_output_to
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    with nnunet_output_to(log):  # nnU-Net prints while it builds the predictor and loads the checkpoint
        predictor = MissingModalityPredictor(tile_step_size=args.step_size, use_gaussian=True,
                                             use_mirroring=not args.disable_tta,
                                             perform_everything_on_device=not args.not_on_device,
                                             device=device, verbose=args.verbose,
                                             allow_tqdm=not args.disable_progress_bar)
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
    predictor.nnunet_log = log
    return predictor


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict cases with any subset of T1, T1ce, T2, FLAIR",
        description="nnUNetv2_predict for cases where sequences are missing. Input: a folder in nnU-Net raw layout "
                    "(CASE_0000.nii.gz ..., files may be absent) or BraTS layout (CASE_t1/_t1ce/_t2/_flair or "
                    "-t1n/-t1c/-t2w/-t2f, optionally one folder per case). Absent sequences are zero after "
                    "normalisation, as in training. Writes CASE.nii.gz and CASE.modalities.json per case, and "
                    "nnU-Net's own messages to OUTPUT/predict.log (--verbose: to the terminal); exits 1 if any "
                    "case failed.")
    p.add_argument("-i", required=True, help="input folder")
    p.add_argument("-o", required=True, help="output folder (created if needed)")
    add_model_arguments(p)
    p.add_argument("--full-set-model", metavar="MODEL_FOLDER",
                   help="a trained model folder (as -m; same -f and -chk) for the cases that have every sequence it "
                        "needs: a complete scan gets exactly that model's segmentation (e.g. stock nnU-Net's) at its "
                        "cost; every other case goes to the robust model. The sidecar names the model")
    p.add_argument("--modalities", help="use only these sequences, e.g. T1ce,FLAIR or t1c+t2f (any alias), "
                                        "even when others exist")
    add_prediction_arguments(p)
    p.add_argument("--save_probabilities", action="store_true", help="also write CASE.npz and CASE.pkl")
    p.add_argument("--continue_prediction", action="store_true",
                   help="skip cases whose segmentation and sidecar already exist")
    add_pipeline_arguments(p)
    p.add_argument("-num_parts", type=int, default=1, help="number of parallel calls splitting the cases")
    p.add_argument("-part_id", type=int, default=0, help="which part this call predicts (0 .. num_parts-1)")
    p.add_argument("--disable_progress_bar", action="store_true")
    p.add_argument("--not_on_device", action="store_true", help="do not keep everything on the GPU")
    p.set_defaults(func=_predict)
