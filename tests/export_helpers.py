"""Checks shared by the export tests: what an exported checkpoint may hold, and its size against the network the
predictor builds from the export."""
from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_missingmod.export.slim import EXPORT_RECORD, INFERENCE_KEYS
from nnunet_missingmod.training.nnunet_copies import CHECKPOINT_CONFIG_KEY

MAX_SIZE_OVER_WEIGHTS = 1.1
"""An exported checkpoint may be at most this many times the saved state dict of the network the predictor builds
(plans, dataset.json and our config in ``init_args`` and ``missingmod_config`` add a few KB)."""


def saved_bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


def predictor_network_bytes(model_folder: Path, fold=0) -> int:
    """Bytes of the saved state dict of the network nnU-Net's predictor builds from ``model_folder`` (weights
    loaded from the fold's checkpoint, as it predicts)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_missingmod.inference.predictor import ensure_trainer_lookup
    ensure_trainer_lookup()
    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (fold,))
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    return saved_bytes(predictor.network.state_dict())


def pickled_modules(checkpoint_path: Path) -> set:
    """The modules whose classes or functions unpickling the checkpoint imports."""
    with zipfile.ZipFile(checkpoint_path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    modules, strings = set(), []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            modules.add(argument.split(" ")[0])
        elif opcode.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        if isinstance(argument, str):
            strings.append(argument)
    return modules


def check_slim_checkpoint(export_folder: Path, source_checkpoint: dict, trainer_name: str, fold=0) -> dict:
    """The exported fold's checkpoint: nnU-Net's inference keys and our config only, the source's weights, at
    most :data:`MAX_SIZE_OVER_WEIGHTS` times the inference network's bytes. Returns it."""
    path = export_folder / f"fold_{fold}" / "checkpoint_final.pth"
    slim = torch.load(path, map_location="cpu", weights_only=False)
    assert set(slim) == ({k for k in INFERENCE_KEYS if k in source_checkpoint} | {CHECKPOINT_CONFIG_KEY})
    assert slim["trainer_name"] == trainer_name
    assert slim[CHECKPOINT_CONFIG_KEY]["exported_from"] == source_checkpoint["trainer_name"]
    assert slim[CHECKPOINT_CONFIG_KEY]["trained_subsets"] == source_checkpoint[CHECKPOINT_CONFIG_KEY]["trained_subsets"]
    assert slim["network_weights"].keys() == source_checkpoint["network_weights"].keys()
    assert all(torch.equal(slim["network_weights"][k], v) for k, v in source_checkpoint["network_weights"].items())
    assert (export_folder / EXPORT_RECORD).is_file()
    if trainer_name == "nnUNetTrainer":  # torch.load must not need this package
        assert not any(m.split(".")[0] == "nnunet_missingmod" for m in pickled_modules(path)), pickled_modules(path)
    size, weights = path.stat().st_size, predictor_network_bytes(export_folder, fold)
    assert size <= MAX_SIZE_OVER_WEIGHTS * weights, f"{path}: {size} bytes, the inference network {weights}"
    return slim


def segmentation(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
