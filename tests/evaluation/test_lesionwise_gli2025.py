"""The BraTS 2024/25 glioma lesion-wise protocol (``--lesion-protocol gli2025``: one-to-one matching, no dilation, no
size threshold, means over matched pairs) on hand-made cases where it and the 2023 protocol differ; values follow
from the two protocols' definitions by hand."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_missingmod.evaluation.lesionwise import LESION_PROTOCOLS, lesion_conventions, lesionwise_scores
from nnunet_missingmod.evaluation.lesionwise_gli2025 import NO_MATCH_HD95
from nnunet_missingmod.evaluation.metrics import hd95

GLI_2023 = LESION_PROTOCOLS["gli"]
GLI_2025 = LESION_PROTOCOLS["gli2025"]


def write_labels(path, array, spacing):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)  # SimpleITK order: x, y, z
    sitk.WriteImage(image, str(path))


def counts(score):
    return score.n_gt_lesions, score.n_tp, score.n_fp, score.n_fn


def test_two_predicted_components_in_one_dilated_lesion():
    """2023: both components touch the lesion's dilated region, so both are its true positive; 2025: the component
    that does not overlap the lesion cannot be matched and is a false positive, which does not lower the mean."""
    gt, pred = np.zeros((32, 32, 32), bool), np.zeros((32, 32, 32), bool)
    gt[10:16, 10:16, 10:16] = True  # 216 voxels
    pred[10:16, 10:16, 10:16] = True  # exactly the lesion
    pred[18:20, 10:12, 10:12] = True  # 8 voxels, two slices beyond the lesion: inside its 3-fold dilation
    old = lesionwise_scores(pred, gt, protocol=GLI_2023)
    assert counts(old) == (1, 1, 0, 0)
    assert old.dice == pytest.approx(2 * 216 / (216 + 224))  # the lesion against the union of both components
    new = lesionwise_scores(pred, gt, protocol=GLI_2025)
    assert counts(new) == (1, 1, 1, 0)
    assert (new.dice, new.hd95) == (1.0, 0.0)  # the matched pair is exact


def test_two_overlapping_components_only_one_is_matched():
    gt, pred = np.zeros((32, 32, 32), bool), np.zeros((32, 32, 32), bool)
    gt[10:16, 10:16, 5:15] = True  # 360 voxels
    pred[10:16, 10:16, 5:9] = True  # 144
    pred[10:16, 10:16, 11:15] = True  # 144, two columns apart: another component
    old = lesionwise_scores(pred, gt, protocol=GLI_2023)
    assert counts(old) == (1, 1, 0, 0) and old.dice == pytest.approx(2 * 288 / (360 + 288))
    new = lesionwise_scores(pred, gt, protocol=GLI_2025)
    assert counts(new) == (1, 1, 1, 0)  # the second overlapping component is a false positive
    assert new.dice == pytest.approx(2 * 144 / (360 + 144))
    half = np.zeros_like(pred)
    half[10:16, 10:16, 5:9] = True  # both pairs are mirror images: either match has this HD95
    assert new.hd95 == pytest.approx(hd95(half, gt, variant="pooled"))


def test_ground_truth_lesion_split_in_two():
    """Two GT parts two slices apart: one lesion after the 2023 dilation, two lesions in 2025, where the single
    predicted component is matched with the part it overlaps best and the other part is missed."""
    gt, pred = np.zeros((32, 32, 32), bool), np.zeros((32, 32, 32), bool)
    gt[10:14, 10:16, 10:16] = True  # 144 voxels
    gt[16:22, 10:16, 10:16] = True  # 216
    pred[10:22, 10:16, 10:16] = True  # 432, covering both and the gap
    old = lesionwise_scores(pred, gt, protocol=GLI_2023)
    assert counts(old) == (1, 1, 0, 0) and old.dice == pytest.approx(2 * 360 / (360 + 432))
    new = lesionwise_scores(pred, gt, protocol=GLI_2025)
    assert counts(new) == (2, 1, 0, 1)
    assert new.dice == pytest.approx(2 * 216 / (216 + 432))  # 2/3 beats the smaller part's 1/2
    larger_part = np.zeros_like(gt)
    larger_part[16:22, 10:16, 10:16] = True
    assert new.hd95 == pytest.approx(hd95(pred, larger_part, variant="pooled"))


def test_matching_maximises_the_total_dice_not_the_best_pair():
    """One plane; G1 (3 rows), G2 (2 voxels) in the GT; P1 (a row over G1 and G2) and P2 (a short row) predicted.
    Pair Dice: G1-P1 20/44, G1-P2 10/35, G2-P1 4/16, G2-P2 0. Taking the best pair first (G1-P1) leaves G2 and P2
    unmatched; the largest total (G1-P2 + G2-P1 = 0.536 > 0.455) matches both."""
    gt, pred = np.zeros((3, 8, 16), bool), np.zeros((3, 8, 16), bool)
    gt[1, 0:3, 0:10] = True  # G1, 30 voxels
    gt[1, 2, 12:14] = True  # G2, 2 voxels
    pred[1, 2, 0:14] = True  # P1, 14 voxels
    pred[1, 0, 0:5] = True  # P2, 5 voxels, a row apart from P1
    s = lesionwise_scores(pred, gt, protocol=GLI_2025)
    assert counts(s) == (2, 2, 0, 0)
    assert s.dice == pytest.approx((10 / 35 + 4 / 16) / 2)


def test_no_size_threshold_and_no_match_penalty():
    gt, pred = np.zeros((24, 24, 24), bool), np.zeros((24, 24, 24), bool)
    gt[2:4, 2:4, 2:4] = True  # 8 mm³: below the 2023 GLI threshold of 50, a lesion in 2025
    pred[15:17, 15:17, 15:17] = True  # elsewhere
    assert counts(lesionwise_scores(pred, gt, protocol=GLI_2023)) == (0, 0, 1, 0)
    s = lesionwise_scores(pred, gt, protocol=GLI_2025)
    assert counts(s) == (1, 0, 1, 1) and (s.dice, s.hd95) == (0.0, NO_MATCH_HD95)
    empty = np.zeros_like(gt)
    assert (lesionwise_scores(empty, empty, protocol=GLI_2025).dice,
            lesionwise_scores(empty, empty, protocol=GLI_2025).hd95) == (1.0, 0.0)
    only_pred = lesionwise_scores(pred, empty, protocol=GLI_2025)
    assert counts(only_pred) == (0, 0, 1, 0) and (only_pred.dice, only_pred.hd95) == (0.0, NO_MATCH_HD95)


def test_conventions_and_help_name_the_2025_rules(capsys):
    text = lesion_conventions("gli2025")
    assert "2024/25" in text["lesionwise"] and "one-to-one" in text["lesionwise"] and "pooled" in text["lesion_hd95"]
    assert "2023" in lesion_conventions("gli")["lesionwise"]
    from nnunet_missingmod.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--help"])
    assert "gli2025 = BraTS-GLI 2024/25 (adult glioma): one-to-one" in " ".join(capsys.readouterr().out.split())


def test_score_command_with_gli2025_reads_anisotropic_spacing_in_array_order(tmp_path, capsys):
    """A two-slice slab predicted one slice higher, 2.5 mm apart (SimpleITK spacing (1.0, 0.8, 2.5) = x, y, z): the
    pair's Dice is 1/2 and its pooled HD95 is one slice, 2.5 mm (half the surface voxels at 0, half at 2.5). Reading
    the spacing in SimpleITK's order against numpy's axes would give 1.0 mm. A far component is a false positive
    that leaves both means unchanged (the 2023 protocol would count it Dice 0, HD95 374)."""
    gt, pred = np.zeros((16, 24, 24), np.uint8), np.zeros((16, 24, 24), np.uint8)
    gt[4:6, 2:18, 2:14] = 1
    pred[5:7, 2:18, 2:14] = 1
    pred[12:14, 20:22, 20:22] = 1
    for folder, array in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_labels(tmp_path / folder / "case.nii.gz", array, spacing=(1.0, 0.8, 2.5))
    out = tmp_path / "out"
    from nnunet_missingmod.cli import main
    code = main(["score", str(tmp_path / "gt"), str(tmp_path / "pred"), "--regions", "WT=1", "-o", str(out),
                 "-np", "1", "--lesion-protocol", "gli2025"])
    assert code == 0, capsys.readouterr().err
    with open(out / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["n_gt_lesions"], row["n_tp"], row["n_fp"], row["n_fn"]) == ("1", "1", "1", "0")
    assert float(row["lesion_dice"]) == pytest.approx(0.5)
    assert float(row["lesion_hd95"]) == pytest.approx(2.5)
    assert json.loads((out / "summary.json").read_text())["conventions"]["lesion_protocol"] == "gli2025"
    assert "Protocol: BraTS-GLI 2024/25 (adult glioma): one-to-one" in (out / "summary.md").read_text()
