"""A trained model folder with inference weights only.

A training checkpoint carries what only training needs: the optimiser's momentum, the grad scaler, and our
``missingmod_extra`` (teachers, discriminators, snapshot or EMA teachers, their optimisers). nnU-Net's predictor reads
four keys (``trainer_name``, ``init_args``, ``network_weights``, ``inference_allowed_mirroring_axes``); the export
keeps those, ``current_epoch``, and ``missingmod_config`` (the subsets the model was trained on, which our predictor
reads), with each weight tensor copied into its own storage so that no larger buffer it viewed is saved with it.

nnU-Net finds the network through the trainer class named in the checkpoint. Where that class builds nnU-Net's own
network from the plans (:func:`has_plain_nnunet_network`), the export names ``nnUNetTrainer`` instead, in a folder
``nnUNetTrainer__PLANS__CONFIGURATION``: stock nnU-Net then loads it without this package. The others keep their
trainer's name and need the package wherever they run.

The output is laid out like ``$nnUNet_results`` (``OUT/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION``), or is a
zip with the same paths (what ``nnUNetv2_export_model_to_zip`` writes and
``nnUNetv2_install_pretrained_model_from_zip`` unpacks). A model folder is assembled under a temporary name and
renamed into place, a zip written to a temporary file and renamed; an earlier export is replaced, anything else at
the destination is refused.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from nnunet_missingmod import __version__
from nnunet_missingmod.atomic_io import atomic_output, disk_full_reported, process_is_gone
from nnunet_missingmod.errors import MissingModError

STOCK_TRAINER = "nnUNetTrainer"
EXPORT_RECORD = "missingmod_export.json"
"""Written into every exported model folder: what it was exported from. Its presence marks a destination that a
later export may replace."""
INFERENCE_KEYS = ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes",
                  "current_epoch")
MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
POSTPROCESSING_FILES = ("summary.json", "postprocessing.pkl", "postprocessing.json")
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(staging|replaced)\.tmp$")

Content = Union[bytes, str]
"""What an exported file holds: its bytes, or the path of a source file copied as it is."""


@dataclass
class ExportResult:
    written: str
    """The model folder, or the zip file."""
    source_trainer: str
    trainer_name: str
    """The trainer the exported checkpoints name: ``nnUNetTrainer`` when stock nnU-Net loads them."""
    dataset_name: str
    plans_name: str
    configuration: str
    folds: List[Union[int, str]]
    source_bytes: int
    exported_bytes: int
    files: List[str] = field(default_factory=list)
    """Paths inside the export, relative to its root (``DatasetXXX_NAME/...``)."""

    @property
    def stock_compatible(self) -> bool:
        return self.trainer_name == STOCK_TRAINER


def has_plain_nnunet_network(trainer_class: type) -> bool:
    """Whether ``trainer_class`` predicts with nnU-Net's own network: it inherits ``build_network_architecture``
    from ``nnUNetTrainer`` unchanged (a method network, or presence-conditioned norms, override it)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    for klass in trainer_class.__mro__:
        if "build_network_architecture" in vars(klass):
            return klass is nnUNetTrainer
    return False


