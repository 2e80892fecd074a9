"""Choosing a trained model and the device to run it on: the flags and checks shared by ``predict`` and
``evaluate`` (nnUNetv2_predict's ``-d -p -tr -c -f -chk``, ``-m MODEL_FOLDER``, ``-step_size``, ``-device``,
``-npp``, ``-nps``).

Everything here fails with one :class:`MissingModError` naming the folder, fold or device at fault, before any
model is loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from typing import List

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.nifti_checks import error_reason

DEVICES = ("auto", "cuda", "cpu", "mps")


def add_model_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
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


def _default_from_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """nnUNetv2_predict's ``-npp``/``-nps``: background processes that read and preprocess the next cases and
    export finished predictions while this process predicts."""
    parser.add_argument("-npp", type=int, default=_default_from_env("nnUNet_npp", 3),
                        help="processes that read and preprocess the next cases while one is predicted, as "
                             "nnUNetv2_predict; 0: in this process, one case after the other. Default: $nnUNet_npp "
                             "or 3")
    parser.add_argument("-nps", type=int, default=_default_from_env("nnUNet_nps", 3),
                        help="processes that export finished predictions while the next is predicted, as "
                             "nnUNetv2_predict; 0: in this process. Default: $nnUNet_nps or 3")


def check_pipeline_arguments(args: argparse.Namespace) -> None:
    for flag, value in (("-npp", args.npp), ("-nps", args.nps)):
        if value < 0:
            raise MissingModError(f"{flag} must be 0 (in this process) or a number of processes, got {value}")


def add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    """Sliding-window and device flags of nnUNetv2_predict, and ``--verbose``."""
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step size. Default: 0.5")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("-device", default="auto", choices=DEVICES, metavar="DEVICE",
                        help="auto (default: cuda if PyTorch sees a GPU, else cpu), cuda, cpu or mps")
    parser.add_argument("--verbose", action="store_true",
                        help="show nnU-Net's own messages on the terminal (default: they go to a log file in the "
                             "output folder)")


def resolve_model_folder(args: argparse.Namespace) -> str:
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


def model_folders_from_args(args: argparse.Namespace) -> List[str]:
    """For flags added with ``several=True``: the ``-m`` folders, or one folder per ``-tr`` trainer under
    ``$nnUNet_results`` (with ``-d -c -p``)."""
    if args.m:
        return [resolve_model_folder(_with(args, m=m)) for m in args.m]
    return [resolve_model_folder(_with(args, m=None, tr=tr)) for tr in args.tr]


def _with(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def check_model_folder(folder: str, folds, checkpoint_name: str, what: str = "model folder") -> None:
    """One clear error, before any work, if the model folder lacks its plans, dataset.json or a fold's checkpoint,
    if a checkpoint is truncated, or if the model was not trained on all four sequences. ``what`` names the folder
    in messages (e.g. ``"--full-set-model: model folder"``)."""
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise MissingModError(f"{what} {folder} has no {name}: not a trained nnU-Net model folder")
    missing = [f for f in folds if not os.path.isfile(os.path.join(folder, f"fold_{f}", checkpoint_name))]
    if missing:
        available = sorted(d.name for d in os.scandir(folder) if d.is_dir() and d.name.startswith("fold_")
                           and os.path.isfile(os.path.join(d.path, checkpoint_name)))
        raise MissingModError(f"{what} {folder}: no {checkpoint_name} for fold(s) {', '.join(map(str, missing))}"
                              f" (folds with one: {', '.join(available) or 'none'}); choose folds with -f")
    _check_channel_names(folder, what)
    for fold in folds:
        check_checkpoint_file(os.path.join(folder, f"fold_{fold}", checkpoint_name))


def _check_channel_names(folder: str, what: str) -> None:
    """Every model, ``--full-set-model`` included, reads the four sequences in an order its dataset.json names;
    one trained on fewer (say T1ce and FLAIR only) is refused here, naming the folder, rather than by the
    predictor after the networks are loaded."""
    from nnunet_missingmod.modalities import modalities_from_channel_names
    path = os.path.join(folder, "dataset.json")
    try:
        with open(path, encoding="utf-8") as f:
            channel_names = json.load(f)["channel_names"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MissingModError(f"{what} {folder}: cannot read channel_names from {path}: {error_reason(e)}") \
            from None
    try:
        modalities_from_channel_names(channel_names)
    except MissingModError as e:
        raise MissingModError(f"{what} {folder} cannot be used: {e} (models trained on fewer sequences are not "
                              f"supported)") from None


def check_checkpoint_file(path: str) -> None:
    """A checkpoint that ``torch.save`` wrote (a zip archive) must be complete: a truncated one (a copy or a
    download cut short) is one error naming it, not PyTorch's traceback from deep inside the model loading. The
    archive's directory sits at its end, so reading it finds a cut without reading the weights."""
    with open(path, "rb") as f:
        start = f.read(4)
    if not start:
        raise MissingModError(f"checkpoint {path} is empty")
    if start != b"PK\x03\x04":  # not the zip format: an older torch.save's pickle; left to torch.load
        return
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise MissingModError(f"checkpoint {path} is truncated or corrupt ({error_reason(e)}); copy it again "
                              f"or retrain that fold") from None


def parse_folds(folds) -> list:
    return [f if f == "all" else int(f) for f in folds]


def resolve_device(name: str):
    """The ``torch.device`` for ``-device``: ``auto`` is cuda when PyTorch sees a GPU, else cpu. An explicit
    ``cuda`` or ``mps`` that PyTorch cannot use is one error here, instead of a driver traceback per case later.
    Sets PyTorch's thread count as nnUNetv2_predict does."""
    import torch
    if name not in DEVICES:
        raise MissingModError(f"-device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise MissingModError("-device cuda: PyTorch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
                              "False); use -device cpu, or -device auto to pick the GPU only where there is one")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise MissingModError("-device mps: PyTorch cannot use Apple's MPS here (torch.backends.mps.is_available() "
                              "is False); use -device cpu or -device auto")
    if name == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    elif name == "cuda":
        torch.set_num_threads(1)
    return torch.device(name)
