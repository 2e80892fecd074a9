"""The report: metrics.csv, summary.json, summary.md tables, plots, AURC, paired comparisons and paired bootstrap
intervals."""
import csv
import json
import os

import numpy as np
import pytest

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.lesionwise import lesion_conventions
from nnunet_missingmod.evaluation.metrics import conventions
from nnunet_missingmod.evaluation.report import BootstrapSettings, read_metrics_csv, write_report
from nnunet_missingmod.evaluation.scoring import BASE_FIELDS, LESION_FIELDS, RECORD_FIELDS
from nnunet_missingmod.modalities import FULL_SET, SUBSET_NAMES, SUBSETS

TRAINERS = ("TrainerA", "TrainerB")
REGIONS = ("WT", "TC", "ET")
CASES = tuple(f"case_{i:03d}" for i in range(8))


def synthetic_records(trainers=TRAINERS, subsets=SUBSETS, seed=0, lesionwise=True):
    """Dice rises with the number of sequences; TrainerB is 0.05 better everywhere, plus noise. Lesion-wise Dice is
    0.1 below the whole-volume one; each case has 2 GT lesions, one found and one missed, and one false positive."""
    rng = np.random.default_rng(seed)
    records = []
    for t_index, trainer in enumerate(trainers):
        for case in CASES:
            for subset in subsets:
                for r_index, region in enumerate(REGIONS):
                    value = 0.4 + 0.1 * subset.cardinality + 0.05 * t_index - 0.05 * r_index
                    value = float(np.clip(value + rng.normal(0, 0.02), 0, 1))
                    records.append({"trainer": trainer, "case": case, "subset": subset.name,
                                    "n_modalities": subset.cardinality, "region": region,
                                    "dice": value, "hd95": float(20 * (1 - value))})
                    if lesionwise:
                        records[-1].update(lesion_dice=value - 0.1, lesion_hd95=float(30 * (1 - value)),
                                           n_gt_lesions=2, n_tp=1, n_fp=1, n_fn=1)
    return records


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    records = synthetic_records()
    summary = write_report(records, str(out), {**conventions(), **lesion_conventions("met")})
    return out, records, summary


