"""Lesion-wise Dice and HD95 of one region, following the BraTS 2023 challenges' scorer, or the BraTS 2024/25 glioma
scorer's one-to-one matching (``gli2025``, :mod:`.lesionwise_gli2025`).

Rules, as read in rachitsaluja/BraTS-2023-Metrics ``metrics.py`` (commit 43c9052; AGPL, read, not copied):

* ground-truth (GT) and predicted components are 26-connected (``cc3d.connected_components(connectivity=26)``);
* the GT mask is dilated ``dilation`` times with ``generate_binary_structure(3, 2)`` (the 18-connected cross, not
  the full 3×3×3 cube); GT components that fall into one 26-connected component of the dilated GT are one lesion;
* every predicted component that touches a lesion's dilated region is a true positive (TP) of that lesion; the
  lesion's Dice and HD95 are taken between the lesion and the union of those components; a lesion with none is a
  false negative (Dice 0, HD95 :data:`MISSED_LESION_HD95` = 374 mm, the scorer's ``replace(np.inf, 374)``);
* predicted components touching no lesion are false positives (FP), Dice 0 and HD95 374 each;
* lesions whose volume (voxels × voxel volume, mm³) is ``<= min_volume`` are left out of the score and of the
  TP/FN counts (components touching them are neither TP-counted nor FP);
* lesion-wise Dice = Σ lesion Dice / (kept lesions + FP); HD95 likewise with 374 per FP; no kept lesion and no FP
  (e.g. empty GT and empty prediction) gives Dice 1, HD95 0.

Per-challenge parameters (same file, ``get_LesionWiseResults``): GLI, SSA, PED: dilation 3, min volume 50;
MEN: dilation 1, min volume 50; MET: dilation 1, min volume 2. ``gli2025`` is the 2024/25 glioma protocol: no
dilation, no size threshold, one-to-one matching (:mod:`.lesionwise_gli2025`).

The per-lesion HD95 is the scorer's own: DeepMind surface-distance's ``compute_robust_hausdorff(..., 95)`` on the
lesion and its matched components with the image spacing, i.e.
:func:`nnunet_missingmod.evaluation.surface.surfel_hausdorff` (surface elements weighted by area, nearest rank),
whatever whole-volume ``--hd95-variant`` is chosen. Both masks are non-empty there: a missed lesion never reaches
it (374 mm, as the scorer's ``inf`` replaced by 374).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage

from nnunet_missingmod.evaluation.lesionwise_gli2025 import NO_MATCH_HD95, one_to_one_lesion_scores
from nnunet_missingmod.evaluation.metrics import dice, union_bounding_box
from nnunet_missingmod.evaluation.surface import surfel_hausdorff

MISSED_LESION_HD95 = 374.0
"""HD95 (mm) of a missed lesion or a false-positive component in the BraTS 2023 scorer."""


DILATION_MERGE = "dilation_merge"
"""Matching of the 2023 scorers: GT lesions merged by dilation, every touching predicted component counts."""
ONE_TO_ONE = "one_to_one"
"""Matching of the 2024/25 glioma scorer (panoptica): one predicted component per GT lesion, largest total Dice."""


@dataclass(frozen=True)
class LesionProtocol:
    """Parameters of one BraTS challenge's lesion-wise scorer."""
    name: str
    dilation: int
    min_volume: float  # mm³; lesions with volume <= min_volume are ignored
    challenge: str = ""  # what the challenge segments, for help texts and reports
    matching: str = DILATION_MERGE  # or ONE_TO_ONE (then dilation and min_volume are 0)

    def describe(self) -> str:
        """``BraTS-GLI (adult glioma): GT dilated 3 times, lesions of at most 50 mm³ ignored``."""
        if self.matching == ONE_TO_ONE:
            return (f"{self.name} ({self.challenge}): one-to-one matching of 26-connected lesions (largest total "
                    "Dice), no dilation, no size threshold; mean over matched lesions")
        return (f"{self.name} ({self.challenge}): GT dilated {self.dilation} time{'s' if self.dilation > 1 else ''}, "
                f"lesions of at most {self.min_volume:g} mm³ ignored")


LESION_PROTOCOLS: Dict[str, LesionProtocol] = {
    "gli": LesionProtocol("BraTS-GLI", 3, 50.0, "adult glioma"),
    "ssa": LesionProtocol("BraTS-SSA", 3, 50.0, "glioma in sub-Saharan Africa"),
    "ped": LesionProtocol("BraTS-PED", 3, 50.0, "paediatric tumours"),
    "men": LesionProtocol("BraTS-MEN", 1, 50.0, "meningioma"),
    "met": LesionProtocol("BraTS-MET", 1, 2.0, "brain metastases"),
    "gli2025": LesionProtocol("BraTS-GLI 2024/25", 0, 0.0, "adult glioma", ONE_TO_ONE),
}
DEFAULT_LESION_PROTOCOL = "gli"


