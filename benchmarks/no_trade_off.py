"""The "no trade-off" goal over repeated demo runs: mean and spread of each trainer's complete-scan and 15-subset
mean Dice per region, and whether each trainer meets the goal against stock nnU-Net and the bar.

    python benchmarks/no_trade_off.py runs/small_1 runs/small_2 runs/small_3 [--markdown]

Each argument is a demo output folder (``nnunet-missingmod demo --out DIR``; its ``comparison.json``). The goal
(issue "No trade-off"): complete-scan Dice >= stock - 0.01 in every region, and 15-subset mean Dice >=
``ModalityDropoutTrainer_cardinality``'s in every region, judged on the means over the runs. Only columns present
in every run are compared.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Sequence

STOCK = "stock nnU-Net"
BAR = "ModalityDropoutTrainer_cardinality"
METRICS = {"full": "full-set Dice", "mean15": "15-subset mean Dice"}
REGIONS = ("WT", "TC", "ET")
TOLERANCE = 0.01


def load_runs(folders: Sequence[str]) -> List[dict]:
    runs = []
    for folder in folders:
        path = Path(folder) / "comparison.json"
        if not path.is_file():
            sys.exit(f"no_trade_off.py: {path} does not exist (not a finished demo output folder)")
        runs.append(json.loads(path.read_text()))
    return runs


def collect(runs: Sequence[dict]) -> Dict[str, Dict[str, Dict[str, List[float]]]]:
    """column -> region -> metric key -> values, one per run (columns present in every run)."""
    columns = [c for c in runs[0]["columns"] if all(c in r["columns"] for r in runs)]
    values = {c: {region: {k: [] for k in METRICS} for region in REGIONS} for c in columns}
    for run in runs:
        for row in run["rows"]:
            key = next((k for k, m in METRICS.items() if m == row["metric"]), None)
            if key is None or row["region"] not in REGIONS:
                continue
            for column in columns:
                values[column][row["region"]][key].append(row["values"][column])
    return values


def goal(values, column: str) -> Dict[str, float]:
    """Margins of ``column`` (positive = met): complete vs stock - 0.01 and 15-subset mean vs the bar, per region."""
    margins = {}
    for region in REGIONS:
        full = statistics.fmean(values[column][region]["full"])
        mean15 = statistics.fmean(values[column][region]["mean15"])
        if STOCK in values:
            margins[f"{region} complete"] = full - (statistics.fmean(values[STOCK][region]["full"]) - TOLERANCE)
        if BAR in values:
            margins[f"{region} 15-mean"] = mean15 - statistics.fmean(values[BAR][region]["mean15"])
    return margins


def cell(xs: Sequence[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(values, n_runs: int) -> str:
    header = ["trainer"] + [f"{r} {label}" for r in REGIONS for label in ("complete", "15-mean")] + ["goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for column in values:
        cells = [cell(values[column][r][k]) for r in REGIONS for k in METRICS]
        margins = goal(values, column) if column not in (STOCK, BAR) else {}
        missed = [f"{name} {margin:+.3f}" for name, margin in margins.items() if margin < 0]
        verdict = "" if not margins else ("**met**" if not missed else "missed: " + ", ".join(missed))
        lines.append("| " + " | ".join([f"`{column}`" if column != STOCK else column] + cells + [verdict]) + " |")
    runs = f"mean ± SD over {n_runs} runs" if n_runs > 1 else "one run"
    return "\n".join(lines) + f"\n\n{runs}; goal margins are on the means (positive = met)\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", metavar="DEMO_OUT")
    args = parser.parse_args()
    runs = load_runs(args.folders)
    print(table(collect(runs), len(runs)))


if __name__ == "__main__":
    main()