def markdown_table(text, title):
    """Rows (lists of cells) of the first table after the heading line ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and title in line)
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    return table


def test_outputs_exist_and_no_temporary_files_are_left(report):
    out, _, _ = report
    assert sorted(os.listdir(out)) == ["metrics.csv", "robustness.png", "subsets.png", "summary.json", "summary.md"]


def test_metrics_csv_is_long_format_with_exact_columns(report):
    out, records, _ = report
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    # the whole-volume columns first, as before the lesion-wise ones were added
    assert tuple(rows[0]) == RECORD_FIELDS == ("trainer", "case", "subset", "n_modalities", "region", "dice", "hd95",
                                               "lesion_dice", "lesion_hd95", "n_gt_lesions", "n_tp", "n_fp", "n_fn")
    assert len(rows) - 1 == len(records) == len(TRAINERS) * len(CASES) * 15 * len(REGIONS)
    back = read_metrics_csv(str(out / "metrics.csv"))
    by_key = {(r["trainer"], r["case"], r["subset"], r["region"]): r for r in records}
    for row in back:
        original = by_key[(row["trainer"], row["case"], row["subset"], row["region"])]
        assert row == original  # full float precision round trip


@pytest.mark.parametrize("title,metric", [("Dice", "dice"), ("HD95", "hd95")])
def test_markdown_table_layout(report, title, metric):
    out, records, _ = report
    text = (out / "summary.md").read_text()
    table = markdown_table(text, f"{title} (")
    assert table[0] == ["region", "trainer", *SUBSET_NAMES, "mean"]
    body = table[2:]
    assert [(row[0], row[1]) for row in body] == [(r, t) for r in REGIONS for t in TRAINERS]
    values = [r[metric] for r in records if r["trainer"] == "TrainerA" and r["region"] == "WT"
              and r["subset"] == "T1ce+FLAIR"]
    decimals = 3 if metric == "dice" else 2
    cell = body[0][2 + SUBSET_NAMES.index("T1ce+FLAIR")]
    assert cell == f"{np.mean(values):.{decimals}f} ± {np.std(values, ddof=1):.{decimals}f}"


def test_lesionwise_table_in_the_papers_layout_names_the_protocol(report):
    out, records, summary = report
    text = (out / "summary.md").read_text()
    assert "Protocol: BraTS-MET (brain metastases): GT dilated 1 time, lesions of at most 2 mm³ ignored" in text
    table = markdown_table(text, "Lesion-wise scores per subset")
    assert table[0] == ["trainer", "subset", *[f"{r} lesion-wise Dice" for r in REGIONS],
                        *[f"{r} lesion-wise HD95 (mm)" for r in REGIONS]]
    body = table[2:]
    assert [(row[0], row[1]) for row in body] == [(t, s) for t in TRAINERS for s in [*SUBSET_NAMES, "mean"]]
    values = [r["lesion_hd95"] for r in records if (r["trainer"], r["region"], r["subset"]) == ("TrainerB", "TC", "T2")]
    row = body[len(SUBSET_NAMES) + 1 + SUBSET_NAMES.index("T2")]
    assert row[2 + len(REGIONS) + REGIONS.index("TC")] == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    assert text.index("## HD95 (mm) per subset") < text.index("## Lesion-wise scores")  # whole-volume first
    # the counts table: 2 GT, 1 TP, 1 FP, 1 FN per case, summed over the 8 cases
    assert "| TrainerA | T1 | 16 / 8 / 8 / 8 | 16 / 8 / 8 / 8 | 16 / 8 / 8 / 8 |" in text
    block = json.loads((out / "summary.json").read_text())["lesionwise"]
    assert block["protocol"] == "met"
    cell = block["per_subset"]["TrainerB"]["TC"]["T2"]
    assert cell["lesion_hd95"]["mean"] == pytest.approx(np.mean(values)) and cell["lesion_hd95"]["n"] == len(CASES)
    assert (cell["n_gt_lesions"], cell["n_tp"], cell["n_fp"], cell["n_fn"]) == (16, 8, 8, 8)
    per_subset_means = [block["per_subset"]["TrainerA"]["WT"][s]["lesion_dice"]["mean"] for s in SUBSET_NAMES]
    assert block["mean_over_subsets"]["TrainerA"]["WT"]["lesion_dice"]["mean"] == pytest.approx(
        np.mean(per_subset_means))


def test_metrics_csv_of_before_the_lesion_columns_is_read_and_reported_without_them(tmp_path):
    old = synthetic_records(trainers=("A",), subsets=(FULL_SET,), lesionwise=False)
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BASE_FIELDS)
        writer.writeheader()
        writer.writerows(old)
    back = read_metrics_csv(str(tmp_path / "metrics.csv"))
    assert [{k: r[k] for k in BASE_FIELDS} for r in back] == old
    assert all(r[k] is None for r in back for k in LESION_FIELDS)
    summary = write_report(back, str(tmp_path / "again"), conventions(), make_plots=False)
    assert summary["lesionwise"] is None and "Lesion-wise" not in (tmp_path / "again" / "summary.md").read_text()
    with open(tmp_path / "again" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(RECORD_FIELDS) and rows[0]["lesion_dice"] == "" and rows[0]["n_fn"] == ""
    partial = dict(old[0], lesion_dice=0.5)
    with pytest.raises(MissingModError, match="only some lesion-wise fields"):
        write_report([partial], str(tmp_path / "partial"), conventions(), make_plots=False)


def test_conventions_are_written_above_the_tables(report):
    out, _, _ = report
    text = (out / "summary.md").read_text()
    assert text.index("HD95 374 mm") < text.index("| region | trainer | T1 |")
    assert "Dice in [0, 1]" in text


def test_summary_json_content(report):
    out, records, summary = report
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["conventions"]["hd95_variant"] == "max_directed"
    assert on_disk["subsets"] == list(SUBSET_NAMES)
    assert on_disk["cases"] == list(CASES)
    cell = on_disk["per_subset"]["TrainerA"]["WT"]["T1"]["dice"]
    values = [r["dice"] for r in records if (r["trainer"], r["region"], r["subset"]) == ("TrainerA", "WT", "T1")]
    assert cell["mean"] == pytest.approx(np.mean(values))
    assert cell["sd"] == pytest.approx(np.std(values, ddof=1))
    assert cell["n"] == len(CASES)

    subset_means = {s.name: on_disk["per_subset"]["TrainerA"]["WT"][s.name]["dice"]["mean"] for s in SUBSETS}
    by_k = {k: np.mean([subset_means[s.name] for s in SUBSETS if s.cardinality == k]) for k in (1, 2, 3, 4)}
    for k in (1, 2, 3, 4):
        assert on_disk["per_cardinality"]["TrainerA"]["WT"][str(k)]["dice"] == pytest.approx(by_k[k])
    raw = 0.5 * by_k[1] + by_k[2] + by_k[3] + 0.5 * by_k[4]
    assert on_disk["aurc"]["TrainerA"]["WT"]["raw"] == pytest.approx(raw)
    assert on_disk["aurc"]["TrainerA"]["WT"]["normalised"] == pytest.approx(raw / 3)
    gap = on_disk["gap_to_full_set"]["TrainerA"]["WT"]["T1"]["dice"]
    assert gap == pytest.approx(subset_means["T1"] - subset_means[FULL_SET.name])
    assert on_disk["mean_over_subsets"]["TrainerA"]["WT"]["dice"]["mean"] == pytest.approx(
        np.mean(list(subset_means.values())))


def test_wilcoxon_comparison_with_two_trainers(report):
    out, _, summary = report
    comparisons = summary["paired_comparisons"]
    assert {(c["region"], c["metric"]) for c in comparisons} == {(r, m) for r in REGIONS for m in ("dice", "hd95")}
    wt_dice = next(c for c in comparisons if (c["region"], c["metric"]) == ("WT", "dice"))
    assert (wt_dice["trainer_a"], wt_dice["trainer_b"]) == TRAINERS
    assert wt_dice["n_cases"] == len(CASES) and set(wt_dice["per_case_difference"]) == set(CASES)
    assert wt_dice["mean_difference"] == pytest.approx(-0.05, abs=0.02)
    # B beats A on all 8 cases: the exact two-sided signed-rank p-value is 2 / 2**8.
    assert wt_dice["wilcoxon_p"] == pytest.approx(2 / 2 ** 8)
    assert "Wilcoxon" in (out / "summary.md").read_text()


def test_plots_are_nontrivial_images(report):
    from matplotlib.image import imread
    out, _, _ = report
    for name in ("robustness.png", "subsets.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        image = imread(str(out / name))
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_single_trainer_plain_folder_gives_one_all_column(tmp_path):
    """`score` of a plain folder: subset 'all', no cardinality -> one column, no robustness plot, a note."""
    records = [{"trainer": "pred", "case": c, "subset": "all", "n_modalities": None, "region": r,
                "dice": 0.8, "hd95": 2.0} for c in CASES for r in REGIONS]
    summary = write_report(records, str(tmp_path), conventions())
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "subsets.png", "summary.json", "summary.md"]
    text = (tmp_path / "summary.md").read_text()
    assert markdown_table(text, "Dice (")[0] == ["region", "trainer", "all", "mean"]
    assert "robustness.png not written" in text
    assert summary["paired_comparisons"] == [] and summary["aurc"]["pred"]["WT"] is None
    with open(tmp_path / "metrics.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert first["subset"] == "all" and first["n_modalities"] == ""


def test_aurc_left_empty_when_subsets_are_missing(tmp_path):
    records = synthetic_records(trainers=("A",), subsets=(SUBSETS[0], SUBSETS[4], SUBSETS[10], FULL_SET))
    summary = write_report(records, str(tmp_path), conventions(), make_plots=False)
    assert summary["aurc"]["A"]["WT"] is None
    assert summary["per_cardinality"]["A"]["WT"]["1"]["complete"] is False
    assert summary["subsets"] == [SUBSETS[0].name, SUBSETS[4].name, SUBSETS[10].name, FULL_SET.name]
    assert any("AURC needs all 15 subsets" in n for n in summary["notes"])


def test_bad_records_are_rejected(tmp_path):
    with pytest.raises(MissingModError, match="no records"):
        write_report([], str(tmp_path), conventions())
    good = synthetic_records(trainers=("A",), subsets=(FULL_SET,))
    with pytest.raises(MissingModError, match="lacks hd95"):
        write_report([{k: v for k, v in good[0].items() if k != "hd95"}], str(tmp_path), conventions())
    with pytest.raises(MissingModError, match="two records"):
        write_report(good + good[:1], str(tmp_path), conventions())


# ------------------------------------------------------------------------------------- paired bootstrap intervals

def test_bootstrap_interval_follows_its_definition(monkeypatch):
    """Same seed, same resampling: the B × n index matrix of one default_rng(seed).integers call, the mean of each
    row, and numpy's 2.5th and 97.5th percentiles; drawing in blocks of rows gives the same indices."""
    from nnunet_missingmod.evaluation import report as report_module
    differences = np.array([0.10, -0.05, 0.20, 0.00, 0.15, -0.02])
    rng = np.random.default_rng(7)
    means = differences[rng.integers(0, differences.size, size=(2000, differences.size))].mean(axis=1)
    expected = tuple(np.percentile(means, [2.5, 97.5]))
    assert report_module.bootstrap_interval(differences, 2000, seed=7) == expected
    monkeypatch.setattr(report_module, "_BOOTSTRAP_BLOCK", 3 * differences.size)  # blocks of 3 resamples
    assert report_module.bootstrap_interval(differences, 2000, seed=7) == expected
    rng = np.random.default_rng(7)
    means = differences[rng.integers(0, differences.size, size=(2000, differences.size))].mean(axis=1)
    assert report_module.bootstrap_interval(differences, 2000, seed=7, level=0.8) == tuple(
        np.percentile(means, [10, 90]))


