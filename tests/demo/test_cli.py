"""``nnunet-missingmod demo``: the real command end to end with the ``debug`` budget (2 iterations per trainer),
the reuse of finished stages on a rerun, the refusal of a foreign folder, and its help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_in_process
from conftest import TEST_THREADS
from matplotlib.image import imread

from nnunet_missingmod.evaluation.figures import figure_pixels

TRAINERS = ["FullSetTrainer", "ModalityDropoutTrainer"]
ROUTED = "routed: stock + ModalityDropoutTrainer"  # complete scans to stock, others to the dropout model
COLUMNS = ["stock nnU-Net", "ModalityDropoutTrainer", ROUTED]
CASES = 2  # and 2 held-out test cases
METRICS = ["full-set Dice", "15-subset mean Dice", "mean Dice, 1 sequence", "mean Dice, 2 sequences",
           "mean Dice, 3 sequences", "mean Dice, 4 sequences", "AURC (0-1)"]


def demo(*args, expect_ok=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=TEST_THREADS)
    result = subprocess.run([str(Path(sys.executable).parent / "nnunet-missingmod"), "demo", *map(str, args)],
                            env=env, capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"demo {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def debug_demo(out: Path, *extra, expect_ok=True) -> subprocess.CompletedProcess:
    return demo("--out", out, "--budget", "debug", "--device", "cpu", "--cases", CASES, "--trainers", *TRAINERS,
                "--routed", "ModalityDropoutTrainer", *extra, expect_ok=expect_ok)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, debug_demo(out)


def checkpoints(out: Path):
    return {t: out / "nnUNet_results" / "Dataset500_DemoTrain" / f"{t}_debug__nnUNetPlans__3d_fullres" / "fold_all"
            / "checkpoint_final.pth" for t in TRAINERS}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_the_comparison_of_this_run(demo_run):
    out, result = demo_run
    assert all(p.is_file() for p in checkpoints(out).values())
    train_ids = sorted(p.name for p in (out / "sources" / "train").iterdir())
    test_ids = sorted(p.name for p in (out / "sources" / "test").iterdir())
    assert train_ids == ["BraTS2021_00000", "BraTS2021_00001"]
    assert test_ids == ["BraTS2021_01000", "BraTS2021_01001"]  # held out: never trained on

    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["columns"] == COLUMNS
    assert comparison["test_cases"] == test_ids
    assert [(r["region"], r["metric"]) for r in comparison["rows"]] == [
        (region, metric) for region in ("WT", "TC", "ET") for metric in METRICS]
    # the numbers are those of this run's evaluation of each model
    for trainer, column in zip(TRAINERS, COLUMNS):
        summary = json.loads((out / "evaluation" / f"{trainer}_debug" / "summary.json").read_text())
        assert summary["trainers"] == [f"{trainer}_debug"]
        assert len(summary["subsets"]) == 15
        for region in ("WT", "TC", "ET"):
            rows = {r["metric"]: r for r in comparison["rows"] if r["region"] == region}
            expected = summary["mean_over_subsets"][f"{trainer}_debug"][region]["dice"]["mean"]
            assert rows["15-subset mean Dice"]["values"][column] == pytest.approx(expected)
            assert rows["AURC (0-1)"]["values"][column] == pytest.approx(
                summary["aurc"][f"{trainer}_debug"][region]["normalised"])
    # the routed pair: stock's numbers on complete scans, the dropout model's on every smaller subset
    for region in ("WT", "TC", "ET"):
        rows = {r["metric"]: r["values"] for r in comparison["rows"] if r["region"] == region}
        assert rows["full-set Dice"][ROUTED] == pytest.approx(rows["full-set Dice"]["stock nnU-Net"])
        for k in (1, 2, 3):
            metric = f"mean Dice, {k} sequence{'s' if k > 1 else ''}"
            assert rows[metric][ROUTED] == pytest.approx(rows[metric]["ModalityDropoutTrainer"])
    routed_summary = json.loads(
        (out / "evaluation" / "routed_ModalityDropoutTrainer_debug" / "summary.json").read_text())
    assert comparison["trainers"][ROUTED] in routed_summary["trainers"]
    for row in comparison["rows"]:  # the best mark is on a maximum of the row
        known = [v for v in row["values"].values() if v is not None]
        assert row["best"] and all(row["values"][c] == max(known) for c in row["best"])

    markdown = (out / "comparison.md").read_text()
    wt_mean = next(r for r in comparison["rows"] if r["region"] == "WT" and r["metric"] == "15-subset mean Dice")
    assert f"{wt_mean['values']['stock nnU-Net']:.3f}" in markdown
    assert "| WT | 15-subset mean Dice |" in markdown
    for plot in comparison["plots"]:
        assert Path(plot).is_file() and Path(plot).stat().st_size > 0
    assert str(out / "comparison.png") in comparison["plots"]
    assert any(p.endswith("robustness.png") for p in comparison["plots"])
    # every model's segmentations of the median test case side by side (9 columns: 4 sequences, ground truth,
    # 4 scenarios), and each evaluation's own pictures of its (here: both) test cases
    assert str(out / "comparison_case.png") in comparison["plots"]
    assert imread(out / "comparison_case.png").shape[:2] == figure_pixels(len(TRAINERS), 9)
    for trainer in TRAINERS:
        cases = out / "evaluation" / f"{trainer}_debug" / "cases"
        assert sorted(p.name for p in cases.iterdir()) == [f"{case}.png" for case in test_ids]
    # the terminal shows the estimate, the table, and where nnU-Net's output went
    assert result.stdout.startswith("demo: budget debug = 2 training iterations per trainer")
    assert "stock nnU-Net" in result.stdout and "15-subset mean Dice" in result.stdout
    assert (out / "logs" / "train_FullSetTrainer_debug.log").is_file()
    assert "Epoch time" in (out / "logs" / "train_FullSetTrainer_debug.log").read_text()


@pytest.mark.slow
def test_rerun_reuses_every_stage_without_retraining(demo_run):
    out, _ = demo_run
    watched = list(checkpoints(out).values()) + [out / "evaluation" / f"{t}_debug" / "summary.json" for t in TRAINERS]
    before = {p: p.stat().st_mtime_ns for p in watched}
    result = debug_demo(out)
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    stage_lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(stage_lines) == 3 + 2 * len(TRAINERS) + 1  # + the routed pair's evaluation
    assert all(": reused (" in line for line in stage_lines), stage_lines
    assert json.loads((out / "comparison.json").read_text())["columns"] == COLUMNS


@pytest.mark.slow
def test_rerun_with_other_data_settings_is_refused(demo_run):
    out, _ = demo_run
    result = debug_demo(out, "--cases", CASES + 4, expect_ok=False)  # the last --cases wins
    assert result.returncode == 2
    assert f"made with --cases {CASES}" in result.stderr


def demo_in_process(*args) -> tuple:
    """The command's refusals run in this process (no torch import per test): (exit code, stdout, stderr)."""
    result = run_in_process(["demo", *args], dict(os.environ))
    return result.returncode, result.stdout, result.stderr


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    code, _, err = demo_in_process("--out", tmp_path, "--budget", "debug", "--device", "cpu", "--cases", CASES,
                                   "--trainers", *TRAINERS, "--routed", "ModalityDropoutTrainer")
    assert code == 2
    assert f"--out {tmp_path}: the folder is not empty and was not made by the demo" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]  # nothing written