def export_model(model_folder: str, output: str, folds: Optional[Sequence[Union[int, str]]] = None,
                 checkpoint_name: str = "checkpoint_final.pth", as_zip: bool = False) -> ExportResult:
    """Export ``folds`` (default: every fold with ``checkpoint_name``) of ``model_folder`` into ``output``: a
    folder laid out like ``$nnUNet_results``, or (``as_zip``) a zip file. Raises :class:`MissingModError` naming
    the folder, fold, file or destination at fault before anything is written."""
    from nnunet_missingmod.inference.model_folder import check_model_folder, parse_folds
    if not os.path.isdir(model_folder):
        raise MissingModError(f"model folder {model_folder} does not exist")
    folds = parse_folds(folds) if folds else _folds_with(model_folder, checkpoint_name)
    check_model_folder(model_folder, folds, checkpoint_name)
    plans = _read_json(os.path.join(model_folder, "plans.json"))
    dataset_json = _read_json(os.path.join(model_folder, "dataset.json"))
    paths = [os.path.join(model_folder, f"fold_{f}", checkpoint_name) for f in folds]
    checkpoints = [_read_checkpoint(path) for path in paths]
    source_trainer, configuration = _one_trainer_and_configuration(checkpoints, paths)
    trainer_class = _trainer_class(source_trainer, paths[0])
    network_keys = _check_weights_fit(trainer_class, plans, configuration, dataset_json, checkpoints, paths)
    stock = has_plain_nnunet_network(trainer_class)
    if stock:
        _check_stock_loads(plans, configuration, dataset_json, network_keys, checkpoints[0], paths[0])
    trainer_name = STOCK_TRAINER if stock else source_trainer
    dataset_name, plans_name = plans.get("dataset_name"), plans.get("plans_name")
    if not dataset_name or not plans_name:
        raise MissingModError(f"{os.path.join(model_folder, 'plans.json')} names no dataset_name or plans_name")
    root = f"{dataset_name}/{trainer_name}__{plans_name}__{configuration}"

    entries: List[Tuple[str, Content]] = []
    for name in MODEL_FILES:
        if os.path.isfile(os.path.join(model_folder, name)):
            entries.append((f"{root}/{name}", os.path.join(model_folder, name)))
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string
    crossval = f"crossval_results_folds_{folds_tuple_to_string(folds)}"
    for name in POSTPROCESSING_FILES:
        if os.path.isfile(os.path.join(model_folder, crossval, name)):
            entries.append((f"{root}/{crossval}/{name}", os.path.join(model_folder, crossval, name)))
    exported_bytes = 0
    for fold, checkpoint in zip(folds, checkpoints):
        data = _slim_checkpoint_bytes(checkpoint, network_keys, trainer_name)
        exported_bytes += len(data)
        entries.append((f"{root}/fold_{fold}/{checkpoint_name}", data))
        summary = os.path.join(model_folder, f"fold_{fold}", "validation", "summary.json")
        if os.path.isfile(summary):
            entries.append((f"{root}/fold_{fold}/validation/summary.json", summary))
    source_bytes = sum(os.path.getsize(p) for p in paths)
    record = {"exported_by": f"nnunet-missingmod export {__version__}",
              "source_model_folder": os.path.abspath(model_folder), "source_trainer": source_trainer,
              "trainer_name": trainer_name, "stock_nnunet_loads_it": stock, "folds": list(folds),
              "checkpoint": checkpoint_name, "source_checkpoint_bytes": source_bytes,
              "exported_checkpoint_bytes": exported_bytes}
    entries.append((f"{root}/{EXPORT_RECORD}", json.dumps(record, indent=2).encode()))

    if as_zip:
        written = _write_zip(output, entries)
    else:
        written = _write_folder(output, root, entries)
    return ExportResult(written=written, source_trainer=source_trainer, trainer_name=trainer_name,
                        dataset_name=dataset_name, plans_name=plans_name, configuration=configuration,
                        folds=list(folds), source_bytes=source_bytes, exported_bytes=exported_bytes,
                        files=[path for path, _ in entries])


# ------------------------------------------------------------------------------------------------ reading
def _folds_with(model_folder: str, checkpoint_name: str) -> List[Union[int, str]]:
    folds = []
    for entry in sorted(os.scandir(model_folder), key=lambda e: e.name):
        match = re.fullmatch(r"fold_(\d+|all)", entry.name)
        if match and entry.is_dir() and os.path.isfile(os.path.join(entry.path, checkpoint_name)):
            folds.append(match[1] if match[1] == "all" else int(match[1]))
    if not folds:
        raise MissingModError(f"model folder {model_folder} has no fold_X/{checkpoint_name}: not a trained model "
                              f"folder, or choose the checkpoint with -chk")
    return sorted(folds, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError) as e:
        raise MissingModError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(content, dict):
        raise MissingModError(f"{path} holds no JSON object")
    return content