def test_bootstrap_interval_by_hand():
    """Two cases with differences 1 and 3: a resample's mean is 1, 2 or 3 with probability 1/4, 1/2, 1/4, so out of
    1000 resamples far more than 2.5 % are 1 and far more than 2.5 % are 3: the interval is [1, 3]. One value d
    gives [d, d]."""
    from nnunet_missingmod.evaluation.report import bootstrap_interval
    assert bootstrap_interval([1.0, 3.0], 1000) == (1.0, 3.0)
    assert bootstrap_interval([0.25] * 5, 100) == (0.25, 0.25)
    with pytest.raises(ValueError):
        bootstrap_interval([], 100)
    with pytest.raises(ValueError):
        bootstrap_interval([1.0], 0)


def test_paired_intervals_of_identical_models_hold_zero_and_rank_nothing(tmp_path):
    records = synthetic_records(trainers=("A",))
    records += [{**r, "trainer": "B"} for r in records]
    summary = write_report(records, str(tmp_path), conventions(), make_plots=False,
                           bootstrap=BootstrapSettings(n_resamples=500))
    block = summary["paired_intervals"]
    assert block["reference"] == "A" and len(block["comparisons"]) == len(REGIONS) * 2 * 3
    for c in block["comparisons"]:
        assert (c["model"], c["mean_difference"], c["ci_low"], c["ci_high"]) == ("B", 0.0, 0.0, 0.0)
        assert c["ranking"] is None and c["wilcoxon_p"] is None
    rows = markdown_table((tmp_path / "summary.md").read_text(), "Paired differences against A")
    assert rows[0][-1] == "ranking" and all(row[-1] == "—" for row in rows[2:])
    assert all(row[-3] == "[+0.000, +0.000]" for row in rows[2:])


