"""The demo's comparison table and plot, from evaluate summaries written by hand (the layout evaluate writes)."""
import json

import pytest

from nnunet_missingmod.demo import comparison
from nnunet_missingmod.modalities import FULL_SET


def _summary(trainer, full, mean, per_k, aurc):
    regions = ("WT", "TC", "ET")
    return {"trainers": [trainer], "regions": list(regions), "cases": ["BraTS2021_01000", "BraTS2021_01001"],
            "per_subset": {trainer: {r: {FULL_SET.name: {"dice": {"mean": full}}} for r in regions}},
            "mean_over_subsets": {trainer: {r: {"dice": {"mean": mean}} for r in regions}},
            "per_cardinality": {trainer: {r: {str(k): {"dice": d} for k, d in zip((1, 2, 3, 4), per_k)}
                                          for r in regions}},
            "aurc": {trainer: {r: {"normalised": aurc} for r in regions}}}


@pytest.fixture
def summaries(tmp_path):
    paths = []
    for name, values in (("stock", (0.9, 0.7, (0.5, 0.7, 0.8, 0.9), 0.72)),
                         ("robust", (0.85, 0.8, (0.7, 0.8, 0.85, 0.85), 0.80))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(_summary(f"{name}Trainer", *values)))
        paths.append(folder / "summary.json")
    return paths


def test_rows_hold_each_models_figures_and_mark_the_best(summaries, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = comparison.write_comparison(out, ["stock nnU-Net", "robust"], summaries)
    rows = {(r["region"], r["metric"]): r for r in result["rows"]}
    assert len(rows) == 3 * 7
    full = rows[("ET", "full-set Dice")]
    assert full["values"] == {"stock nnU-Net": 0.9, "robust": 0.85} and full["best"] == ["stock nnU-Net"]
    assert rows[("WT", "mean Dice, 1 sequence")]["best"] == ["robust"]
    assert rows[("TC", "mean Dice, 4 sequences")]["values"]["robust"] == 0.85
    assert rows[("WT", "AURC (0-1)")]["values"] == {"stock nnU-Net": 0.72, "robust": 0.80}
    assert result["trainers"] == {"stock nnU-Net": "stockTrainer", "robust": "robustTrainer"}
    assert json.loads((out / "comparison.json").read_text())["rows"] == result["rows"]
    markdown = (out / "comparison.md").read_text()
    assert "| ET | full-set Dice | **0.900** | 0.850 |" in markdown
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = comparison.comparison_text(result)
    assert "0.900*" in text and "0.850*" in text  # the terminal marks the best with '*'
    # a user reading one run on two cases is told what it can and cannot rank, and where to rank
    for shown in (text, markdown):
        assert "one training run per trainer, scored on 2 held-out cases" in shown
        assert "benchmarks/robustness_benchmark.py" in shown


def test_a_failed_plot_keeps_the_previous_one_and_leaves_no_partial_file(summaries, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    columns = ["stock nnU-Net", "robust"]
    comparison.write_comparison(out, columns, summaries)
    before = (out / "comparison.png").read_bytes()
    import matplotlib.figure

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        comparison.write_comparison(out, columns, summaries)
    assert (out / "comparison.png").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "comparison.png"]