def _read_checkpoint(path: str) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a file that is no (complete) checkpoint
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MissingModError(f"{path} cannot be read as a PyTorch checkpoint: {first_line}") from None
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if not isinstance(checkpoint, dict)
               or k not in checkpoint]
    if missing:
        raise MissingModError(f"{path} is not an nnU-Net checkpoint: it lacks {', '.join(missing)}")
    weights = checkpoint["network_weights"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise MissingModError(f"{path}: network_weights is not a state dict of tensors")
    if not isinstance(checkpoint["init_args"], dict) or "configuration" not in checkpoint["init_args"]:
        raise MissingModError(f"{path}: init_args names no configuration")
    return checkpoint


def _one_trainer_and_configuration(checkpoints: Sequence[dict], paths: Sequence[str]) -> Tuple[str, str]:
    trainer, configuration = checkpoints[0]["trainer_name"], checkpoints[0]["init_args"]["configuration"]
    for checkpoint, path in zip(checkpoints[1:], paths[1:]):
        theirs = (checkpoint["trainer_name"], checkpoint["init_args"]["configuration"])
        if theirs != (trainer, configuration):
            raise MissingModError(f"{path} was trained by {theirs[0]} ({theirs[1]}) but {paths[0]} by {trainer} "
                                  f"({configuration}): export the folds of one model")
    return trainer, configuration


def _trainer_class(name: str, path: str) -> type:
    """nnU-Net's lookup by name (ours through ``nnUNet_extTrainer``, as the predictor resolves it), quietly."""
    from nnunet_missingmod.inference.predictor import ensure_trainer_lookup
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    ensure_trainer_lookup()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every folder it searches
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        raise MissingModError(f"{path} names trainer {name}, which neither nnU-Net, nnunet-missingmod nor "
                              f"nnUNet_extTrainer defines") from None


def _build_network(build, plans: dict, configuration: str, dataset_json: dict):
    """The network ``build`` (a ``build_network_architecture``) makes, as nnU-Net's predictor calls it; on the
    meta device when the builder allows it (shapes only, no memory)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    arguments = (plans_manager, configuration_manager,
                 determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
                 plans_manager.get_label_manager(dataset_json).num_segmentation_heads, False)
    try:
        with torch.device("meta"):
            return build(*arguments)
    except Exception:  # a builder that computes with its weights needs real ones
        return build(*arguments)


def _shapes(network) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def _weights(checkpoint: dict, keys) -> Dict[str, torch.Tensor]:
    from nnunet_missingmod.training.teacher import plain_weights
    return plain_weights(checkpoint["network_weights"], keys)


def _check_weights_fit(trainer_class: type, plans: dict, configuration: str, dataset_json: dict,
                       checkpoints: Sequence[dict], paths: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """The network's parameter shapes, once every checkpoint's weights were found to fit it exactly (what the
    predictor's strict load needs)."""
    try:
        expected = _shapes(_build_network(trainer_class.build_network_architecture, plans, configuration,
                                          dataset_json))
    except Exception as e:
        raise MissingModError(f"{trainer_class.__name__} cannot build its network from the model folder's plans.json "
                              f"({configuration}): {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
                              ) from None
    for checkpoint, path in zip(checkpoints, paths):
        _compare_shapes(expected, _weights(checkpoint, expected), path,
                        f"the network {trainer_class.__name__} builds from plans.json")
    return expected


def _compare_shapes(expected: Dict[str, Tuple[int, ...]], weights: Dict[str, torch.Tensor], path: str,
                    what: str) -> None:
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k])
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)) if keys]
    if problems:
        raise MissingModError(f"{path}: network_weights do not fit {what} ({'; '.join(problems)})")


def _check_stock_loads(plans: dict, configuration: str, dataset_json: dict, expected: Dict[str, Tuple[int, ...]],
                       checkpoint: dict, path: str) -> None:
    """What stock nnU-Net will build for ``nnUNetTrainer`` takes these weights, and ``init_args`` are its
    constructor's."""
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    stock = _shapes(_build_network(nnUNetTrainer.build_network_architecture, plans, configuration, dataset_json))
    _compare_shapes(stock, _weights(checkpoint, expected), path, "stock nnUNetTrainer's network")
    accepted = set(inspect.signature(nnUNetTrainer.__init__).parameters) - {"self"}
    extra = sorted(set(checkpoint["init_args"]) - accepted)
    if extra:
        raise MissingModError(f"{path}: init_args {', '.join(extra)} are not arguments of nnUNetTrainer")