def lesion_conventions(key: str = DEFAULT_LESION_PROTOCOL) -> Dict[str, str]:
    """The lesion-wise conventions written into summary.json and summary.md beside the whole-volume ones."""
    if key not in LESION_PROTOCOLS:
        raise ValueError(f"unknown lesion-wise protocol {key!r}; expected one of {tuple(LESION_PROTOCOLS)}")
    if LESION_PROTOCOLS[key].matching == ONE_TO_ONE:
        return {
            "lesion_protocol": key,
            "lesionwise": f"lesion-wise Dice and HD95 as the BraTS 2024/25 glioma scorer (panoptica), "
                          f"{LESION_PROTOCOLS[key].describe()}: per case the means over matched lesion pairs; "
                          f"unmatched lesions and components only count as FN/FP; no matched pair: Dice 0, HD95 "
                          f"{NO_MATCH_HD95:g} mm; no lesion and no component: Dice 1, HD95 0",
            "lesion_hd95": "per-lesion HD95 = panoptica's: 95th percentile of both directed surface-voxel distances "
                           "pooled (the pooled variant), with the label images' spacing in the right axis order, "
                           "whatever --hd95-variant",
        }
    return {
        "lesion_protocol": key,
        "lesionwise": f"lesion-wise Dice and HD95 as the BraTS 2023 scorer, {LESION_PROTOCOLS[key].describe()}; "
                      f"26-connected components; a missed lesion or a false-positive component counts Dice 0, "
                      f"HD95 {MISSED_LESION_HD95:g} mm; per case the mean over lesions and false positives "
                      "(no lesion and no false positive: Dice 1, HD95 0)",
        "lesion_hd95": "per-lesion HD95 = the BraTS 2023 HD95 (DeepMind surface-distance compute_robust_hausdorff "
                       "at 95, as the 2023 scorer: surface elements on the voxel-corner grid weighted by area, "
                       "nearest rank, larger direction), whatever --hd95-variant",
    }

_COMPONENTS = ndimage.generate_binary_structure(3, 3)  # 26-connected
_DILATION = ndimage.generate_binary_structure(3, 2)  # 18-connected, as the official scorer


@dataclass(frozen=True)
class LesionScore:
    dice: float
    hd95: float
    n_gt_lesions: int  # kept lesions (above the size threshold)
    n_tp: int
    n_fp: int
    n_fn: int


def lesionwise_scores(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None,
                      protocol: LesionProtocol = LESION_PROTOCOLS[DEFAULT_LESION_PROTOCOL]) -> LesionScore:
    """Lesion-wise Dice, HD95 (the BraTS 2023 surface-element HD95, see the module doc) and lesion counts of one
    region (boolean masks, axis order and spacing as :func:`metrics.hd95`). A one-to-one protocol (``gli2025``) is
    scored by :func:`.lesionwise_gli2025.one_to_one_lesion_scores` instead."""
    if protocol.matching == ONE_TO_ONE:
        return LesionScore(*one_to_one_lesion_scores(pred, ref, spacing))
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"need two 3-D masks of one shape, got {pred.shape} and {ref.shape}")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    voxel_volume = float(np.prod(spacing))
    if not pred.any() and not ref.any():
        return LesionScore(1.0, 0.0, 0, 0, 0, 0)
    # Everything happens inside the union box grown by the dilation: the same result as on the full volume.
    margin = protocol.dilation + 1
    box = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin))
                for b, n in zip(union_bounding_box(pred, ref), pred.shape))
    pred, ref = pred[box], ref[box]
    pred_labels, n_pred = ndimage.label(pred, structure=_COMPONENTS)
    if ref.any():
        dilated = ndimage.binary_dilation(ref, structure=_DILATION, iterations=protocol.dilation)
        region_labels, n_lesions = ndimage.label(dilated, structure=_COMPONENTS)
    else:
        region_labels, n_lesions = np.zeros(ref.shape, dtype=np.int32), 0
    lesion_labels = np.where(ref, region_labels, 0)
    both = (region_labels > 0) & (pred_labels > 0)
    pairs = np.unique(region_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both])
    matches: Dict[int, list] = {}
    for code in pairs:
        matches.setdefault(int(code // (n_pred + 1)), []).append(int(code % (n_pred + 1)))
    matched_pred = {p for ps in matches.values() for p in ps}
    volumes = np.bincount(lesion_labels.ravel(), minlength=n_lesions + 1) * voxel_volume
    pred_boxes = ndimage.find_objects(pred_labels)
    region_boxes = ndimage.find_objects(region_labels)
    dice_sum = hd_sum = 0.0
    kept = tp = fn = 0
    for lesion in range(1, n_lesions + 1):
        if volumes[lesion] <= protocol.min_volume:
            continue
        kept += 1
        components = matches.get(lesion, [])
        if not components:
            fn += 1
            hd_sum += MISSED_LESION_HD95
            continue
        tp += 1
        box = _union_box([region_boxes[lesion - 1]] + [pred_boxes[p - 1] for p in components])
        lesion_mask = lesion_labels[box] == lesion
        pred_mask = np.isin(pred_labels[box], components)
        dice_sum += dice(pred_mask, lesion_mask)
        hd_sum += surfel_hausdorff(pred_mask, lesion_mask, spacing, 95.0)
    n_fp = n_pred - len(matched_pred)
    denominator = kept + n_fp
    if denominator == 0:
        return LesionScore(1.0, 0.0, 0, 0, 0, 0)
    return LesionScore(dice_sum / denominator, (hd_sum + MISSED_LESION_HD95 * n_fp) / denominator,
                       kept, tp, n_fp, fn)


def _union_box(boxes):
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
