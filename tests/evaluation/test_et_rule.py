"""The ET volume rule (evaluation/et_rule.py): applying it, choosing its threshold on hand-made cases whose Dice
values can be checked by hand, its files, ``nnunet-missingmod et-rule fit|apply`` on real NIfTI files, and
``evaluate --et-rule`` on two real nnU-Net model folders."""
import hashlib
import math

import numpy as np
import pytest
import SimpleITK as sitk
from evaluation.test_routed import biased_copy, rows_by_entry
from cli_helpers import run_cli, write_case, write_label

from nnunet_missingmod.cli import main
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.et_rule import (
    EtRule, FitCase, apply_et_rule, et_labels_from_regions, fit_et_rule, load_et_rule, save_et_rule)
from nnunet_missingmod.modalities import FULL_SET

REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}  # our converted datasets: 1 oedema, 2 NCR, 3 ET


def _label_map(et_voxels=0, ncr_voxels=4, start=0):
    """A 1-D strip (the rule only counts voxels): oedema everywhere, then NCR, then ET from ``start``."""
    seg = np.ones((1, 1, 40), np.uint8)
    seg[..., :ncr_voxels] = 2
    seg[..., 10 + start:10 + start + et_voxels] = 3
    return seg


# ---------------------------------------------------------------------------------------------------------- apply
def test_small_et_becomes_necrosis_and_wt_tc_do_not_change():
    rule = EtRule(min_volume_ml=3.0, et_label=3, replacement_label=2)
    seg = _label_map(et_voxels=2)
    before = seg.copy()
    result = apply_et_rule(seg, voxel_ml=1.0, rule=rule)
    assert np.array_equal(seg, before)  # the input is not modified
    assert not np.any(result == 3) and np.count_nonzero(result == 2) == 4 + 2
    assert np.array_equal(result > 0, seg > 0) and np.array_equal(np.isin(result, (2, 3)), np.isin(seg, (2, 3)))


def test_et_at_or_above_the_threshold_is_kept_and_the_threshold_is_a_volume():
    rule = EtRule(min_volume_ml=3.0, et_label=3, replacement_label=2)
    seg = _label_map(et_voxels=3)
    assert apply_et_rule(seg, voxel_ml=1.0, rule=rule) is seg  # 3 ml is not below 3 ml
    assert not np.any(apply_et_rule(seg, voxel_ml=0.5, rule=rule) == 3)  # the same voxels at 0.5 ml: 1.5 ml
    assert apply_et_rule(seg, voxel_ml=1.0, rule=EtRule(0.0, 3, 2)) is seg  # threshold 0: off


# ------------------------------------------------------------------------------------------------------------ fit
def test_fit_keeps_the_threshold_with_the_best_mean_et_dice():
    cases = [
        # no ET in the reference, 2 false-positive voxels: Dice 0 as predicted, 1 once relabelled
        FitCase("fp", _label_map(et_voxels=2), _label_map(et_voxels=0), 1.0),
        # 3 of the reference's 4 ET voxels found: Dice 6/7 as predicted, 0 once relabelled
        FitCase("small", _label_map(et_voxels=3), _label_map(et_voxels=4), 1.0),
        # exact, 10 voxels: Dice 1, 0 once relabelled
        FitCase("large", _label_map(et_voxels=10), _label_map(et_voxels=10), 1.0),
    ]
    rule = fit_et_rule(cases, et_label=3, replacement_label=2)
    assert (rule.et_label, rule.replacement_label) == (3, 2)
    assert 2.0 < rule.min_volume_ml <= 3.0  # relabels the 2-voxel case, not the 3-voxel one
    assert rule.fit["mean_et_dice_without_rule"] == pytest.approx((0 + 6 / 7 + 1) / 3)
    assert rule.fit["mean_et_dice_with_rule"] == pytest.approx((1 + 6 / 7 + 1) / 3)
    assert rule.fit["cases_relabelled"] == 1
    by_relabelled = {row["cases_relabelled"]: row["mean_et_dice"] for row in rule.fit["candidates"]}
    assert by_relabelled == pytest.approx({0: (6 / 7 + 1) / 3, 1: (2 + 6 / 7) / 3, 2: 2 / 3, 3: 1 / 3})


