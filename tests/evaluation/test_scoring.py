"""`nnunet-missingmod score` end to end on small NIfTI folders, plus the region sources it accepts."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.regions import (REGION_PRESETS, parse_regions, preset_regions, regions_from_labels,
                                                  resolve_regions, short_region_name)
from nnunet_missingmod.evaluation.scoring import (PredictionFolder, read_label_image, score_prediction_folder,
                                                  score_prediction_folders)

SHAPE = (10, 20, 16)            # numpy (z, y, x)
SITK_SPACING = (1.0, 0.8, 2.5)  # SimpleITK (x, y, z): the slices are 2.5 mm apart
BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def cli_command():
    script = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    return [script] if os.path.exists(script) else [shutil.which("nnunet-missingmod")]


def run_cli(*args):
    """The real console command, in a subprocess."""
    return subprocess.run(cli_command() + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def run_main(capsys, *args):
    """The same command in this process (faster: no interpreter and torch start-up); returns (exit code, stdout,
    stderr)."""
    from nnunet_missingmod.cli import main
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_labels(path, array, spacing=SITK_SPACING):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def make_cases():
    """Three cases with hand-computable scores (regions WT = {1,2,3}, ET = {3}).

    case_a: a one-slice WT plate, predicted one slice higher -> WT Dice 0, HD95 exactly 2.5 mm (the z spacing);
            no ET anywhere -> ET Dice 1, HD95 0.
    case_b: a 4×4×4 ET cube, predicted shifted by one voxel along x -> Dice 2·48/128 = 0.75 for WT and ET.
    case_c: GT has edema (2), the prediction is empty -> WT Dice 0, HD95 374 (BraTS 2023); ET both empty.
    """
    gt = {name: np.zeros(SHAPE, np.uint8) for name in ("case_a", "case_b", "case_c")}
    pred = {name: np.zeros(SHAPE, np.uint8) for name in gt}
    gt["case_a"][4, 2:18, 2:14] = 1
    pred["case_a"][5, 2:18, 2:14] = 1
    gt["case_b"][2:6, 2:6, 2:6] = 3
    pred["case_b"][2:6, 2:6, 3:7] = 3
    gt["case_c"][3:6, 5:9, 5:9] = 2
    return gt, pred


EXPECTED = {  # (case, region) -> (dice, hd95)
    ("case_a", "WT"): (0.0, 2.5), ("case_a", "ET"): (1.0, 0.0),
    ("case_b", "WT"): (0.75, None), ("case_b", "ET"): (0.75, None),
    ("case_c", "WT"): (0.0, 374.0), ("case_c", "ET"): (1.0, 0.0),
}


@pytest.fixture
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "predictions"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt, pred = make_cases()
    for name in gt:
        write_labels(gt_dir / f"{name}.nii.gz", gt[name])
        write_labels(pred_dir / f"{name}.nii.gz", pred[name])
    # what nnU-Net leaves in a prediction folder besides the label maps
    (pred_dir / "dataset.json").write_text("{}")
    (pred_dir / "plans.json").write_text("{}")
    return gt_dir, pred_dir


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_read_label_image_reverses_spacing_to_numpy_order(folders):
    gt_dir, _ = folders
    labels, spacing = read_label_image(str(gt_dir / "case_a.nii.gz"))
    assert labels.shape == SHAPE
    assert spacing == pytest.approx((2.5, 0.8, 1.0))


def test_score_with_regions_string(folders, tmp_path):
    gt_dir, pred_dir = folders
    out = tmp_path / "out"
    result = run_cli("score", gt_dir, pred_dir, "--regions", "WT=1,2,3;ET=3", "-o", out, "-np", "1")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["metrics.csv", "subsets.png", "summary.json", "summary.md"]
    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == ["trainer", "case", "subset", "n_modalities", "region", "dice", "hd95",
                            "lesion_dice", "lesion_hd95", "n_gt_lesions", "n_tp", "n_fp", "n_fn"]
    assert len(rows) == 6
    for row in rows:
        assert row["trainer"] == "predictions" and row["subset"] == "all" and row["n_modalities"] == ""
        dice_expected, hd95_expected = EXPECTED[(row["case"], row["region"])]
        assert float(row["dice"]) == pytest.approx(dice_expected)
        if hd95_expected is not None:
            assert float(row["hd95"]) == pytest.approx(hd95_expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_subset"]["predictions"]["WT"]["all"]["dice"]["mean"] == pytest.approx(0.75 / 3)
    assert summary["one_empty_rule_count"]["predictions"]["WT"] == 1
    assert "| region | trainer | all | mean |" in (out / "summary.md").read_text()
    assert "summary.md" in result.stdout


def test_score_with_dataset_json_subset_and_two_processes(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": BRATS_LABELS, "file_ending": ".nii.gz",
                                        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}}))
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "-djfile", dataset_json, "-o", out, "-np", "2",
                            "--trainer", "MyTrainer", "--subset", "t1c+t2f", "--hd95-variant", "pooled")
    assert code == 0, err
    rows = read_csv(out / "metrics.csv")
    assert {row["region"] for row in rows} == {"WT", "TC", "ET"}
    assert {(row["trainer"], row["subset"], row["n_modalities"]) for row in rows} == {("MyTrainer", "T1ce+FLAIR",
                                                                                        "2")}
    by_key = {(row["case"], row["region"]): float(row["dice"]) for row in rows}
    assert by_key[("case_b", "TC")] == pytest.approx(0.75)
    assert by_key[("case_a", "WT")] == 0.0
    assert json.loads((out / "summary.json").read_text())["conventions"]["hd95_variant"] == "pooled"


def test_parallel_scoring_equals_serial(folders):
    gt_dir, pred_dir = folders
    regions = {"WT": (1, 2, 3), "ET": (3,)}
    serial = score_prediction_folder(str(gt_dir), str(pred_dir), regions, trainer="t", num_processes=1)
    parallel = score_prediction_folder(str(gt_dir), str(pred_dir), regions, trainer="t", num_processes=2)
    assert serial == parallel


def test_several_folders_in_one_pool_match_single_folder_scoring(folders, tmp_path):
    """What `evaluate` does: one folder per trainer and subset, scored together (ground truth read once per case)."""
    gt_dir, pred_dir = folders
    perfect_dir = tmp_path / "perfect"
    shutil.copytree(gt_dir, perfect_dir)
    regions = {"WT": (1, 2, 3), "ET": (3,)}
    items = [PredictionFolder("A", "T1ce+FLAIR", str(pred_dir)), PredictionFolder("A", "all", str(perfect_dir)),
             PredictionFolder("B", "T2", str(perfect_dir))]
    records = score_prediction_folders(str(gt_dir), items, regions, num_processes=2)
    assert len(records) == 3 * 3 * 2
    single = score_prediction_folder(str(gt_dir), str(pred_dir), regions, trainer="A", subset="t1c,flair",
                                     num_processes=1)
    assert records[:6] == single
    assert {(r["trainer"], r["subset"], r["n_modalities"]) for r in records} == {
        ("A", "T1ce+FLAIR", 2), ("A", "all", None), ("B", "T2", 1)}
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in records[6:])


def test_missing_prediction_exits_2_naming_the_file(folders, tmp_path):
    gt_dir, pred_dir = folders
    os.remove(pred_dir / "case_b.nii.gz")
    result = run_cli("score", gt_dir, pred_dir, "--format", "msd", "-o", tmp_path / "out")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "case_b.nii.gz" in message and "no prediction" in message
    assert not (tmp_path / "out").exists()


def test_extra_prediction_exits_2_naming_the_file(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    write_labels(pred_dir / "case_z.nii.gz", np.zeros(SHAPE))
    code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "--format", "msd", "-o", tmp_path / "out")
    assert code == 2 and "case_z.nii.gz" in err and "without ground truth" in err


def test_shape_mismatch_exits_2_naming_the_file(folders, tmp_path):
    gt_dir, pred_dir = folders
    write_labels(pred_dir / "case_c.nii.gz", np.zeros((10, 20, 15)))
    result = run_cli("score", gt_dir, pred_dir, "--format", "msd", "-o", tmp_path / "out", "-np", "2")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "shape mismatch" in message and str(pred_dir / "case_c.nii.gz") in message


def test_spacing_mismatch_exits_2(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    write_labels(pred_dir / "case_a.nii.gz", np.zeros(SHAPE), spacing=(1.0, 1.0, 1.0))
    code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "--format", "msd", "-o", tmp_path / "out", "-np", "1")
    assert code == 2 and "spacing mismatch" in err and "case_a.nii.gz" in err


@pytest.mark.parametrize("change", ["origin", "direction"])
def test_shifted_or_flipped_prediction_exits_2(folders, tmp_path, capsys, change):
    gt_dir, pred_dir = folders
    image = sitk.ReadImage(str(pred_dir / "case_b.nii.gz"))
    if change == "origin":
        image.SetOrigin((5.0, 0.0, 0.0))
    else:
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(pred_dir / "case_b.nii.gz"))
    code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "--format", "msd", "-o", tmp_path / "out", "-np", "1")
    assert code == 2 and f"{change} mismatch" in err and "case_b.nii.gz" in err


def test_no_regions_exits_2_with_advice(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "-o", tmp_path / "out")
    assert code == 2 and "-djfile" in err and "--regions" in err


# ------------------------------------------------------------------------------------------------------ regions

def test_regions_from_dataset_json_labels_use_short_names():
    assert regions_from_labels(BRATS_LABELS) == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    plain = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3, "ignore": 4}
    assert regions_from_labels(plain) == {"NETC": (1,), "SNFH": (2,), "ET": (3,)}
    assert short_region_name("Whole_Tumour") == "WT" and short_region_name("edema") == "edema"


def test_parse_regions_and_presets():
    assert parse_regions("WT=1,2,3; TC=2+3 ;ET=3") == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    assert preset_regions("BraTS2021") == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert preset_regions("brats2023")["TC"] == (1, 3)
    assert preset_regions("msd")["TC"] == (2, 3)
    from nnunet_missingmod.conversion.formats import FORMAT_KEYS
    assert set(REGION_PRESETS) == set(FORMAT_KEYS)  # every FORMAT of convert/labels-back
    assert preset_regions("brats2018") == preset_regions("fets2022") == preset_regions("brats2021")
    assert preset_regions("brats2024") == preset_regions("brats2023")  # RC (4) in no region
    for bad in ("WT", "WT=a", "=1", "WT=0", "WT=1;WT=2", ""):
        with pytest.raises(MissingModError):
            parse_regions(bad)
    with pytest.raises(MissingModError, match="unknown label format"):
        preset_regions("brats2017")
    with pytest.raises(MissingModError, match="not both"):
        resolve_regions(regions_text="WT=1", label_format="msd")


def test_name_flag_names_the_model_in_every_output(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "score", gt_dir, pred_dir, "--regions", "WT=1,2,3;ET=3", "-o", out,
                                 "-np", "1", "--name", "nnU-Net dropout")
    assert code == 0, err
    assert {row["trainer"] for row in read_csv(out / "metrics.csv")} == {"nnU-Net dropout"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainers"] == ["nnU-Net dropout"]  # the plots' legends and titles are drawn from these names
    assert "| WT | nnU-Net dropout |" in (out / "summary.md").read_text()
    assert "nnU-Net dropout WT: Dice" in stdout and "predictions" not in stdout.replace(str(pred_dir), "")
    code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "--regions", "WT=1", "-o", out, "--name", " ")
    assert code == 2 and "--name must not be empty" in err


# ------------------------------------------------------------------------------------------------- lesion-wise
LESION_SHAPE = (40, 40, 40)  # 1 mm voxels: a lesion's volume in mm³ is its voxel count


def write_lesion_case(tmp_path, extra_gt_lesion):
    """GT: a 5×5×5 lesion (125 mm³), found exactly, and ``extra_gt_lesion`` (a slice of the volume), missed."""
    gt, pred = np.zeros(LESION_SHAPE, np.uint8), np.zeros(LESION_SHAPE, np.uint8)
    gt[2:7, 2:7, 2:7] = 1
    pred[2:7, 2:7, 2:7] = 1
    gt[extra_gt_lesion] = 1
    for folder, array in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_labels(tmp_path / folder / "case.nii.gz", array, spacing=(1.0, 1.0, 1.0))
    return tmp_path / "gt", tmp_path / "pred"


def test_score_cli_writes_the_lesionwise_columns_after_the_whole_volume_ones(tmp_path):
    from nnunet_missingmod.evaluation.lesionwise import MISSED_LESION_HD95
    gt_dir, pred_dir = write_lesion_case(tmp_path, np.s_[25:30, 25:30, 25:30])  # a second 125 mm³ lesion, missed
    result = run_cli("score", gt_dir, pred_dir, "--regions", "WT=1", "-o", tmp_path / "out", "-np", "1")
    assert result.returncode == 0, result.stderr
    (row,) = read_csv(tmp_path / "out" / "metrics.csv")
    assert float(row["dice"]) == pytest.approx(2 * 125 / (125 + 250))  # whole volume: unchanged, first
    assert float(row["lesion_dice"]) == pytest.approx(0.5)  # (1 + 0) / 2 lesions
    assert float(row["lesion_hd95"]) == pytest.approx(MISSED_LESION_HD95 / 2)  # (0 + 374) / 2
    assert (row["n_gt_lesions"], row["n_tp"], row["n_fp"], row["n_fn"]) == ("2", "1", "0", "1")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["conventions"]["lesion_protocol"] == "gli"
    assert summary["lesionwise"]["per_subset"]["pred"]["WT"]["all"]["lesion_dice"]["mean"] == pytest.approx(0.5)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "Protocol: BraTS-GLI (adult glioma): GT dilated 3 times, lesions of at most 50 mm³ ignored" in text
    assert "| pred | all | 0.500 ± – | 187.00 ± – |" in text


def test_lesion_protocol_flag_changes_which_lesions_count(tmp_path, capsys):
    gt_dir, pred_dir = write_lesion_case(tmp_path, np.s_[30, 30, 30:33])  # a missed 3 mm³ lesion
    counts = {}
    for protocol in ("gli", "met"):
        out = tmp_path / protocol
        code, _, err = run_main(capsys, "score", gt_dir, pred_dir, "--regions", "WT=1", "-o", out, "-np", "1",
                                "--lesion-protocol", protocol)
        assert code == 0, err
        (row,) = read_csv(out / "metrics.csv")
        counts[protocol] = (row["n_gt_lesions"], row["n_tp"], row["n_fp"], row["n_fn"], float(row["lesion_dice"]))
        assert f"--lesion-protocol {protocol})" in (out / "summary.md").read_text()
    assert counts["gli"] == ("1", "1", "0", "0", 1.0)  # 3 mm³ <= 50: GLI ignores it
    assert counts["met"] == ("2", "1", "0", "1", 0.5)  # 3 mm³ > 2: MET counts it, and it was missed


def test_lesion_protocol_help_names_each_challenge_and_its_thresholds(capsys):
    from nnunet_missingmod.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "met = BraTS-MET (brain metastases): GT dilated 1 time, lesions of at most 2 mm³ ignored" in text
    assert "gli = BraTS-GLI (adult glioma): GT dilated 3 times, lesions of at most 50 mm³ ignored" in text
