"""The enhancing-tumour volume rule: a case whose predicted ET is smaller than a threshold gets that ET relabelled as
necrosis (the label that is in TC but not in ET), so WT and TC are unchanged and ET becomes empty.

Why: under the BraTS convention a tumour without ET scores ET Dice 1 when the prediction has none and 0 for a single
false-positive voxel, so a few stray ET voxels cost a whole case. Isensee et al.'s nnU-Net entry to BraTS 2020
("nnU-Net for Brain Tumor Segmentation", BrainLes 2020) removes them this way, with the threshold
chosen on the cross-validation predictions of the training set; :func:`fit_et_rule` does that choice on any
prediction folders with their ground truth (e.g. nnU-Net's ``fold_X/validation``). The threshold is a volume in
ml, so a rule chosen at one spacing means the same at another.

The choice: the threshold that maximises the mean whole-volume ET Dice over the fit cases; on a tie the smallest, so
a rule that changes nothing on the fit cases is "off" (threshold 0), as nnU-Net's own post-processing keeps a step
only when it helps.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.metrics import EMPTY_BOTH_DICE, ONE_EMPTY_DICE, dice

RULE_FORMAT = "nnunet-missingmod et-rule 1"


@dataclass(frozen=True)
class EtRule:
    """Relabel a case's ET (``et_label``) as ``replacement_label`` when its total volume is below ``min_volume_ml``
    (0: the rule is off)."""

    min_volume_ml: float
    et_label: int
    replacement_label: int
    # how it was chosen: fit cases, mean ET Dice without and with the rule, the candidates tried
    fit: Dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class FitCase:
    """One case to fit on: predicted and reference label maps of one shape, and the volume of one voxel in ml."""

    name: str
    prediction: np.ndarray
    reference: np.ndarray
    voxel_ml: float


def et_volume_ml(segmentation: np.ndarray, voxel_ml: float, et_label: int) -> float:
    return float(np.count_nonzero(segmentation == et_label)) * voxel_ml


def apply_et_rule(segmentation: np.ndarray, voxel_ml: float, rule: EtRule) -> np.ndarray:
    """``segmentation`` (label map, any shape) with its ET relabelled if the ET volume is below the rule's
    threshold; the input is never modified (a copy is returned when something changes)."""
    volume = et_volume_ml(segmentation, voxel_ml, rule.et_label)
    if volume == 0 or volume >= rule.min_volume_ml:
        return segmentation
    relabelled = segmentation.copy()
    relabelled[segmentation == rule.et_label] = rule.replacement_label
    return relabelled


def _et_dice(prediction: np.ndarray, reference: np.ndarray, et_label: int) -> float:
    return dice(prediction == et_label, reference == et_label)


def fit_et_rule(cases: Sequence[FitCase], et_label: int, replacement_label: int) -> EtRule:
    """The rule whose threshold maximises the mean ET Dice over ``cases`` (ties: the smallest threshold).

    Candidates are 0 (off) and, for each case with predicted ET, a threshold just above its volume (the smallest
    that relabels it), so every distinct outcome on the fit cases is tried once.
    """
    if not cases:
        raise MissingModError("et-rule: no case to fit the rule on")
    volumes = [et_volume_ml(c.prediction, c.voxel_ml, et_label) for c in cases]
    dice_kept = [_et_dice(c.prediction, c.reference, et_label) for c in cases]
    # relabelling removes all of a case's predicted ET: its Dice becomes that of an empty prediction
    dice_removed = [ONE_EMPTY_DICE if np.any(c.reference == et_label) else EMPTY_BOTH_DICE for c in cases]
    candidates = [0.0] + sorted({math.nextafter(v, math.inf) for v in volumes if v > 0})
    table = []
    for threshold in candidates:
        per_case = [removed if 0 < v < threshold else kept
                    for v, kept, removed in zip(volumes, dice_kept, dice_removed)]
        table.append({"min_volume_ml": threshold, "mean_et_dice": float(np.mean(per_case)),
                      "cases_relabelled": sum(0 < v < threshold for v in volumes)})
    best = max(table, key=lambda row: (row["mean_et_dice"], -row["min_volume_ml"]))
    fit = {"cases": len(cases), "mean_et_dice_without_rule": table[0]["mean_et_dice"],
           "mean_et_dice_with_rule": best["mean_et_dice"], "cases_relabelled": best["cases_relabelled"],
           "candidates": table}
    return EtRule(best["min_volume_ml"], et_label, replacement_label, fit)


def et_labels_from_regions(regions: Mapping[str, Tuple[int, ...]], source: str) -> Tuple[int, int]:
    """(ET label, replacement label) from the scored regions: ET must be one label, and TC minus ET one label (the
    necrosis of the BraTS conventions, label 2 in our converted datasets)."""
    if "ET" not in regions or "TC" not in regions:
        raise MissingModError(f"{source}: the ET rule needs regions ET and TC, found {', '.join(regions) or 'none'}")
    et, core_only = tuple(regions["ET"]), sorted(set(regions["TC"]) - set(regions["ET"]))
    if len(et) != 1 or len(core_only) != 1:
        raise MissingModError(f"{source}: the ET rule needs ET to be one label and TC to add exactly one label to it "
                              f"(e.g. TC=2,3 ET=3); found ET={list(et)} TC={list(regions['TC'])}")
    return int(et[0]), int(core_only[0])


def save_et_rule(rule: EtRule, path: str) -> None:
    from nnunet_missingmod.atomic_io import atomic_write_text
    atomic_write_text(path, json.dumps({"format": RULE_FORMAT, **asdict(rule)}, indent=1) + "\n")


def load_et_rule(path: str) -> EtRule:
    """The rule in ``path`` (written by :func:`save_et_rule`); one error naming the file otherwise."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingModError(f"ET rule file not found: {path} (make one with 'nnunet-missingmod et-rule fit')") \
            from None
    except (OSError, ValueError) as e:
        raise MissingModError(f"cannot read the ET rule {path}: {e}") from None
    if not isinstance(content, dict) or content.get("format") != RULE_FORMAT:
        raise MissingModError(f"{path} is not an ET rule written by 'nnunet-missingmod et-rule fit' (no "
                              f"\"format\": \"{RULE_FORMAT}\")")
    try:
        rule = EtRule(float(content["min_volume_ml"]), int(content["et_label"]), int(content["replacement_label"]),
                      dict(content.get("fit", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise MissingModError(f"{path}: not a valid ET rule ({type(e).__name__}: {e})") from None
    if not rule.min_volume_ml >= 0 or math.isinf(rule.min_volume_ml):
        raise MissingModError(f"{path}: min_volume_ml must be a finite volume >= 0, got {rule.min_volume_ml}")
    return rule


# ----------------------------------------------------------------------------------------------- label-map files
def _voxel_ml(spacing_mm: Sequence[float]) -> float:
    return float(np.prod(spacing_mm)) / 1000.0


def fit_et_rule_on_folders(prediction_folders: Sequence[str], reference_folder: str,
                           regions: Mapping[str, Tuple[int, ...]], file_ending: str = ".nii.gz",
                           source: str = "regions") -> EtRule:
    """:func:`fit_et_rule` on every prediction of ``prediction_folders`` (e.g. the five ``fold_X/validation``
    folders) against the file of the same name in ``reference_folder``."""
    from nnunet_missingmod.evaluation.scoring import label_values_of_regions, list_label_files, read_label_image
    et_label, replacement = et_labels_from_regions(regions, source)
    labels = label_values_of_regions(regions)
    references = list_label_files(reference_folder, file_ending)
    cases: List[FitCase] = []
    for folder in prediction_folders:
        predictions = list_label_files(folder, file_ending)
        if not predictions:
            raise MissingModError(f"no {file_ending} predictions in {folder}")
        for name, path in predictions.items():
            if name not in references:
                raise MissingModError(f"{path}: no reference segmentation {name}{file_ending} in {reference_folder}")
            prediction, spacing = read_label_image(path, "prediction", labels)
            reference, _ = read_label_image(references[name], "reference", labels)
            if prediction.shape != reference.shape:
                raise MissingModError(f"{path}: shape {prediction.shape} differs from its reference "
                                      f"{references[name]} {reference.shape}")
            cases.append(FitCase(f"{folder}/{name}", prediction, reference, _voxel_ml(spacing)))
    return fit_et_rule(cases, et_label, replacement)


def apply_et_rule_to_folder(rule: EtRule, input_folder: str, output_folder: str, file_ending: str = ".nii.gz",
                            progress: bool = False) -> Dict[str, bool]:
    """Write every label map of ``input_folder`` to ``output_folder`` (same name and geometry) with the rule
    applied; the input is never modified and each file is written atomically. Returns {case: relabelled}."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from nnunet_missingmod.evaluation.scoring import list_label_files
    from nnunet_missingmod.atomic_io import atomic_output
    from nnunet_missingmod.nifti_checks import read_label_map
    if os.path.abspath(input_folder) == os.path.abspath(output_folder):
        raise MissingModError(f"output folder {output_folder} must differ from the input folder: the rule is never "
                              f"applied in place")
    files = list_label_files(input_folder, file_ending)
    if not files:
        raise MissingModError(f"no {file_ending} segmentations in {input_folder}")
    os.makedirs(output_folder, exist_ok=True)
    changed = {}
    for name, path in tqdm(files.items(), desc="et-rule", disable=not progress):
        segmentation, image = read_label_map(path, "segmentation")  # the image's geometry is copied
        result = apply_et_rule(segmentation, _voxel_ml(image.GetSpacing()), rule)
        changed[name] = result is not segmentation
        out = sitk.GetImageFromArray(result)
        out.CopyInformation(image)
        with atomic_output(os.path.join(output_folder, os.path.basename(path))) as temporary:
            sitk.WriteImage(out, temporary)
    return changed
