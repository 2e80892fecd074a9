"""``nnunet-missingmod demo``: stock nnU-Net against the missing-modality trainers, end to end, in one command."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.naming import BUDGETS

DEFAULT_OUT = "demo_output"
DEFAULT_CASES = 9  # and 3 held-out test cases
# 8 mm phantoms (nnU-Net plans a 20x24x20 patch): the phantom keeps WT/TC/ET a few voxels thick, and a CPU iteration
# costs about a third of one at 6 mm (28x32x24), see costs.py
DEMO_SPACING_MM = 8.0


def held_out_case_count(cases: int) -> int:
    """Held-out test cases for ``cases`` training cases: a third, at least 2 and at most 5 (each is predicted 15
    times per model)."""
    return min(5, max(2, cases // 3))


def resolve_demo_device(name: str) -> str:
    """``cpu`` or ``cuda`` for ``--device`` (``auto``: cuda when PyTorch sees a GPU)."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MissingModError("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                              "use --device cpu or --device auto")
    return name


def resolve_trainers(requested: Optional[Sequence[str]], device: str, budget: str):
    """(trainers to run, default trainers skipped because they are not registered). ``requested`` names are checked
    against the registry: an unknown name is an error listing the valid ones."""
    from nnunet_missingmod.demo.pipeline import DEFAULT_TRAINERS
    from nnunet_missingmod.training.naming import trainer_registry
    try:
        registry = trainer_registry()
    except ImportError as e:  # a trainer module that fails to import breaks nnUNetv2_train's lookup too
        raise MissingModError(f"the trainers of this package cannot be imported ({e}); nnU-Net could not find them "
                              f"either") from e
    suffix = BUDGETS[budget].suffix
    available = sorted(n[:-len(suffix)] for n in registry if n.endswith(suffix))
    if requested is None:
        chosen = [t for t in DEFAULT_TRAINERS[device] if t in available]
        return chosen, [t for t in DEFAULT_TRAINERS[device] if t not in available]
    unknown = [t for t in requested if t not in available]
    if unknown:
        raise MissingModError(f"--trainers: unknown trainer(s) {', '.join(unknown)}; valid: {', '.join(available)}")
    duplicates = sorted({t for t in requested if list(requested).count(t) > 1})
    if duplicates:
        raise MissingModError(f"--trainers: {', '.join(duplicates)} given more than once")
    return list(requested), []


def resolve_routed(requested: Optional[str], trainers: Sequence[str]) -> Optional[str]:
    """The trainer the routed pair sends incomplete cases to (``--routed``): by default the bar (cardinality
    dropout) when it and stock nnU-Net are both trained; ``none``: no routed pair."""
    from nnunet_missingmod.demo.pipeline import DEFAULT_ROUTED, STOCK_TRAINER
    if requested is None:
        return DEFAULT_ROUTED if DEFAULT_ROUTED in trainers and STOCK_TRAINER in trainers else None
    if requested.lower() == "none":
        return None
    if STOCK_TRAINER not in trainers or requested not in trainers or requested == STOCK_TRAINER:
        raise MissingModError(f"--routed {requested}: the routed pair needs {STOCK_TRAINER} and {requested} among "
                              f"--trainers ({' '.join(trainers)}), and {requested} must not be {STOCK_TRAINER}")
    return requested


