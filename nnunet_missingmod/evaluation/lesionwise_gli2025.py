"""Lesion-wise Dice and HD95 of one region as the BraTS 2024/25 glioma scorer computes them (``--lesion-protocol
gli2025``): one-to-one lesion matching, no merging by dilation.

Rules, as read in the official ``BraTS-evaluation`` package 0.0.10 (AGPL; read, not copied, not a dependency):
``configs/config_gli.yaml`` configures panoptica 2.1.x, and ``brats-parse-metrics seg`` reports panoptica's
``sq_dsc``/``sq_hd95`` per region as the lesion-wise Dice and HD95:

* lesions are the 26-connected components of the ground truth (GT) and of the prediction (panoptica's
  ``ConnectedComponentsInstanceApproximator``, cc3d's default connectivity in 3-D); no dilation, no size threshold;
* matching is one-to-one (``MaxBipartiteMatching`` on Dice, threshold 1e-6): among all pairs with Dice >= 1e-6,
  the assignment with the largest total Dice; a matched pair is a true positive (TP), an unmatched GT lesion a false
  negative (FN), an unmatched predicted component a false positive (FP), even when it overlaps a GT lesion that
  another component matched;
* lesion-wise Dice and HD95 = the means over the TP pairs of the pair's Dice and HD95 (panoptica's segmentation
  quality). FP and FN lesions enter the counts, not these means;
* no TP while either side has a lesion: Dice 0 and HD95 inf in panoptica, which the BraTS Synapse scoring turns
  into Dice 0, HD95 :data:`NO_MATCH_HD95` = 374 mm; both masks empty: NaN there, Dice 1, HD95 0 after the same
  scoring (and here);
* the per-pair HD95 is panoptica's: the 95th percentile (linear interpolation) of both directed surface-voxel
  distances pooled, surface = mask XOR its 6-connected erosion, i.e. :func:`metrics.hd95` with
  ``variant="pooled"``.

The voxel spacing is the label image's, in the arrays' axis order (see :mod:`.scoring`). The official package reads
a NIfTI file through SimpleITK, whose array is (z, y, x) while its spacing is (x, y, z), and uses that spacing as
is; on 1 mm isotropic BraTS data that changes nothing, on anisotropic data its HD95 differs from ours.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from nnunet_missingmod.evaluation.metrics import hd95, union_bounding_box

NO_MATCH_HD95 = 374.0
"""Lesion-wise HD95 (mm) of a region with lesions but no matched pair (panoptica's inf, 374 in the BraTS scoring)."""
MATCHING_THRESHOLD = 1e-6
"""Smallest Dice of a pair that may be matched (the official configuration's ``matching_threshold``)."""

_COMPONENTS = ndimage.generate_binary_structure(3, 3)  # 26-connected


def one_to_one_lesion_scores(pred: np.ndarray, ref: np.ndarray, spacing: Optional[Sequence[float]] = None
                             ) -> Tuple[float, float, int, int, int, int]:
    """Lesion-wise Dice, HD95 and lesion counts of one region under the 2024/25 rules (module doc); boolean masks
    and spacing in one axis order, as :func:`.lesionwise.lesionwise_scores`, which wraps the result
    ``(dice, hd95, n_gt_lesions, n_tp, n_fp, n_fn)`` in a ``LesionScore``; ``n_gt_lesions`` counts every GT
    component."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"need two 3-D masks of one shape, got {pred.shape} and {ref.shape}")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    if not pred.any() and not ref.any():
        return 1.0, 0.0, 0, 0, 0, 0
    box = union_bounding_box(pred, ref)  # components and overlaps are the same inside it
    pred_labels, n_pred = ndimage.label(pred[box], structure=_COMPONENTS)
    ref_labels, n_ref = ndimage.label(ref[box], structure=_COMPONENTS)
    pairs = _matched_pairs(pred_labels, n_pred, ref_labels, n_ref)
    if not pairs:
        return 0.0, NO_MATCH_HD95, n_ref, 0, n_pred, n_ref
    pred_boxes, ref_boxes = ndimage.find_objects(pred_labels), ndimage.find_objects(ref_labels)
    dices, distances = [], []
    for ref_label, pred_label in pairs:
        pair_box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                         for a, b in zip(ref_boxes[ref_label - 1], pred_boxes[pred_label - 1]))
        lesion, component = ref_labels[pair_box] == ref_label, pred_labels[pair_box] == pred_label
        dices.append(2.0 * np.count_nonzero(lesion & component) / (np.count_nonzero(lesion)
                                                                    + np.count_nonzero(component)))
        distances.append(hd95(component, lesion, spacing, variant="pooled"))
    tp = len(pairs)
    return float(np.mean(dices)), float(np.mean(distances)), n_ref, tp, n_pred - tp, n_ref - tp


def _matched_pairs(pred_labels: np.ndarray, n_pred: int, ref_labels: np.ndarray, n_ref: int):
    """``[(ref_label, pred_label), ...]``: the one-to-one assignment of largest total Dice among the pairs whose
    Dice reaches :data:`MATCHING_THRESHOLD`."""
    if n_pred == 0 or n_ref == 0:
        return []
    overlap = (ref_labels > 0) & (pred_labels > 0)
    codes = ref_labels[overlap].astype(np.int64) * (n_pred + 1) + pred_labels[overlap]
    intersections = np.bincount(codes, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)[1:, 1:]
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)[1:]
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]
    pair_dice = 2.0 * intersections / (ref_sizes[:, None] + pred_sizes[None, :])
    eligible = (intersections > 0) & (pair_dice >= MATCHING_THRESHOLD)
    # An ineligible pair costs more than leaving both unmatched, so the solver only takes it to fill the square.
    cost = np.where(eligible, 1.0 - pair_dice, 1.0 + MATCHING_THRESHOLD)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols) if eligible[r, c]]