def test_fit_stays_off_when_no_threshold_helps():
    cases = [FitCase("a", _label_map(et_voxels=5), _label_map(et_voxels=5), 1.0),
             FitCase("b", _label_map(et_voxels=0), _label_map(et_voxels=0), 1.0)]
    rule = fit_et_rule(cases, 3, 2)
    assert rule.min_volume_ml == 0.0 and rule.fit["cases_relabelled"] == 0
    with pytest.raises(MissingModError, match="no case"):
        fit_et_rule([], 3, 2)


def test_labels_come_from_the_regions():
    assert et_labels_from_regions(REGIONS, "dataset.json") == (3, 2)
    assert et_labels_from_regions({"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}, "x") == (4, 1)  # BraTS 2021 values
    with pytest.raises(MissingModError, match=r"d\.json: the ET rule needs regions ET and TC, found WT"):
        et_labels_from_regions({"WT": (1, 2, 3)}, "d.json")
    with pytest.raises(MissingModError, match=r"TC to add exactly one label"):
        et_labels_from_regions({"WT": (1, 2, 3), "TC": (1, 2, 3), "ET": (3,)}, "d.json")


def test_rule_file_round_trip_and_bad_files(tmp_path):
    rule = fit_et_rule([FitCase("fp", _label_map(et_voxels=2), _label_map(), 1.0)], 3, 2)
    save_et_rule(rule, str(tmp_path / "rule.json"))
    loaded = load_et_rule(str(tmp_path / "rule.json"))
    assert loaded == rule and loaded.fit == rule.fit and loaded.min_volume_ml == math.nextafter(2.0, math.inf)
    with pytest.raises(MissingModError, match=f"ET rule file not found: {tmp_path / 'none.json'}"):
        load_et_rule(str(tmp_path / "none.json"))
    (tmp_path / "other.json").write_text('{"min_volume_ml": 1}')
    with pytest.raises(MissingModError, match=f"{tmp_path / 'other.json'} is not an ET rule"):
        load_et_rule(str(tmp_path / "other.json"))
    (tmp_path / "negative.json").write_text(
        '{"format": "nnunet-missingmod et-rule 1", "min_volume_ml": -1, "et_label": 3, "replacement_label": 2}')
    with pytest.raises(MissingModError, match="min_volume_ml must be a finite volume >= 0, got -1"):
        load_et_rule(str(tmp_path / "negative.json"))


# ---------------------------------------------------------------------------------------------- the subcommand
def _write(folder, name, seg, spacing=(2.0, 2.0, 2.0)):
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_et_rule_fit_and_apply_on_nifti_folders(tmp_path, capsys):
    # 2 mm voxels: 8 ul each; the false-positive ET is 2 voxels (0.016 ml), the real one 10
    _write(tmp_path / "val", "fp", _label_map(et_voxels=2))
    _write(tmp_path / "ref", "fp", _label_map(et_voxels=0))
    _write(tmp_path / "val", "tumour", _label_map(et_voxels=10))
    _write(tmp_path / "ref", "tumour", _label_map(et_voxels=10))
    assert main(["et-rule", "fit", "-i", str(tmp_path / "val"), "-ref", str(tmp_path / "ref"),
                 "--regions", "WT=1,2,3;TC=2,3;ET=3", "-o", str(tmp_path / "rule.json")]) == 0
    out = capsys.readouterr().out
    assert "ET below 0.016 ml becomes label 2; fitted on 2 case(s): mean ET Dice 0.5000 without, 1.0000 with" in out
    rule = load_et_rule(str(tmp_path / "rule.json"))
    assert 0.016 < rule.min_volume_ml < 0.08

    before = _digest(tmp_path / "val")
    assert main(["et-rule", "apply", "-i", str(tmp_path / "val"), "-o", str(tmp_path / "pp"),
                 "-rule", str(tmp_path / "rule.json")]) == 0
    assert "wrote 2 segmentation(s)" in capsys.readouterr().out
    assert _digest(tmp_path / "val") == before  # the source is never modified
    fp = sitk.ReadImage(str(tmp_path / "pp" / "fp.nii.gz"))
    assert fp.GetSpacing() == (2.0, 2.0, 2.0)
    assert np.array_equal(sitk.GetArrayFromImage(fp), np.where(_label_map(et_voxels=2) == 3, 2, _label_map(2)))
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pp" / "tumour.nii.gz")))
    assert np.array_equal(tumour, _label_map(et_voxels=10))
    assert not [p for p in (tmp_path / "pp").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_et_rule_errors_name_the_file(tmp_path, capsys):
    _write(tmp_path / "val", "fp", _label_map(et_voxels=2))
    (tmp_path / "ref").mkdir()
    assert main(["et-rule", "fit", "-i", str(tmp_path / "val"), "-ref", str(tmp_path / "ref"),
                 "--regions", "WT=1,2,3;TC=2,3;ET=3", "-o", str(tmp_path / "rule.json")]) == 2
    assert f"{tmp_path / 'val' / 'fp.nii.gz'}: no reference segmentation fp.nii.gz in {tmp_path / 'ref'}" \
        in capsys.readouterr().err
    assert not (tmp_path / "rule.json").exists()
    save_et_rule(EtRule(1.0, 3, 2), str(tmp_path / "rule.json"))
    assert main(["et-rule", "apply", "-i", str(tmp_path / "val"), "-o", str(tmp_path / "val"),
                 "-rule", str(tmp_path / "rule.json")]) == 2
    assert "must differ from the input folder" in capsys.readouterr().err
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "bad").mkdir()
    (tmp_path / "broken.nii.gz").rename(tmp_path / "bad" / "broken.nii.gz")
    assert main(["et-rule", "apply", "-i", str(tmp_path / "bad"), "-o", str(tmp_path / "pp"),
                 "-rule", str(tmp_path / "rule.json")]) == 2
    assert str(tmp_path / "bad" / "broken.nii.gz") in capsys.readouterr().err
    assert not (tmp_path / "pp").exists() or not list((tmp_path / "pp").iterdir())


# ---------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_scores_the_rule_as_one_more_entry_without_predicting_again(tmp_path, model_folder):  # noqa: F811
    full = biased_copy(model_folder, tmp_path / "full", 50.0)  # predicts every voxel as enhancing tumour
    for i in range(2):
        write_case(tmp_path / "images", f"case_{i}", seed=i)
        write_label(tmp_path / "labels", f"case_{i}")
    # a threshold above the whole volume: every prediction's ET becomes necrosis
    save_et_rule(EtRule(1e6, 3, 2), str(tmp_path / "rule.json"))
    out = tmp_path / "eval"
    result = run_cli("evaluate", "-i", tmp_path / "images", "-l", tmp_path / "labels", "-m", full, "-f", "0",
                  "--subsets", f"T1ce;{FULL_SET.name}", "-np", "1", "--disable_tta", "-device", "cpu",
                  "--et-rule", tmp_path / "rule.json", "-o", out)
    assert result.returncode == 0, result.stderr
    raw, ruled = "nnUNetTrainer", "nnUNetTrainer_etRule"
    assert f"{ruled}: {raw}'s predictions with ET below 1e+06 ml relabelled (4 of 4 changed)" in result.stdout
    entries = rows_by_entry(out / "metrics.csv")
    assert list(entries) == [raw, ruled] and set(entries[raw]) == set(entries[ruled])
    for (case, subset, region), row in entries[ruled].items():
        if region == "ET":  # the reference has ET: an empty ET scores 0
            assert float(row["dice"]) == 0.0 < float(entries[raw][(case, subset, region)]["dice"])
        else:
            assert row == entries[raw][(case, subset, region)]
    for subset in ("T1ce", FULL_SET.name):
        raw_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / raw / subset / "case_0.nii.gz")))
        ruled_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / ruled / subset /
                                                              "case_0.nii.gz")))
        assert np.all(raw_seg == 3) and np.all(ruled_seg == 2)
    assert f"| ET | {ruled} |" in (out / "summary.md").read_text()


def test_evaluate_refuses_a_bad_rule_before_loading_a_model(tmp_path, capsys, model_folder):  # noqa: F811
    assert main(["evaluate", "-i", str(tmp_path), "-l", str(tmp_path), "-m", str(model_folder), "-f", "0",
                 "--et-rule", str(tmp_path / "none.json"), "-o", str(tmp_path / "out")]) == 2
    assert f"ET rule file not found: {tmp_path / 'none.json'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
