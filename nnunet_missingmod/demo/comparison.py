"""The demo's comparison of the trained models, from each model's ``evaluate`` summary.json: per region (WT, TC,
ET) the full-set Dice, the mean Dice over the 15 subsets, the mean Dice per number of sequences (1-4) and the AURC
(normalised to 0-1); one column per trainer, the best per row marked. Written as comparison.md, comparison.json and
comparison.png (mean Dice per number of sequences, one panel per region), and comparison_case.png: the segmentations
of every trainer side by side for the median test case (see :mod:`nnunet_missingmod.evaluation.figures`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_missingmod.atomic_io import atomic_output, atomic_write_text
from nnunet_missingmod.modalities import FULL_SET

FULL_SET_NAME = FULL_SET.name
CASE_PICTURE = "comparison_case.png"
CARDINALITIES = (1, 2, 3, 4)
BEST_MARK = "*"


def _region_rows(summary: Mapping[str, Any], trainer: str, region: str) -> Dict[str, Optional[float]]:
    per_subset = summary["per_subset"][trainer][region]
    full = per_subset.get(FULL_SET_NAME)
    rows = {"full-set Dice": full["dice"]["mean"] if full else None,
            "15-subset mean Dice": summary["mean_over_subsets"][trainer][region]["dice"]["mean"]}
    by_k = summary["per_cardinality"][trainer][region]
    for k in CARDINALITIES:
        entry = by_k.get(str(k))
        rows[f"mean Dice, {k} sequence{'s' if k > 1 else ''}"] = entry["dice"] if entry else None
    aurc = summary["aurc"][trainer][region]
    rows["AURC (0-1)"] = aurc["normalised"] if aurc else None
    return rows


def build_comparison(columns: Sequence[str], summaries: Sequence[Mapping[str, Any]],
                     summary_paths: Sequence[str], trainers: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``columns``: the label of each model (e.g. "stock nnU-Net"); ``summaries``: their evaluate summaries;
    ``trainers``: the entry of each summary to show (default: its first, e.g. the routed entry of an evaluation
    with ``--full-set-model`` has to be named). Returns what comparison.json holds."""
    if trainers is None:
        trainers = [s["trainers"][0] for s in summaries]
    for trainer, summary, path in zip(trainers, summaries, summary_paths):
        if trainer not in summary["trainers"]:
            raise ValueError(f"{path} has no entry {trainer!r} (entries: {', '.join(summary['trainers'])})")
    regions = [r for r in ("WT", "TC", "ET") if all(r in s["regions"] for s in summaries)]
    rows: List[Dict[str, Any]] = []
    for region in regions:
        per_column = [_region_rows(s, t, region) for s, t in zip(summaries, trainers)]
        for metric in per_column[0]:
            values = {c: v[metric] for c, v in zip(columns, per_column)}
            known = [v for v in values.values() if v is not None]
            best = [c for c, v in values.items() if known and v == max(known)] if len(columns) > 1 else []
            rows.append({"region": region, "metric": metric, "values": values, "best": best})
    return {
        "columns": list(columns),
        "trainers": dict(zip(columns, trainers)),
        "summaries": {c: p for c, p in zip(columns, summary_paths)},
        "test_cases": summaries[0]["cases"],
        "rows": rows,
        "notes": ["Dice in [0, 1] on the held-out phantom cases; higher is better in every row; "
                  f"'{BEST_MARK}' marks the best trainer per row (ties share it)",
                  "15-subset mean: each case's mean over the 15 modality subsets, averaged over cases",
                  "mean Dice, k sequences: mean over the subsets with k sequences of the per-subset means",
                  "AURC: area under the mean Dice over 1..4 sequences, divided by 3",
                  f"one training run per trainer, scored on {len(summaries[0]['cases'])} held-out cases: a "
                  "difference of a few hundredths can come from the run alone (one voxel of a small enhancing "
                  "tumour moves ET); to rank trainers use benchmarks/robustness_benchmark.py (docs/benchmarks.md, "
                  "'Robustness benchmark that can rank': 30 held-out cases, seeds, paired intervals)"],
    }


def _cell(value: Optional[float], best: bool, markdown: bool) -> str:
    if value is None:
        return "n/a"
    if best:
        return f"**{value:.3f}**" if markdown else f"{value:.3f}{BEST_MARK}"
    return f"{value:.3f}"


def comparison_table_rows(comparison: Mapping[str, Any], markdown: bool = False) -> List[List[str]]:
    header = ["region", "metric"] + list(comparison["columns"])
    table = [header]
    for row in comparison["rows"]:
        table.append([row["region"], row["metric"]]
                     + [_cell(row["values"][c], c in row["best"], markdown) for c in comparison["columns"]])
    return table


def comparison_text(comparison: Mapping[str, Any]) -> str:
    """Aligned plain-text table for the terminal."""
    table = comparison_table_rows(comparison)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + [f"  {n}" for n in comparison["notes"]])


