"""The one reader of NIfTI checks (nifti_checks.py) and the commands that use it: truncated label maps, label values
that are not the dataset's, broken symbolic links and values that nnU-Net's float32 reads as Inf are errors naming
the file, never scores or missing sequences (issue 32)."""
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.scoring import PredictionFolder, score_prediction_folders
from nnunet_missingmod.nifti_checks import check_nifti_data, read_label_map

SHAPE = (12, 24, 20)  # numpy (z, y, x)
CONVERTED_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


def write_labels(path, array, dtype=np.uint8):
    image = sitk.GetImageFromArray(np.asarray(array).astype(dtype))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))
    return path


def tumour(values=(1, 2, 3)):
    """A label map holding each of ``values`` in a noisy pattern (so that the gzip stream is long)."""
    rng = np.random.default_rng(0)
    return rng.choice(np.asarray((0, *values)), size=SHAPE).astype(np.uint8)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def score_folders(tmp_path, gt=None, pred=None, pred_dtype=np.uint8):
    """GT_DIR and PRED_DIR with one case each."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_labels(gt_dir / "case.nii.gz", tumour() if gt is None else gt)
    write_labels(pred_dir / "case.nii.gz", tumour() if pred is None else pred, pred_dtype)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": CONVERTED_LABELS, "file_ending": ".nii.gz"}))
    return gt_dir, pred_dir, dataset_json


def run_score(capsys, gt_dir, pred_dir, out, *extra):
    from nnunet_missingmod.cli import main
    code = main(["score", str(gt_dir), str(pred_dir), "-o", str(out), "-np", "1", *map(str, extra)])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- the reader
def test_reader_rejects_a_truncated_label_map(tmp_path):
    path = truncate(write_labels(tmp_path / "seg.nii.gz", tumour()))
    sitk.ReadImage(str(path))  # the reason for the check: SimpleITK reads it without an error
    with pytest.raises(MissingModError, match=r"prediction: cannot read .*seg\.nii\.gz \(truncated or corrupt\?\)"):
        read_label_map(str(path), "prediction")


def test_reader_rejects_values_outside_the_labels_and_names_another_convention(tmp_path):
    path = write_labels(tmp_path / "seg.nii.gz", tumour((1, 2, 4)))
    with pytest.raises(MissingModError, match=r"seg\.nii\.gz: unexpected label value\(s\) 4 \(found 0, 1, 2, 4\).*"
                                              r"look like brats2021 labels: use --format brats2021"):
        read_label_map(str(path), "prediction", (0, 1, 2, 3), {"brats2021": (0, 1, 2, 4)}, "use --format {name}")
    values, image = read_label_map(str(path), "prediction")  # no label set: any integer
    assert set(np.unique(values)) == {0, 1, 2, 4} and image.GetSize() == SHAPE[::-1]


def test_reader_rejects_non_integer_labels(tmp_path):
    path = write_labels(tmp_path / "seg.nii.gz", tumour() * 0.5, np.float32)
    with pytest.raises(MissingModError, match=r"seg\.nii\.gz: non-integer label value\(s\) 0\.5"):
        read_label_map(str(path), "prediction", (0, 1, 2, 3))


def test_integer_valued_float_labels_are_read_as_integers(tmp_path):
    path = write_labels(tmp_path / "seg.nii.gz", tumour(), np.float32)
    values, _ = read_label_map(str(path), "prediction", (0, 1, 2, 3))
    assert values.dtype.kind == "i" and set(np.unique(values)) == {0, 1, 2, 3}


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_symbolic_link_is_an_error_naming_it(tmp_path, kind):
    link = tmp_path / "CASE_0002.nii.gz"
    os.symlink(tmp_path / "nowhere.nii.gz" if kind == "dangling" else link, link)
    assert not link.is_file() and os.path.lexists(link)
    with pytest.raises(MissingModError, match=r"case X: .*CASE_0002\.nii\.gz is a broken symbolic link"):
        check_nifti_data(str(link), "case X")


def test_values_beyond_float32_are_an_error(tmp_path):
    """Finite in float64, Inf in the float32 nnU-Net reads images as."""
    data = np.ones((8, 8, 8), dtype=np.float64)
    data[2, 3, 4] = 1e303
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    assert np.isfinite(np.asarray(nib.load(str(path)).dataobj)).all()
    with pytest.raises(MissingModError, match=r"img\.nii\.gz has 1 voxel\(s\) beyond the float32 range"):
        check_nifti_data(str(path), "case X")


# ------------------------------------------------------------------------------------------------- score
def test_score_rejects_a_truncated_prediction(tmp_path, capsys):
    gt_dir, pred_dir, dataset_json = score_folders(tmp_path)
    truncate(pred_dir / "case.nii.gz")
    code, err = run_score(capsys, gt_dir, pred_dir, tmp_path / "out", "-djfile", dataset_json)
    assert code == 2 and "truncated" in err and "case.nii.gz" in err
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_truncated_ground_truth_is_an_error(tmp_path):
    """evaluate -l reads its ground truth with score_prediction_folders, as score does."""
    gt_dir, pred_dir, _ = score_folders(tmp_path)
    truncate(gt_dir / "case.nii.gz")
    with pytest.raises(MissingModError, match=r"ground truth: cannot read .*gt/case\.nii\.gz"):
        score_prediction_folders(str(gt_dir), [PredictionFolder("m", None, str(pred_dir))], REGIONS, num_processes=1)


@pytest.mark.parametrize("where, values, message", [
    ("pred", (1, 2, 5), r"prediction .*pred/case\.nii\.gz: unexpected label value\(s\) 5"),
    ("gt", (1, 2, 7), r"ground truth .*gt/case\.nii\.gz: unexpected label value\(s\) 7"),
    ("gt", (1, 2, 3, 5), r"ground truth .*gt/case\.nii\.gz: unexpected label value\(s\) 5"),
])
def test_score_rejects_labels_that_are_not_the_datasets(tmp_path, capsys, where, values, message):
    gt_dir, pred_dir, dataset_json = score_folders(tmp_path, **{where: tumour(values)})
    code, err = run_score(capsys, gt_dir, pred_dir, tmp_path / "out", "-djfile", dataset_json)
    assert code == 2
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_score_rejects_float_labels(tmp_path, capsys):
    gt_dir, pred_dir, dataset_json = score_folders(tmp_path, pred=tumour() * 0.5, pred_dtype=np.float32)
    code, err = run_score(capsys, gt_dir, pred_dir, tmp_path / "out", "-djfile", dataset_json)
    assert code == 2 and "non-integer label value(s) 0.5" in err


def test_brats_labels_scored_with_the_converted_dataset_json_are_named(tmp_path, capsys):
    """labels-back output (0/1/2/4) against the converted labels (ET = 3) used to give ET Dice 0 and no error."""
    gt_dir, pred_dir, dataset_json = score_folders(tmp_path, pred=tumour((1, 2, 4)))
    code, err = run_score(capsys, gt_dir, pred_dir, tmp_path / "out", "-djfile", dataset_json)
    assert code == 2
    assert re.search(r"pred/case\.nii\.gz: unexpected label value\(s\) 4 .*look like (brats20\d\d) labels.*"
                     r"--format \1", err), err


def test_brats_labels_with_their_format_are_scored(tmp_path, capsys):
    labels = tumour((1, 2, 4))
    gt_dir, pred_dir, _ = score_folders(tmp_path, gt=labels, pred=labels)
    code, err = run_score(capsys, gt_dir, pred_dir, tmp_path / "out", "--format", "brats2021")
    assert code == 0, err


def test_brats2024_resection_cavity_outside_every_region_is_accepted(tmp_path):
    """With --format brats2024 the RC label (4) is in no region, but it is one of that convention's labels."""
    from nnunet_missingmod.evaluation.regions import preset_regions
    labels = tumour((1, 2, 3, 4))
    gt_dir, pred_dir, _ = score_folders(tmp_path, gt=labels, pred=labels)
    records = score_prediction_folders(str(gt_dir), [PredictionFolder("m", None, str(pred_dir))],
                                       preset_regions("brats2024"), num_processes=1)
    assert {r["dice"] for r in records} == {1.0}