def _slim_checkpoint_bytes(checkpoint: dict, network_keys, trainer_name: str) -> bytes:
    from nnunet_missingmod.training.nnunet_copies import CHECKPOINT_CONFIG_KEY
    slim = {k: checkpoint[k] for k in INFERENCE_KEYS if k in checkpoint}
    slim["network_weights"] = _compact(_weights(checkpoint, network_keys))
    source_trainer = checkpoint["trainer_name"]
    slim["trainer_name"] = trainer_name
    config = checkpoint.get(CHECKPOINT_CONFIG_KEY)
    if isinstance(config, dict):  # which subsets were trained: our predictor reads it under the stock name too
        # as JSON values: an object of this package in the pickle would make torch.load need the package
        slim[CHECKPOINT_CONFIG_KEY] = json.loads(json.dumps({**config, "exported_from": source_trainer}, default=str))
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    return buffer.getvalue()


def _compact(weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Each tensor copied into a storage of its own size (a view would save the whole buffer it looks into), one
    copy per tensor that several names share (nnU-Net's decoder holds the encoder: its weights appear twice)."""
    copies: Dict[tuple, torch.Tensor] = {}
    compact = {}
    for name, tensor in weights.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
               tensor.dtype)
        if key not in copies:
            copies[key] = tensor.detach().cpu().clone()
        compact[name] = copies[key]
    return compact


# ------------------------------------------------------------------------------------------------ writing
def _is_earlier_export_zip(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/{EXPORT_RECORD}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _write_zip(output: str, entries: Sequence[Tuple[str, Content]]) -> str:
    if os.path.isdir(output):
        raise MissingModError(f"--zip: {output} is a folder; name the zip file to write")
    if os.path.exists(output) and not _is_earlier_export_zip(output):
        raise MissingModError(f"{output} exists and is not a zip written by nnunet-missingmod export; remove it or "
                              f"choose another name")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise MissingModError(f"folder {parent} (of {output}) does not exist")
    with atomic_output(output) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in entries:
                if isinstance(content, bytes):
                    archive.writestr(name, content)
                else:
                    archive.write(content, name)
    return output


def _write_folder(output: str, root: str, entries: Sequence[Tuple[str, Content]]) -> str:
    target = os.path.join(output, *root.split("/"))
    if os.path.exists(target) and not os.path.isfile(os.path.join(target, EXPORT_RECORD)):
        raise MissingModError(f"{target} exists and is not an earlier export (it has no {EXPORT_RECORD}); remove "
                              f"it or choose another OUT")
    if os.path.isfile(output):
        raise MissingModError(f"{output} is a file; name a folder (or pass --zip to write a zip)")
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent, name)
    staging = os.path.join(parent, f".{name}.{os.getpid()}.staging.tmp")
    replaced = os.path.join(parent, f".{name}.{os.getpid()}.replaced.tmp")
    try:
        with disk_full_reported(target):
            for relative, content in entries:
                path = os.path.join(staging, *relative.split("/")[len(root.split("/")):])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if isinstance(content, bytes):
                    with open(path, "wb") as f:
                        f.write(content)
                else:
                    shutil.copyfile(content, path)
        if os.path.exists(target):  # an earlier export: swapped out, then removed
            os.rename(target, replaced)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
    return target


def _remove_stale_staging(parent: str, name: str) -> None:
    """Remove what an export of ``name`` killed while it wrote left in ``parent`` (its process is gone)."""
    for entry in os.scandir(parent):
        match = _STAGING.match(entry.name)
        if match and match["name"] == name and int(match["pid"]) != os.getpid() and process_is_gone(
                int(match["pid"]), active_at=entry.stat(follow_symlinks=False).st_mtime):
            shutil.rmtree(entry.path, ignore_errors=True)