def test_paired_intervals_of_a_better_model(tmp_path):
    """TrainerB is 0.05 better everywhere (noise sd 0.02): every view's interval lies above 0 and ranks it; the
    per-case differences are those of the records (full set; each model's own worst subset)."""
    from scipy.stats import wilcoxon

    from nnunet_missingmod.evaluation.report import bootstrap_interval
    records = synthetic_records()
    summary = write_report(records, str(tmp_path), {**conventions(), **lesion_conventions("gli")},
                           make_plots=False, bootstrap=BootstrapSettings(n_resamples=1000))
    comparisons = summary["paired_intervals"]["comparisons"]
    assert {(c["region"], c["metric"], c["view"]) for c in comparisons} == {
        (r, m, v) for r in REGIONS for m in ("dice", "lesion_dice") for v in ("full_set", "mean_over_subsets",
                                                                             "worst_subset")}
    value = {(r["trainer"], r["case"], r["subset"], r["region"]): r["dice"] for r in records}
    full = next(c for c in comparisons if (c["region"], c["metric"], c["view"]) == ("TC", "dice", "full_set"))
    expected = [value["TrainerB", case, FULL_SET.name, "TC"] - value["TrainerA", case, FULL_SET.name, "TC"]
                for case in CASES]
    assert list(full["per_case_difference"].values()) == pytest.approx(expected)
    assert (full["ci_low"], full["ci_high"]) == bootstrap_interval(expected, 1000)
    worst = next(c for c in comparisons if (c["region"], c["metric"], c["view"]) == ("TC", "dice", "worst_subset"))
    expected = [min(value["TrainerB", case, s.name, "TC"] for s in SUBSETS)
                - min(value["TrainerA", case, s.name, "TC"] for s in SUBSETS) for case in CASES]
    assert list(worst["per_case_difference"].values()) == pytest.approx(expected)
    assert worst["subsets"] == list(SUBSET_NAMES)
    for c in comparisons:
        assert c["ci_low"] > 0 and c["ranking"] == "TrainerB > TrainerA"
        assert c["wilcoxon_p"] == pytest.approx(wilcoxon(list(c["per_case_difference"].values())).pvalue)
    text = (tmp_path / "summary.md").read_text()
    rows = markdown_table(text, "Paired differences against TrainerA")
    assert all(row[-1] == "TrainerB > TrainerA" for row in rows[2:])
    assert "Wilcoxon" in text and "1000 resamples" in text