# ------------------------------------------------------------------------------------------------- et-rule, labels-back
def test_et_rule_fit_and_apply_check_their_label_maps(tmp_path):
    from nnunet_missingmod.evaluation.et_rule import EtRule, apply_et_rule_to_folder, fit_et_rule_on_folders
    gt_dir, pred_dir, _ = score_folders(tmp_path, pred=tumour((1, 2, 5)))
    with pytest.raises(MissingModError, match=r"prediction .*pred/case\.nii\.gz: unexpected label value\(s\) 5"):
        fit_et_rule_on_folders([str(pred_dir)], str(gt_dir), REGIONS)
    truncate(gt_dir / "case.nii.gz")
    rule = EtRule(min_volume_ml=1.0, et_label=3, replacement_label=2)
    with pytest.raises(MissingModError, match=r"segmentation: cannot read .*gt/case\.nii\.gz \(truncated"):
        apply_et_rule_to_folder(rule, str(gt_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "case.nii.gz").exists()


def test_labels_back_rejects_a_truncated_prediction(tmp_path):
    from nnunet_missingmod.conversion.labels import convert_labels_back
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    write_labels(pred_dir / "a.nii.gz", tumour())
    truncate(write_labels(pred_dir / "b.nii.gz", tumour()))
    with pytest.raises(MissingModError, match=r"prediction: cannot read .*b\.nii\.gz \(truncated"):
        convert_labels_back("brats2021", pred_dir, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_label_values_of_regions():
    from nnunet_missingmod.evaluation.regions import preset_regions
    from nnunet_missingmod.evaluation.scoring import label_values_of_regions
    assert label_values_of_regions(REGIONS) == (0, 1, 2, 3)
    assert label_values_of_regions({"ET": (3,)}) == (0, 1, 2, 3)  # a partial --regions scores full label maps
    assert label_values_of_regions(preset_regions("brats2021")) == (0, 1, 2, 4)  # no label 3 in BraTS 2021
    assert label_values_of_regions(preset_regions("brats2024")) == (0, 1, 2, 3, 4)  # RC, in no region
