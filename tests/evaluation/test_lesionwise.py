"""Lesion-wise scoring on hand-made cases whose values follow from the BraTS 2023 rules by hand."""
import numpy as np
import pytest

from nnunet_missingmod.evaluation.lesionwise import LESION_PROTOCOLS, MISSED_LESION_HD95, lesionwise_scores

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
