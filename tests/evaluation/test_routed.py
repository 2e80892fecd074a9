"""``evaluate --full-set-model``: the routed entry scores the full-set model's full-set predictions and the robust
model's other subsets, without predicting again. Two real nnU-Net model folders (the tiny untrained U-Net of
inference/test_cli, loaded by nnU-Net's own code) whose output biases make their predictions differ on every case:
one predicts the whole volume as enhancing tumour, the other predicts nothing."""
import csv
import json
import shutil

import pytest
import torch
from cli_helpers import run_cli, write_case, write_label

from nnunet_missingmod.cli import main
from nnunet_missingmod.evaluation.scoring import RECORD_FIELDS
from nnunet_missingmod.modalities import FULL_SET

ROBUST, FULL = "nnUNetTrainer", "nnUNetTrainer#2"  # both folders hold stock nnUNetTrainer checkpoints
ROUTED = f"{ROBUST}+{FULL}_routed"


def biased_copy(source, target, bias):
    """A copy of the model folder whose segmentation layers' biases are ``bias``: sigmoid regions all on (large
    positive) or all off (large negative), so its predictions do not depend on the random weights."""
    shutil.copytree(source, target)
    checkpoint_path = target / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    seg_biases = [k for k in checkpoint["network_weights"]
                  if k.startswith("decoder.seg_layers.") and k.endswith(".bias")]
    assert seg_biases
    for key in seg_biases:
        checkpoint["network_weights"][key].fill_(bias)
    torch.save(checkpoint, checkpoint_path)
    return target


def rows_by_entry(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(RECORD_FIELDS)
    by_entry = {}
    for row in rows:
        by_entry.setdefault(row["trainer"], {})[(row["case"], row["subset"], row["region"])] = \
            {k: row[k] for k in RECORD_FIELDS if k != "trainer"}
    return by_entry


def test_routed_entry_scores_full_sets_of_the_full_set_model_and_the_rest_of_the_robust_one(tmp_path, model_folder):  # noqa: F811,E501
    robust = biased_copy(model_folder, tmp_path / "robust", -50.0)  # predicts nothing
    full = biased_copy(model_folder, tmp_path / "full", 50.0)  # predicts every voxel as enhancing tumour
    for i in range(2):
        write_case(tmp_path / "images", f"case_{i}", seed=i)
        write_label(tmp_path / "labels", f"case_{i}")
    out = tmp_path / "eval"
    result = run_cli("evaluate", "-i", tmp_path / "images", "-l", tmp_path / "labels", "-m", robust,
                  "--full-set-model", full, "-f", "0", "--subsets", f"T1ce;T2+FLAIR;{FULL_SET.name}", "-np", "1",
                  "--disable_tta", "-device", "cpu", "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"{ROUTED}: {FULL}'s {FULL_SET.name} predictions, {ROBUST}'s for the other subsets" in result.stdout
    assert sorted(p.name for p in (out / "predictions").iterdir()) == sorted([ROBUST, FULL])  # nothing predicted twice

    entries = rows_by_entry(out / "metrics.csv")
    assert list(entries) == [ROBUST, FULL, ROUTED]
    assert set(entries[ROUTED]) == set(entries[ROBUST]) == set(entries[FULL])
    for key, row in entries[ROUTED].items():
        source = FULL if key[1] == FULL_SET.name else ROBUST
        other = ROBUST if source == FULL else FULL
        assert row == entries[source][key]
        assert row != entries[other][key]  # the two models differ everywhere, so a wrong route would show

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainers"] == [ROBUST, FULL, ROUTED]
    assert {(c["trainer_a"], c["trainer_b"]) for c in summary["paired_comparisons"]} == {
        (ROBUST, FULL), (ROBUST, ROUTED), (FULL, ROUTED)}
    assert set(summary["lesionwise"]["per_subset"]) == {ROBUST, FULL, ROUTED}
    text = (out / "summary.md").read_text()
    for region in ("WT", "TC", "ET"):
        assert f"| {region} | {ROUTED} |" in text  # a row in the Dice and HD95 tables
    assert f"| {ROUTED} | {FULL_SET.name} |" in text  # and in the lesion-wise table
    # the pictures: a row per entry, only the full-set column (the other README scenarios were not evaluated);
    # the routed row's full set is the full-set model's, every voxel enhancing (red), the robust one's is empty
    from evaluation.test_figures import RED, _count, _panel
    from matplotlib.image import imread

    from nnunet_missingmod.evaluation.figures import figure_pixels
    picture = imread(out / "cases" / "case_0.png")
    assert picture.shape[:2] == figure_pixels(3, 6, n_notes=3)
    assert [_count(_panel(picture, 5, row=r), RED) > 1000 for r in range(3)] == [False, True, True]


def test_full_set_model_folder_is_checked_before_anything_loads(tmp_path, capsys, model_folder):  # noqa: F811
    (tmp_path / "no_checkpoint").mkdir()
    for name in ("plans.json", "dataset.json"):
        shutil.copy(model_folder / name, tmp_path / "no_checkpoint" / name)
    common = ["evaluate", "-i", str(tmp_path), "-l", str(tmp_path), "-m", str(model_folder), "-f", "0",
              "-o", str(tmp_path / "out")]
    assert main(common + ["--full-set-model", str(tmp_path / "absent")]) == 2
    assert f"--full-set-model: model folder {tmp_path / 'absent'} does not exist" in capsys.readouterr().err
    assert main(common + ["--full-set-model", str(tmp_path / "no_checkpoint")]) == 2
    assert "no checkpoint_final.pth for fold(s) 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_names_the_routed_entry(capsys):
    from nnunet_missingmod.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--full-set-model MODEL_FOLDER" in text and "'<model>+<full-set model>_routed'" in text