def run_demo(args: argparse.Namespace) -> int:
    from nnunet_missingmod.demo import costs
    from nnunet_missingmod.demo.comparison import CASE_PICTURE, comparison_text, write_case_picture, write_comparison
    from nnunet_missingmod.demo.pipeline import (
        DEFAULT_BUDGET, DataSettings, DemoPipeline, DemoSettings, claim_output_folder, column_label,
        format_duration, routed_column_label)

    if args.cases < 2:
        raise MissingModError(f"--cases must be at least 2, got {args.cases}")
    device = resolve_demo_device(args.device)
    budget = args.budget or DEFAULT_BUDGET[device]
    trainers, skipped = resolve_trainers(args.trainers, device, budget)
    if not trainers:
        raise MissingModError("no trainer to run: none of the default trainers is registered")
    data = DataSettings(cases=args.cases, test_cases=held_out_case_count(args.cases), spacing_mm=DEMO_SPACING_MM)
    out = Path(args.out).absolute()
    routed = resolve_routed(args.routed, trainers)
    state = claim_output_folder(out, data)
    settings = DemoSettings(out=out, trainers=trainers, budget=budget, device=device, data=data,
                            verbose=args.verbose, skipped=skipped, routed=routed)

    epochs, per_epoch = costs.budget_iterations(budget)
    estimate = costs.total_seconds(trainers, budget, device, data)
    print(f"demo: budget {budget} = {epochs * per_epoch} training iterations per trainer ({epochs} epochs x "
          f"{per_epoch}) on {device}, {len(trainers)} trainer(s), {data.cases} training + {data.test_cases} test "
          f"cases at {data.spacing_mm:g} mm: about {format_duration(estimate)} on this device from scratch "
          f"(measured costs in nnunet_missingmod/demo/costs.py)")
    for trainer in skipped:
        print(f"{trainer}: absent (not registered in this installation); skipped")
    print(f"output: {out} ({'new' if state == 'new' else 'finished stages are reused'}); nnU-Net's output: "
          + ("shown" if args.verbose else f"{out / 'logs'}"))

    started = time.monotonic()
    pipeline = DemoPipeline(settings)
    pipeline.run()
    columns = [column_label(t) for t in trainers]
    picture, drawn = write_case_picture(out / CASE_PICTURE, columns,
                                        [(settings.trainer_class(t), pipeline.evaluation_dir(t)) for t in trainers],
                                        pipeline.test_images_labels()[0].parent)
    print(f"segmentations side by side: {drawn}" + (f" in {picture}" if picture else ", no picture"))
    summaries = [pipeline.evaluation_dir(t) / "summary.json" for t in trainers]
    entries = [settings.trainer_class(t) for t in trainers]
    if settings.routed is not None:
        columns.append(routed_column_label(routed))
        summaries.append(pipeline.routed_evaluation_dir() / "summary.json")
        entries.append(pipeline.routed_entry())
    comparison = write_comparison(out, columns, summaries, extra_plots=[picture] if picture else [],
                                  trainers=entries)
    print()
    print(comparison_text(comparison))
    print()
    print("plots:")
    for plot in comparison["plots"]:
        print(f"  {plot}")
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.json'} in "
          f"{format_duration(time.monotonic() - started)}")
    return 0


def register(subparsers) -> None:
    from nnunet_missingmod.demo.pipeline import DEFAULT_ROUTED, DEFAULT_TRAINERS, STOCK_TRAINER

    p = subparsers.add_parser(
        "demo", help="phantom data -> train stock nnU-Net and the missing-modality trainers -> compare over 15 subsets",
        description="Show what the plugin is for, in one run: phantom BraTS cases on real anatomy (training cases "
                    "and held-out test cases with distinct ids), converted by our converter, planned by "
                    "nnUNetv2_plan_and_preprocess, trained by nnUNetv2_train (stock nnU-Net training and the "
                    "missing-modality trainers, the same number of iterations each), evaluated on the held-out "
                    "cases under all 15 modality subsets, and compared in one table (comparison.md, "
                    "comparison.json) and plot. A rerun into the same folder reuses every finished stage.")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="output folder: new, empty, or one an earlier demo run wrote (its finished stages are "
                        "reused); a non-empty folder the demo did not make is refused (default: demo_output)")
    p.add_argument("--trainers", nargs="+", default=None, metavar="TRAINER",
                   help="trainers to compare, by class name without budget suffix (default on cpu: "
                        f"{' '.join(DEFAULT_TRAINERS['cpu'])}; on cuda: {' '.join(DEFAULT_TRAINERS['cuda'])}; "
                        "default trainers that are not registered are skipped)")
    # "debug" (2 iterations, the _debug variants) is for the tests and left out of the help
    public = [b for b in BUDGETS.values() if b.name != "debug"]
    p.add_argument("--budget", choices=tuple(BUDGETS), default=None,
                   metavar="{" + ",".join(b.name for b in public) + "}",
                   help="training iterations per trainer, equal for all: "
                        + ", ".join(f"{b.name} {b.iterations}" for b in public)
                        + " (default: small on cpu, medium on cuda)")
    p.add_argument("--routed", default=None, metavar="TRAINER",
                   help="also evaluate the routed pair (predict/evaluate --full-set-model): complete scans go to "
                        f"stock nnU-Net ({STOCK_TRAINER}), every other case to TRAINER, one of --trainers; shown as "
                        f"its own column (default: {DEFAULT_ROUTED} when it is trained; 'none': no routed pair)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train and predict (default auto: cuda when PyTorch sees a GPU, else cpu)")
    p.add_argument("--cases", type=int, default=DEFAULT_CASES, metavar="N",
                   help="phantom training cases; the held-out test set has a third as many, 2 to 5 "
                        "(default: %(default)s)")
    p.add_argument("--verbose", action="store_true",
                   help="show nnU-Net's output in the terminal (always kept in DIR/logs/)")
    p.set_defaults(func=run_demo)
