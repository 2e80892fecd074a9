"""`nnunet-missingmod evaluate` end to end on the _debug model and the tiny dataset."""
import csv
import json
import shutil

import SimpleITK as sitk

from cli_helpers import run_in_process
from conftest import CASE_IDS, DATASET_ID, nnunet_env, run_command
from matplotlib.image import imread

from nnunet_missingmod.evaluation.figures import figure_pixels
from nnunet_missingmod.modalities import SUBSET_NAMES


def flipped_voxels(folder, reference_folder) -> tuple:
    """(voxels whose label differs, voxels) between the segmentations of ``folder`` (every case) and
    ``reference_folder``."""
    files = sorted(folder.glob("*.nii.gz"))
    assert len(files) == len(CASE_IDS)
    pairs = [(sitk.GetArrayFromImage(sitk.ReadImage(str(f))),
              sitk.GetArrayFromImage(sitk.ReadImage(str(reference_folder / f.name)))) for f in files]
    return sum(int((a != b).sum()) for a, b in pairs), sum(a.size for a, _ in pairs)


def test_evaluate_writes_the_fifteen_subset_table(nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path):
    out = tmp_path / "eval"
    result = run_command(["nnunet-missingmod", "evaluate", "-i", tiny_preprocessed / "imagesTr",
                          "-l", tiny_preprocessed / "labelsTr", "-d", DATASET_ID, "-c", "3d_fullres", "-f", "0",
                          "-tr", "ModalityDropoutTrainer_debug", "ModalityDropoutTrainer_debug",
                          "-device", "cpu", "--disable_tta", "-np", "1", "-o", out], nnunet_env(nnunet_root))
    assert "wrote" in result.stdout
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["trainer", "case", "subset", "n_modalities", "region", "dice", "hd95",
                            "lesion_dice", "lesion_hd95", "n_gt_lesions", "n_tp", "n_fp", "n_fn"]
    # two trainers (the same model twice, labelled apart) x 6 cases x 15 subsets x 3 regions
    assert len(rows) == 2 * 6 * 15 * 3
    assert {r["subset"] for r in rows} == set(SUBSET_NAMES)
    assert {r["trainer"] for r in rows} == {"ModalityDropoutTrainer_debug", "ModalityDropoutTrainer_debug#2"}
    assert {r["region"] for r in rows} == {"WT", "TC", "ET"}
    # each subset's prediction exists in the original geometry, and was made with the right channels zeroed:
    # the full-set prediction equals the stock predictor's. evaluate passes a tile's subsets through the network as
    # one batch (--subset-batch 15), whose convolutions may sum in another order: a voxel whose classes tie within
    # float rounding may flip (tests/inference/test_subset_batch.py checks that rule on logits), rare against what a
    # wrong channel changes
    stock = tmp_path / "stock"
    run_command(["nnUNetv2_predict", "-i", tiny_preprocessed / "imagesTr", "-o", stock, "-d", DATASET_ID,
                 "-c", "3d_fullres", "-f", "0", "-tr", "ModalityDropoutTrainer_debug", "-device", "cpu",
                 "--disable_tta", "-npp", "1", "-nps", "1"], nnunet_env(nnunet_root))
    full = out / "predictions" / "ModalityDropoutTrainer_debug" / "T1+T1ce+T2+FLAIR"
    flipped, voxels = flipped_voxels(stock, full)
    assert flipped <= voxels // 1000
    # a subset's prediction equals `predict` on a folder that holds only those sequences
    only = tmp_path / "only_t1ce_flair"
    only.mkdir()
    for case_file in (tiny_preprocessed / "imagesTr").glob("*_000[13].nii.gz"):
        shutil.copy(case_file, only / case_file.name)
    run_command(["nnunet-missingmod", "predict", "-i", only, "-o", tmp_path / "pred_only", "-d", DATASET_ID,
                 "-c", "3d_fullres", "-f", "0", "-tr", "ModalityDropoutTrainer_debug", "-device", "cpu",
                 "--disable_tta"], nnunet_env(nnunet_root))
    subset_folder = out / "predictions" / "ModalityDropoutTrainer_debug" / "T1ce+FLAIR"
    flipped, voxels = flipped_voxels(tmp_path / "pred_only", subset_folder)
    assert flipped <= voxels // 1000
    apart, _ = flipped_voxels(tmp_path / "pred_only", full)
    print(f"evaluate vs predict: {flipped} of {voxels} voxels differ; T1ce+FLAIR vs the full set: {apart}")
    assert apart > voxels // 1000  # the rule tells these subsets apart

    table = (out / "summary.md").read_text()
    assert "| region | trainer | " + " | ".join(SUBSET_NAMES) + " | mean |" in table
    assert "Protocol: BraTS-GLI (adult glioma)" in table  # the lesion-wise table, default protocol
    lesionwise = json.loads((out / "summary.json").read_text())["lesionwise"]
    assert list(lesionwise["per_subset"]["ModalityDropoutTrainer_debug"]["ET"]) == list(SUBSET_NAMES)
    assert (out / "robustness.png").stat().st_size > 10000 and (out / "subsets.png").stat().st_size > 10000
    assert len(list((out / "cases").glob("*.png"))) == 3  # the best, median and worst case
    # the same model under two names: every paired difference is exactly 0 and no test can be run on them
    comparisons = json.loads((out / "summary.json").read_text())["paired_comparisons"]
    assert len(comparisons) == 3 * 2  # regions x metrics
    for comparison in comparisons:
        assert comparison["n_cases"] == 6 and comparison["mean_difference"] == 0
        assert comparison["wilcoxon_p"] is None