def comparison_markdown(comparison: Mapping[str, Any], plots: Sequence[str]) -> str:
    table = comparison_table_rows(comparison, markdown=True)
    lines = ["# nnunet-missingmod demo: comparison", "",
             f"Held-out test cases: {', '.join(comparison['test_cases'])}", ""]
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    notes = [n.replace(f"'{BEST_MARK}' marks", "bold marks") for n in comparison["notes"]]
    lines += [""] + [f"* {n}" for n in notes]
    lines += ["", "Trainers: " + ", ".join(f"{c} = `{t}`" for c, t in comparison["trainers"].items()), "",
              "## Plots", ""] + [f"* `{p}`" for p in plots]
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: Mapping[str, Any], path: str) -> None:
    """Mean Dice per number of available sequences, one line per trainer, one panel per region."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = list(dict.fromkeys(r["region"] for r in comparison["rows"]))
    figure, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), squeeze=False)
    for axis, region in zip(axes[0], regions):
        for column in comparison["columns"]:
            ys = [next(r["values"][column] for r in comparison["rows"]
                       if r["region"] == region and r["metric"].startswith(f"mean Dice, {k} sequence"))
                  for k in CARDINALITIES]
            axis.plot(CARDINALITIES, [float("nan") if y is None else y for y in ys], marker="o", label=column)
        axis.set_title(region)
        axis.set_xlabel("sequences available")
        axis.set_xticks(CARDINALITIES)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean Dice over subsets")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    try:
        with atomic_output(path) as tmp:
            figure.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(figure)


def write_case_picture(path: Path, columns: Sequence[str], evaluations: Sequence[Tuple[str, Path]],
                       test_dataset: Path) -> Tuple[Optional[str], str]:
    """The segmentations of every model (a row each, labelled by ``columns``) for the median test case by the first
    model's full-set WT Dice, from the predictions ``evaluate`` kept. ``evaluations``: (trainer as in its
    metrics.csv, its evaluate output folder) per column; ``test_dataset``: the raw test dataset (dataset.json,
    imagesTr, labelsTr). Returns the picture's path (``None`` when there are no kept predictions to draw) and the
    case drawn or why none was."""
    from nnunet_missingmod.evaluation.figures import FigureRow, prediction_files, render_case_figure, select_cases
    from nnunet_missingmod.evaluation.regions import load_dataset_json, regions_from_labels
    from nnunet_missingmod.evaluation.report import read_metrics_csv
    from nnunet_missingmod.modalities import modalities_from_channel_names

    predictions = [folder / "predictions" / trainer for trainer, folder in evaluations]
    if not all(p.is_dir() for p in predictions):
        return None, "no predictions kept in " + ", ".join(str(p) for p in predictions if not p.is_dir())
    records = [r for _, folder in evaluations for r in read_metrics_csv(str(folder / "metrics.csv"))]
    cases = select_cases(records, 1, trainer=evaluations[0][0])
    if not cases:
        return None, "no scored case"
    case = cases[0]
    dataset = load_dataset_json(test_dataset / "dataset.json")
    ending = dataset["file_ending"]
    images = {m: str(test_dataset / "imagesTr" / f"{case}_{i:04d}{ending}")
              for i, m in enumerate(modalities_from_channel_names(dataset["channel_names"]))}
    rows = [FigureRow(column, trainer, prediction_files({p.name: str(p) for p in folder.iterdir() if p.is_dir()},
                                                        case, ending))
            for column, (trainer, _), folder in zip(columns, evaluations, predictions)]
    render_case_figure(str(path), case, images, str(test_dataset / "labelsTr" / f"{case}{ending}"), rows,
                       regions_from_labels(dataset["labels"], str(test_dataset / "dataset.json")), records)
    return str(path), f"median test case {case}"


def write_comparison(out: Path, columns: Sequence[str], summary_paths: Sequence[Path],
                     extra_plots: Sequence[str] = (), trainers: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write comparison.json, comparison.png and comparison.md into ``out``; returns the comparison with the
    plot paths (``plots``: comparison.png, ``extra_plots``, each evaluation's plots) added."""
    summaries = [json.loads(Path(p).read_text()) for p in summary_paths]
    comparison = build_comparison(columns, summaries, [str(p) for p in summary_paths], trainers)
    plot = out / "comparison.png"
    plot_comparison(comparison, str(plot))
    plots = [str(plot)] + [str(p) for p in extra_plots]
    for p in summary_paths:
        plots += [str(Path(p).parent / name) for name in ("robustness.png", "subsets.png")
                  if (Path(p).parent / name).is_file()]
    comparison["plots"] = plots
    atomic_write_text(str(out / "comparison.json"), json.dumps(comparison, indent=2) + "\n")
    atomic_write_text(str(out / "comparison.md"), comparison_markdown(comparison, plots))
    return comparison
