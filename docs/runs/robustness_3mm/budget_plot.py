"""The robustness benchmark's gap plot over every budget measured so far, from their reports.

The 200-iteration evaluations (3 seeds, 2026-12-06) were not kept, only their report
(``../robustness_3mm_2026-12-06/report.json``, which holds every pair's interval); the 1000- and 3000-iteration ones
are kept here and reported in ``report.json`` (each budget with the seeds evaluated for every trainer). All are on
the same data and held-out set (same ``heldout_cases.json``). This joins the two reports' pairs and draws them with
the benchmark's own ``plot_gaps``:

    PYTHONPATH=. .venv/bin/python docs/runs/robustness_3mm/budget_plot.py   # writes budget_plot.png beside this file
"""
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TRAINERS = ("FullSetTrainer", "ModalityDropoutTrainer_cardinality", "TwoPhaseDistillTrainer")


def main() -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports machine.py from its folder
    script = ROOT / "benchmarks" / "robustness_benchmark.py"
    spec = importlib.util.spec_from_file_location("robustness_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    earlier = json.loads((HERE.parent / "robustness_3mm_2026-12-06" / "report.json").read_text())
    kept = json.loads((HERE / "report.json").read_text())
    if earlier["heldout_cases"] != json.loads((HERE / "heldout_cases.json").read_text()):
        raise SystemExit("the two reports were evaluated on different held-out sets")
    # the earlier report predates report.json's "budgets": its seeds are its arms' n_seeds
    earlier_budgets = [{"budget": a["budget"], "iterations": a["iterations"], "seeds": list(range(a["n_seeds"]))}
                       for a in earlier["arms"] if a["trainer"] == TRAINERS[0] and a["region"] == "WT"
                       and a["metric"] == "dice" and a["view"] == "full_set"]
    pairs = [p for p in earlier["pairs"] + kept["pairs"] if p["model"] in TRAINERS and p["reference"] in TRAINERS]
    report = {"budgets": earlier_budgets + kept["budgets"], "pairs": pairs}
    module.plot_gaps(list(TRAINERS), report, HERE / "budget_plot.png")
    measured = ", ".join(f"{b['iterations']} iterations ({len(b['seeds'])} seed{'s' if len(b['seeds']) > 1 else ''})"
                         for b in report["budgets"])
    print(f"wrote {HERE / 'budget_plot.png'}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
