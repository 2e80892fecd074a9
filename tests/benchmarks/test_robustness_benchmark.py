"""benchmarks/robustness_benchmark.py end to end at toy size: ``ModalityDropoutTrainer_debug`` (2 iterations), two
seeds, named twice (an identical pair), on the session's preprocessed tiny dataset (fold 0), evaluated by
``evaluate`` on four generated held-out cases. Seed 0 is the session's ``trained_dropout_model``, placed where an
interrupted run would have left it (so only seed 1 is trained here, and the rerun logic is exercised); the report's
numbers are recomputed from evaluate's metrics.csv files, the identical pair's interval is exactly [0, 0], and the
pairing code is checked on the two seeds as two different models."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import DATASET_ID, DATASET_NAME, PHANTOM_SPACING_MM, nnunet_env, run_command
from nnunet_missingmod.evaluation.report import RecordTable, bootstrap_interval, read_metrics_csv
from nnunet_missingmod.modalities import FULL_SET, SUBSET_NAMES

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "robustness_benchmark.py"
TRAINER = "ModalityDropoutTrainer"
TRAINERS = [TRAINER, TRAINER]  # the same models twice: reported as ModalityDropoutTrainer and ModalityDropoutTrainer#2
TEST_CASES, SEEDS, RESAMPLES, FOLD = 4, 2, 2000, "0"
VIEWS = ("full_set", "mean_over_subsets", "worst_subset")


def load_script():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports machine.py from its folder
    try:
        spec = importlib.util.spec_from_file_location("robustness_benchmark", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def benchmark(out: Path, env: dict, *extra, expect_ok=True):
    return run_command([sys.executable, SCRIPT, "--out", out, "--dataset-id", DATASET_ID, "--test-cases",
                        TEST_CASES, "--budgets", "debug", "--seeds", SEEDS, "--trainers", *TRAINERS, "--jobs", 2,
                        "--bootstrap", RESAMPLES, "--fold", FOLD, *extra], env, expect_ok=expect_ok)


@pytest.fixture(scope="module")
def run(nnunet_root, tiny_preprocessed, trained_dropout_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness") / "out"
    # what a run stopped after its first training leaves: the marker and seed 0's finished model
    module = load_script()
    out.mkdir()
    settings = module.DataSettings(PHANTOM_SPACING_MM, 0, TEST_CASES, DATASET_ID, FOLD)
    (out / module.MARKER).write_text(json.dumps(asdict(settings)))
    seed0 = out / "results" / "seed_0" / DATASET_NAME / trained_dropout_model.name
    shutil.copytree(trained_dropout_model, seed0)
    started = time.monotonic()
    result = benchmark(out, nnunet_env(nnunet_root))
    print(f"\nrobustness benchmark (1 training, 2 evaluations): {time.monotonic() - started:.1f} s")
    return out, result


def test_heldout_kinds_have_at_least_a_fifth_without_et():
    kinds = load_script().heldout_kinds
    for n in range(1, 41):
        k = kinds(n)
        assert len(k) == n and k.count("no_enhancing") >= n / 5
        assert set(k) <= {"no_enhancing", "classic", "no_necrosis"}
    assert kinds(30).count("no_enhancing") == 6


@pytest.mark.slow
def test_heldout_set_generated_at_the_datasets_spacing(run):
    out, _ = run
    labels = sorted((out / "heldout_raw").glob("Dataset*/labelsTr/*.nii.gz"))
    assert len(labels) == TEST_CASES
    no_et = [p for p in labels if not (np.asarray(nib.load(p).dataobj) == 3).any()]  # converted: ET = 3
    assert len(no_et) >= math.ceil(TEST_CASES / 5)
    assert nib.load(labels[0]).header.get_zooms()[:3] == pytest.approx((PHANTOM_SPACING_MM,) * 3)
    assert len(json.loads((out / "heldout_cases.json").read_text())) == TEST_CASES


def seed_records(out: Path):
    return [read_metrics_csv(str(out / "evaluation" / f"seed_{s}" / f"{TRAINER}_debug" / "metrics.csv"))
            for s in range(SEEDS)]


def per_case(records, region: str, view: str, metric: str = "dice"):
    """case -> the view's value in one seed's records, computed here from the rows."""
    values = {}
    for r in records:
        if r["region"] == region:
            values.setdefault(r["case"], {})[r["subset"]] = r[metric]
    assert all(set(v) == set(SUBSET_NAMES) for v in values.values())  # all 15 subsets evaluated
    pick = {"full_set": lambda v: v[FULL_SET.name], "mean_over_subsets": lambda v: float(np.mean(list(v.values()))),
            "worst_subset": lambda v: min(v.values())}[view]
    return {case: pick(v) for case, v in values.items()}


@pytest.mark.slow
def test_only_the_missing_seed_was_trained(run):
    out, result = run
    assert "training: 1 run(s) to do" in result.stdout and "evaluation: 2 call(s) to do" in result.stdout
    assert len(list((out / "results").glob("seed_*/*/*/fold_0/checkpoint_final.pth"))) == SEEDS


@pytest.mark.slow
def test_report_means_follow_from_evaluates_metrics(run):
    out, _ = run
    report = json.loads((out / "report.json").read_text())
    seeds = seed_records(out)
    for metric in ("dice", "lesion_dice"):
        for view in VIEWS:
            per_seed = [float(np.mean(list(per_case(rs, "WT", view, metric).values()))) for rs in seeds]
            row = next(r for r in report["arms"] if r["trainer"] == TRAINER and r["region"] == "WT"
                       and r["metric"] == metric and r["view"] == view)
            assert row["per_seed"] == pytest.approx(per_seed)
            assert row["sd"] == pytest.approx(float(np.std(per_seed, ddof=1)))
            assert row["n_seeds"] == SEEDS


@pytest.mark.slow
def test_pairing_on_two_different_models(run):
    """The report's pairing functions on the two seeds as two models: seed averaging, per-case differences, the
    shared bootstrap interval and the ranking rule, against a computation from the rows."""
    out, _ = run
    module = load_script()
    seeds = seed_records(out)
    tables = [RecordTable(rs) for rs in seeds]
    name = f"{TRAINER}_debug"
    for view in VIEWS:
        for region in ("WT", "ET"):
            a, b = (per_case(rs, region, view) for rs in seeds)
            averaged = module.seed_averaged(tables, name, region, "dice", view)
            assert averaged == pytest.approx({c: (a[c] + b[c]) / 2 for c in a})
            entry = module.pair_entry(module.per_case_view(tables[1], name, region, "dice", view),
                                      module.per_case_view(tables[0], name, region, "dice", view), RESAMPLES,
                                      ("seed 1", "seed 0"), view)
            cases = sorted(a)
            differences = np.array([b[c] - a[c] for c in cases])
            assert [entry["per_case_difference"][c] for c in cases] == pytest.approx(list(differences))
            assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(bootstrap_interval(differences, RESAMPLES))
            assert entry["n_cases"] == TEST_CASES
            excludes_zero = entry["ci_low"] > 0 or entry["ci_high"] < 0
            assert (entry["ranking"] is not None) == excludes_zero


@pytest.mark.slow
def test_identical_pair_has_interval_zero(run):
    out, _ = run
    report = json.loads((out / "report.json").read_text())
    assert {(p["model"], p["reference"]) for p in report["pairs"]} == {(f"{TRAINER}#2", TRAINER)}
    assert len(report["pairs"]) == 3 * 2 * 3  # regions x (Dice, lesion-wise Dice) x views
    for p in report["pairs"]:
        assert (p["ci_low"], p["ci_high"], p["mean_difference"], p["ranking"]) == (0.0, 0.0, 0.0, None)
        assert p["n_cases"] == TEST_CASES
    with open(out / "report_pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report["pairs"]) and {r["ci_low"] for r in rows} == {"0.0"}
    markdown = (out / "report.md").read_text()
    assert "95 % interval" in markdown and f"`{TRAINER}#2`" in markdown and "[+0.000, +0.000]" in markdown
    assert "no ranking" in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_only_reports_the_seeds_evaluated_so_far_while_another_run_holds_the_folder(run, nnunet_root,
                                                                                            tmp_path, capsys):
    """--report-only beside a run still going: seed 1 not evaluated yet, a second budget with nothing evaluated,
    OUT's lock held by another process of ours (here this one, the report runs in a subprocess); --report-to writes
    the report of one of the trainers elsewhere and leaves OUT's report as it was."""
    from nnunet_missingmod.atomic_io import FOLDER_LOCK_NAME, claim_folder, lock_is_held, release_folder
    out, _ = run
    partial = tmp_path / "partial"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("results", FOLDER_LOCK_NAME))
    shutil.rmtree(partial / "evaluation" / "seed_1")
    claim_folder(str(partial), "robustness benchmark")
    try:
        result = benchmark(partial, nnunet_env(nnunet_root), "--report-only", "--budgets", "debug", "small")
        assert lock_is_held(str(partial / FOLDER_LOCK_NAME))
    finally:
        release_folder(str(partial))
    assert "training:" not in result.stdout and "evaluation:" not in result.stdout
    assert f"2 iterations: seed(s) 0 of {SEEDS}" in result.stdout and "left out" in result.stdout
    report = json.loads((partial / "report.json").read_text())
    assert report["budgets"] == [{"budget": "debug", "iterations": 2, "seeds": [0]}]
    assert report["left_out"] == ["small"]
    seed0 = seed_records(out)[0]
    for view in VIEWS:
        row = next(r for r in report["arms"] if r["trainer"] == TRAINER and r["region"] == "WT"
                   and r["metric"] == "dice" and r["view"] == view)
        assert row["n_seeds"] == 1 and row["sd"] is None
        assert row["per_seed"] == pytest.approx([float(np.mean(list(per_case(seed0, "WT", view).values())))])
    markdown = (partial / "report.md").read_text()
    assert "finished so far" in markdown and f"seed(s) 0 of {SEEDS}" in markdown and "200 iterations: none yet" \
        in markdown
    elsewhere = tmp_path / "elsewhere" / "report"
    code, err = main_in_process(capsys, partial, "--report-only", "--report-to", elsewhere, "--trainers", TRAINER)
    assert code == 0, err
    assert json.loads((elsewhere / "report.json").read_text())["budgets"] == report["budgets"]
    assert {r["trainer"] for r in json.loads((elsewhere / "report.json").read_text())["arms"]} == {TRAINER}
    assert json.loads((partial / "report.json").read_text()) == report  # OUT's report untouched
    not_a_folder = tmp_path / "report.md"
    not_a_folder.write_text("mine")
    code, err = main_in_process(capsys, partial, "--report-only", "--report-to", not_a_folder)
    assert code == 2 and err.strip().count("\n") == 0 and f"--report-to {not_a_folder} is a file" in err
    assert not_a_folder.read_text() == "mine"
    with pytest.raises(SystemExit) as refused:
        main_in_process(capsys, partial, "--report-to", elsewhere)
    assert refused.value.code == 2 and "--report-to needs --report-only" in capsys.readouterr().err
    shutil.rmtree(partial / "evaluation" / "seed_0")
    result = benchmark(partial, nnunet_env(nnunet_root), "--report-only", expect_ok=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "no budget has a seed evaluated for every trainer" in result.stderr


@pytest.mark.slow
def test_rerun_skips_finished_work(run, nnunet_root):
    out, _ = run
    before = (out / "report.json").read_text()
    checkpoint = next((out / "results").glob("seed_0/*/*/fold_0/checkpoint_final.pth"))
    stamp = checkpoint.stat().st_mtime_ns
    result = benchmark(out, nnunet_env(nnunet_root))
    assert "training: 0 run(s) to do" in result.stdout and "evaluation: 0 call(s) to do" in result.stdout
    assert checkpoint.stat().st_mtime_ns == stamp
    after = json.loads((out / "report.json").read_text())
    assert after["pairs"] == json.loads(before)["pairs"]


@pytest.mark.slow
def test_evaluations_alone_carry_the_benchmark(run, nnunet_root, tmp_path):
    """OUT reduced to the marker, heldout_cases.json and the evaluations' metrics.csv and summary.json (models and
    data deleted): a rerun trains and evaluates nothing and reports the same pairs."""
    out, _ = run
    slim = tmp_path / "slim"
    evaluations = [*(out / "evaluation").glob("seed_*/*/metrics.csv"),
                   *(out / "evaluation").glob("seed_*/*/summary.json")]
    for path in [out / "benchmark.json", out / "heldout_cases.json", *evaluations]:
        target = slim / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert len(list(slim.glob("evaluation/seed_*/*/metrics.csv"))) == SEEDS
    result = benchmark(slim, nnunet_env(nnunet_root))
    assert "training: 0 run(s) to do" in result.stdout and "evaluation: 0 call(s) to do" in result.stdout
    assert not (slim / "results").exists()
    assert json.loads((slim / "report.json").read_text())["pairs"] == json.loads((out / "report.json").read_text())[
        "pairs"]
    assert (slim / "heldout_cases.json").read_text() == (out / "heldout_cases.json").read_text()  # seeded generator


def main_in_process(capsys, out: Path, *extra, toy=True):
    """The script's ``main`` in this process (no interpreter start): its exit code and stderr."""
    toy_args = ["--dataset-id", DATASET_ID, "--test-cases", TEST_CASES, "--budgets", "debug", "--seeds", SEEDS,
                "--trainers", *TRAINERS, "--fold", FOLD] if toy else []
    code = load_script().main([str(a) for a in ["--out", out, *toy_args, *extra]])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_bad_input_one_line_exit_2(run, capsys, tmp_path):
    out, _ = run
    code, err = main_in_process(capsys, out, "--spacing", "5")  # the dataset is at 7 mm
    assert code == 2 and err.strip().count("\n") == 0 and "dataset 901 has 7 mm" in err
    code, err = main_in_process(capsys, tmp_path / "x", "--trainers", "NoSuchTrainer", "--budgets", "debug",
                                toy=False)
    assert code == 2 and "NoSuchTrainer_debug" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()
    code, err = main_in_process(capsys, tmp_path / "y", "--dataset-id", "999")  # never preprocessed
    assert code == 2 and "0 folders Dataset999_*" in err and not (tmp_path / "y").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, err = main_in_process(capsys, foreign)
    assert code == 2 and "holds no benchmark.json" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    code, err = main_in_process(capsys, out, "--fold", "1")  # another fold into the same folder
    assert code == 2 and "holds a benchmark" in err
    assert not list((out / "results").glob("seed_0/*/*/fold_1"))