def test_paired_intervals_against_a_named_reference(tmp_path):
    records = synthetic_records(lesionwise=False)
    summary = write_report(records, str(tmp_path), conventions(), make_plots=False,
                           bootstrap=BootstrapSettings(n_resamples=200, reference="TrainerB"))
    comparisons = summary["paired_intervals"]["comparisons"]
    assert {c["metric"] for c in comparisons} == {"dice"}  # no lesion-wise Dice in these records
    assert all(c["model"] == "TrainerA" and c["ci_high"] < 0 and c["ranking"] == "TrainerB > TrainerA"
               for c in comparisons)
    with pytest.raises(MissingModError, match="--reference 'C' is not one of the report's models"):
        write_report(records, str(tmp_path), conventions(), make_plots=False,
                     bootstrap=BootstrapSettings(reference="C"))
    off = write_report(records, str(tmp_path), conventions(), make_plots=False,
                       bootstrap=BootstrapSettings(n_resamples=0))
    assert off["paired_intervals"]["comparisons"] == [] and off["paired_comparisons"]
    assert "Paired differences against" not in (tmp_path / "summary.md").read_text()


def test_bootstrap_settings_are_checked_when_built():
    for bad in ({"n_resamples": -1}, {"n_resamples": 1.5}, {"reference": " "}, {"level": 1.0}, {"seed": -2}):
        with pytest.raises(MissingModError):
            BootstrapSettings(**bad)
    assert BootstrapSettings().n_resamples == 10000 and BootstrapSettings().seed == 0