def test_evaluate_rejects_incomplete_cases(nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_preprocessed / "imagesTr", images)
    (images / "BraTS2021_00002_0003.nii.gz").unlink()
    result = run_in_process(["evaluate", "-i", images, "-l", tiny_preprocessed / "labelsTr",
                             "-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", "ModalityDropoutTrainer_debug",
                             "-device", "cpu", "-o", tmp_path / "out"], nnunet_env(nnunet_root))
    assert result.returncode == 2
    assert "BraTS2021_00002 (missing FLAIR)" in result.stderr


def test_evaluate_checks_labels_before_predicting(nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(tiny_preprocessed / "labelsTr", labels)
    (labels / "BraTS2021_00004.nii.gz").unlink()
    result = run_in_process(["evaluate", "-i", tiny_preprocessed / "imagesTr", "-l", labels,
                             "-d", DATASET_ID, "-c", "3d_fullres", "-f", "0", "-tr", "ModalityDropoutTrainer_debug",
                             "-device", "cpu", "-o", tmp_path / "out"], nnunet_env(nnunet_root))
    assert result.returncode == 2 and "no label image" in result.stderr and "BraTS2021_00004" in result.stderr
    assert not (tmp_path / "out" / "predictions").exists()  # nothing was predicted


def test_evaluate_draws_the_pictures_of_every_case_leaving_out_the_subsets_not_evaluated(
        nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path):
    out = tmp_path / "eval"
    result = run_in_process(["evaluate", "-i", tiny_preprocessed / "imagesTr",
                             "-l", tiny_preprocessed / "labelsTr", "-d", DATASET_ID, "-c", "3d_fullres", "-f", "0",
                             "-tr", "ModalityDropoutTrainer_debug", "--subsets", "T1+T1ce+T2+FLAIR;FLAIR",
                             "--figures", "all", "-device", "cpu", "--disable_tta", "-np", "1", "-o", out],
                            nnunet_env(nnunet_root))
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in (out / "cases").iterdir()) == [f"{case}.png" for case in CASE_IDS]
    # 4 sequences, the ground truth, full set and FLAIR; FLAIR+T1ce+T2 and FLAIR+T1ce left out with a note each
    assert imread(out / "cases" / f"{CASE_IDS[0]}.png").shape[:2] == figure_pixels(1, 7, n_notes=2)
    assert "pictures of 6 case(s)" in result.stdout and "FLAIR+T1ce: not evaluated" in result.stdout


def test_evaluate_refuses_a_bad_figure_count_before_loading_a_model(nnunet_root, tmp_path):
    result = run_in_process(["evaluate", "-i", tmp_path, "-l", tmp_path, "-m", tmp_path / "none",
                             "--figures", "some", "-o", tmp_path / "out"], nnunet_env(nnunet_root))
    assert result.returncode == 2 and "--figures" in result.stderr and "'some'" in result.stderr
