"""``nnunet-missingmod predict``: nnUNetv2_predict's flags, for cases with any subset of the sequences."""
from __future__ import annotations

import os

from nnunet_missingmod.errors import MissingModError


def _default_from_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def add_model_arguments(parser, several: bool = False) -> None:
    """The model-selecting flags of nnUNetv2_predict (``-d -p -tr -c -f -chk``) plus ``-m MODEL_FOLDER``;
    ``several``: ``-tr`` and ``-m`` take one or more values (to compare models)."""
    many = {"nargs": "+"} if several else {}
    parser.add_argument("-d", help="dataset name or id (with -c, -tr, -p; or use -m)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-tr", default=["nnUNetTrainer"] if several else "nnUNetTrainer", **many,
                        help="trainer class" + ("es to compare" if several else "") + ". Default: nnUNetTrainer")
    parser.add_argument("-c", help="configuration, e.g. 3d_fullres")
    parser.add_argument("-m", **many, help="trained model folder" + ("s" if several else "") +
                        " (as nnUNetv2_predict_from_modelfolder), instead of -d/-c/-tr/-p")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to ensemble. Default: 0 1 2 3 4")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name. Default: checkpoint_final.pth")


def resolve_model_folder(args) -> str:
    """The model folder named by ``-m``, or by ``-d -tr -p -c`` under ``$nnUNet_results``."""
    if args.m:
        if not os.path.isdir(args.m):
            raise MissingModError(f"model folder {args.m} does not exist")
        return args.m
    if not args.d or not args.c:
        raise MissingModError("name the model with -d DATASET -c CONFIGURATION [-tr TRAINER] [-p PLANS], or -m FOLDER")
    from nnunetv2.paths import nnUNet_results
    if not nnUNet_results.is_set():
        raise MissingModError("nnUNet_results is not set: export it, or pass the model folder with -m")
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        folder = get_output_folder(args.d, args.tr, args.p, args.c)
    except RuntimeError as e:
        raise MissingModError(f"dataset {args.d}: {e}") from None
    if not os.path.isdir(folder):
        raise MissingModError(f"no trained model at {folder} (check -d, -tr, -p, -c)")
    return folder


def check_model_folder(folder: str, folds, checkpoint_name: str) -> None:
    """One clear error, before any work, if the model folder lacks its plans, dataset.json or a fold's checkpoint."""
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise MissingModError(f"model folder {folder} has no {name}: not a trained nnU-Net model folder")
    missing = [f for f in folds if not os.path.isfile(os.path.join(folder, f"fold_{f}", checkpoint_name))]
    if missing:
        available = sorted(d.name for d in os.scandir(folder) if d.is_dir() and d.name.startswith("fold_")
                           and os.path.isfile(os.path.join(d.path, checkpoint_name)))
        raise MissingModError(f"model folder {folder}: no {checkpoint_name} for fold(s) {', '.join(map(str, missing))}"
                              f" (folds with one: {', '.join(available) or 'none'}); choose folds with -f")


def parse_folds(folds):
    return [f if f == "all" else int(f) for f in folds]


def make_device(name: str):
    import torch
    if name not in ("cpu", "cuda", "mps"):
        raise MissingModError(f"-device must be cpu, cuda or mps, got {name!r}")
    if name == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    elif name == "cuda":
        torch.set_num_threads(1)
    return torch.device(name)


def add_prediction_arguments(parser) -> None:
    """Sliding-window and device flags of nnUNetv2_predict."""
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step size. Default: 0.5")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("-device", default="cuda", help="cuda (default), cpu or mps")


def _predict(args) -> int:
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    from nnunet_missingmod.modalities import parse_subset
    if args.part_id >= args.num_parts:
        raise MissingModError(f"-part_id {args.part_id} must be smaller than -num_parts {args.num_parts}")
    modalities = parse_subset(args.modalities).modalities if args.modalities else None
    model_folder = resolve_model_folder(args)
    check_model_folder(model_folder, parse_folds(args.f), args.chk)
    predictor = MissingModalityPredictor(tile_step_size=args.step_size, use_gaussian=True,
                                         use_mirroring=not args.disable_tta,
                                         perform_everything_on_device=not args.not_on_device,
                                         device=make_device(args.device), verbose=args.verbose,
                                         allow_tqdm=not args.disable_progress_bar)
    predictor.initialize_from_trained_model_folder(model_folder, parse_folds(args.f), checkpoint_name=args.chk)
    if not predictor.trained_for_missing_modalities:
        print(f"warning: {predictor.trainer_name} was not trained with modality dropout; predictions with missing "
              f"sequences will be poor")
    results = predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                           overwrite=not args.continue_prediction,
                                           num_parts=args.num_parts, part_id=args.part_id, modalities=modalities)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} cases predicted into {args.o}"
          + (f"; {len(failed)} failed: {', '.join(r.case for r in failed)}" if failed else ""))
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict cases with any subset of T1, T1ce, T2, FLAIR",
        description="nnUNetv2_predict for cases where sequences are missing. Input: a folder in nnU-Net raw layout "
                    "(CASE_0000.nii.gz ..., files may be absent) or BraTS layout (CASE_t1/_t1ce/_t2/_flair or "
                    "-t1n/-t1c/-t2w/-t2f, optionally one folder per case). Absent sequences are zero after "
                    "normalisation, as in training. Writes CASE.nii.gz and CASE.modalities.json per case; exits 1 "
                    "if any case failed.")
    p.add_argument("-i", required=True, help="input folder")
    p.add_argument("-o", required=True, help="output folder (created if needed)")
    add_model_arguments(p)
    p.add_argument("--modalities", help="use only these sequences, e.g. T1ce,FLAIR or t1c+t2f (any alias), "
                                        "even when others exist")
    add_prediction_arguments(p)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--save_probabilities", action="store_true", help="also write CASE.npz and CASE.pkl")
    p.add_argument("--continue_prediction", action="store_true",
                   help="skip cases whose segmentation and sidecar already exist")
    p.add_argument("-npp", type=int, default=_default_from_env("nnUNet_npp", 3),
                   help="accepted for compatibility with nnUNetv2_predict; cases are preprocessed one at a time")
    p.add_argument("-nps", type=int, default=_default_from_env("nnUNet_nps", 3),
                   help="accepted for compatibility with nnUNetv2_predict; cases are exported one at a time")
    p.add_argument("-num_parts", type=int, default=1, help="number of parallel calls splitting the cases")
    p.add_argument("-part_id", type=int, default=0, help="which part this call predicts (0 .. num_parts-1)")
    p.add_argument("--disable_progress_bar", action="store_true")
    p.add_argument("--not_on_device", action="store_true", help="do not keep everything on the GPU")
    p.set_defaults(func=_predict)
