"""Lesion-wise scoring on hand-made cases whose values follow from the BraTS 2023 rules by hand."""
import numpy as np
import pytest

from nnunet_missingmod.evaluation.lesionwise import (LESION_PROTOCOLS, MISSED_LESION_HD95, LesionProtocol,
                                                     lesion_conventions, lesionwise_scores)
from nnunet_missingmod.evaluation.metrics import hd95
from nnunet_missingmod.evaluation.surface import surfel_hausdorff

GLI = LESION_PROTOCOLS["gli"]


def cube(mask, corner, size):
    z, y, x = corner
    mask[z:z + size, y:y + size, x:x + size] = True


def test_two_lesions_one_missed():
    gt, pred = np.zeros((40, 40, 40), bool), np.zeros((40, 40, 40), bool)
    cube(gt, (2, 2, 2), 5)
    cube(gt, (25, 25, 25), 5)
    cube(pred, (2, 2, 2), 5)
    s = lesionwise_scores(pred, gt, protocol=GLI)
    assert (s.n_gt_lesions, s.n_tp, s.n_fp, s.n_fn) == (2, 1, 0, 1)
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(MISSED_LESION_HD95 / 2)


def test_far_false_positive():
    gt, pred = np.zeros((40, 40, 40), bool), np.zeros((40, 40, 40), bool)
    cube(gt, (2, 2, 2), 5)
    cube(pred, (2, 2, 2), 5)
    cube(pred, (30, 30, 30), 2)
    s = lesionwise_scores(pred, gt, protocol=GLI)
    assert (s.n_gt_lesions, s.n_tp, s.n_fp, s.n_fn) == (1, 1, 1, 0)
    assert s.dice == pytest.approx(0.5) and s.hd95 == pytest.approx(MISSED_LESION_HD95 / 2)


def test_lesion_split_into_two_predicted_components():
    gt, pred = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
    gt[5:10, 5:10, 5:15] = True  # 250 voxels
    pred[5:10, 5:10, 5:9] = True  # 100
    pred[5:10, 5:10, 11:15] = True  # 100, a gap of two slices
    s = lesionwise_scores(pred, gt, protocol=GLI)
    assert (s.n_gt_lesions, s.n_tp, s.n_fp, s.n_fn) == (1, 1, 0, 0)
    assert s.dice == pytest.approx(2 * 200 / 450)


def test_lesion_below_threshold_is_ignored():
    gt, pred = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
    cube(gt, (2, 2, 2), 5)
    cube(pred, (2, 2, 2), 5)
    cube(gt, (20, 20, 20), 3)  # 27 voxels <= 50: left out of the GLI score, not of MET (min 2)
    s = lesionwise_scores(pred, gt, protocol=GLI)
    assert (s.n_gt_lesions, s.n_tp, s.n_fp, s.n_fn, s.dice, s.hd95) == (1, 1, 0, 0, 1.0, 0.0)
    met = lesionwise_scores(pred, gt, protocol=LESION_PROTOCOLS["met"])
    assert (met.n_gt_lesions, met.n_fn) == (2, 1) and met.dice == pytest.approx(0.5)


def test_empty_ground_truth():
    empty = np.zeros((20, 20, 20), bool)
    s = lesionwise_scores(empty, empty)
    assert (s.dice, s.hd95, s.n_gt_lesions, s.n_fp) == (1.0, 0.0, 0, 0)
    pred = empty.copy()
    cube(pred, (3, 3, 3), 2)
    cube(pred, (12, 12, 12), 2)
    s = lesionwise_scores(pred, empty)
    assert (s.dice, s.hd95, s.n_fp, s.n_gt_lesions) == (0.0, MISSED_LESION_HD95, 2, 0)


def test_anisotropic_spacing_hd95():
    gt, pred = np.zeros((20, 30, 30), bool), np.zeros((20, 30, 30), bool)
    gt[5:10, 5:15, 5:15] = True  # 500 voxels
    pred[6:11, 5:15, 5:15] = True  # shifted one voxel along z
    s = lesionwise_scores(pred, gt, spacing=(3.0, 1.0, 1.0), protocol=GLI)
    assert (s.n_gt_lesions, s.n_tp) == (1, 1)
    assert s.dice == pytest.approx(0.8) and s.hd95 == pytest.approx(3.0)


def test_lesion_hd95_is_the_brats_2023_surface_element_hd95():
    """Two lesions, each a bar of 4 voxels along z (3 mm) matched by a bar one voxel longer: by surface elements
    each lesion's HD95 is 3 mm (the 4 corners at the new end hold T / (2T + 4R) = 5.7 % > 5 % of the area, with
    T = sqrt(19)/8 and R = 3·sqrt(2)/2 mm², see test_surface.py), where the voxel 95th percentile would give
    0.8 · 3 = 2.4 mm; the lesion-wise HD95 is their mean, 3 mm, with any whole-volume variant."""
    gt, pred = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    for column in (2, 9):
        gt[2:6, column, column] = True
        pred[2:7, column, column] = True
    spacing = (3.0, 1.0, 1.0)
    protocol = LesionProtocol("hand-made", dilation=1, min_volume=0.0)
    s = lesionwise_scores(pred, gt, spacing=spacing, protocol=protocol)
    assert (s.n_gt_lesions, s.n_tp, s.n_fp, s.n_fn) == (2, 2, 0, 0)
    assert s.dice == pytest.approx(2 * 4 / 9)
    assert s.hd95 == pytest.approx(3.0)
    one = (slice(None), slice(0, 6), slice(0, 6))
    assert surfel_hausdorff(pred[one], gt[one], spacing) == pytest.approx(3.0)
    assert hd95(pred[one], gt[one], spacing, "voxel_max_directed") == pytest.approx(2.4)


def test_lesion_conventions_name_the_hd95_definition():
    text = lesion_conventions("met")
    assert "BraTS 2023 HD95" in text["lesion_hd95"] and "whatever --hd95-variant" in text["lesion_hd95"]