def test_unknown_trainer_is_refused_with_the_valid_names(tmp_path):
    code, _, err = demo_in_process("--out", tmp_path / "out", "--device", "cpu", "--trainers",
                                   "FullSetTrainer", "NoSuchTrainer")
    assert code == 2
    assert "unknown trainer(s) NoSuchTrainer; valid: " in err
    assert "ModalityDropoutTrainer" in err.split("valid: ")[1]
    assert not (tmp_path / "out").exists()


def test_a_routed_pair_needs_stock_and_its_trainer_among_the_trainers(tmp_path):
    code, _, err = demo_in_process("--out", tmp_path / "out", "--device", "cpu", "--budget", "debug",
                                   "--trainers", "FullSetTrainer", "--routed", "ModalityDropoutTrainer")
    assert code == 2
    assert "--routed ModalityDropoutTrainer: the routed pair needs FullSetTrainer and ModalityDropoutTrainer" in err
    assert not (tmp_path / "out").exists()


def test_help_documents_every_flag():
    code, out, _ = demo_in_process("--help")
    assert code == 0
    for flag in ("--out", "--trainers", "--budget", "--device", "--cases", "--routed", "--verbose"):
        assert flag in out
    for word in ("small", "medium", "large", "auto", "cpu", "cuda", "demo_output"):
        assert word in out
