"""Throughput of ``nnunet-missingmod evaluate`` (case x subset predictions per minute) and where its time goes.

A small phantom model: phantom cases (ICBM152 anatomy) converted with our converter and planned by nnU-Net (the
same dataset as ``bench_overhead.py``), and a ``ModalityDropoutTrainer`` fold 0 checkpoint written straight after
``initialize()`` (untrained weights: throughput does not depend on them, but the scoring cost depends on the
predicted masks, which are noise-like here; see docs/benchmarks.md). Then the real command, in this process::

    nnunet-missingmod evaluate -i imagesTr -l labelsTr -m MODEL -f 0 -o OUT -device cpu -np 1 [--disable_tta]

once per ``--pipelines`` setting ``NPP:NPS`` (``-npp``/``-nps``; default ``0:0`` = every step in this process, one
after the other, as ``evaluate`` ran before its pipeline, then ``3:3`` = nnUNetv2_predict's defaults), in turns
over ``--rounds`` so that a change of the machine's load reaches every setting alike. Timers are wrapped around
the stages (methods of ``MissingModalityPredictor``, the export and the scoring/report functions, looked up by
name at call time, so the wrapping does not change what runs); with background processes the reading,
preprocessing and export run in them and show as 0 here:

* start: model folder checks, predictor build and checkpoint load;
* read + checks + preprocessing: ``prepare_case`` (nibabel NaN/truncation check, SimpleITK read, geometry checks,
  nnU-Net crop, normalisation, resampling), once per case; of which ``preprocess`` (nnU-Net's part);
* prediction: ``predict_preprocessed`` (zeroing + sliding window), once per case x subset;
* export: ``export_case`` = resampling of the logits to the original geometry
  (``convert_predicted_logits_to_segmentation_with_correct_shape``) + writing the NIfTI;
* scoring: ``score_prediction_folders`` (reading, Dice, HD95), then ``write_report`` (CSV, JSON, plots).

    .venv/bin/python benchmarks/bench_evaluate.py [--cases 6] [--subsets all] [--tta] [--pipelines 0:0 3:3]
        [--rounds 1] [--cprofile] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_overhead  # noqa: E402  (the phantom dataset set-up)
from machine import cpu_model, load_average  # noqa: E402

TIMES = collections.defaultdict(float)
CALLS = collections.Counter()


def _timed(owner, attribute: str, label: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - start
            CALLS[label] += 1
    setattr(owner, attribute, wrapper)


def _write_model(root: Path) -> tuple:
    """A trained-model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth) from an initialised trainer."""
    import torch
    from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
    trainer = bench_overhead._trainer(root, ModalityDropoutTrainer)
    folder = Path(trainer.output_folder_base)
    checkpoint = Path(trainer.output_folder) / "checkpoint_final.pth"
    trainer.save_checkpoint(str(checkpoint))
    shutil.copy(root / "nnUNet_preprocessed" / bench_overhead.DATASET / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(root / "nnUNet_preprocessed" / bench_overhead.DATASET / "dataset.json", folder / "dataset.json")
    note = None
    try:  # the predictor finds the trainer class by name, through every trainer module of the package
        from nnunet_missingmod.inference.predictor import ensure_trainer_lookup
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        ensure_trainer_lookup()
        recursive_find_trainer_class_by_name("ModalityDropoutTrainer")
    except Exception as e:  # noqa: BLE001 - a trainer module being written by someone else
        data = torch.load(checkpoint, map_location="cpu", weights_only=False)
        data["trainer_name"] = "nnUNetTrainer"  # same network; only the sidecars' warning text differs
        torch.save(data, checkpoint)
        note = (f"trainer lookup of ModalityDropoutTrainer failed ({type(e).__name__}: {e}); the checkpoint names "
                f"nnUNetTrainer instead (same network and work)")
    return folder, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size in mm (4: 50x59x48)")
    parser.add_argument("--cases", type=int, default=6, help="number of phantom cases evaluated (at most 6)")
    parser.add_argument("--subsets", default=None, help="evaluate's --subsets (default: all 15)")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA on (evaluate's default; 8x the network "
                                                           "work in 3d); default here: --disable_tta")
    parser.add_argument("-np", dest="num_processes", type=int, default=1, help="scoring processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pipelines", nargs="+", default=["0:0", "3:3"], metavar="NPP:NPS",
                        help="evaluate's -npp:-nps settings, measured in turns (default: 0:0 3:3)")
    parser.add_argument("--rounds", type=int, default=1, help="turns over the settings (default 1)")
    parser.add_argument("--cprofile", action="store_true", help="also print cProfile's top 25 by cumulative time")
    parser.add_argument("--work-dir", default=None, help="keep the planned phantom dataset here and reuse it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work_dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        bench_overhead._environment(root)
        bench_overhead._setup(root, args.spacing)
        run(root, Path(tmp), args)


def run(root: Path, tmp: Path, args) -> None:
    import torch
    import nnunetv2.inference.export_prediction as export_prediction
    from nnunet_missingmod import cli
    from nnunet_missingmod.evaluation import report, scoring
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    from nnunet_missingmod.modalities import parse_subsets

    model, note = _write_model(root)
    raw = root / "nnUNet_raw" / bench_overhead.DATASET
    cases = sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))[:args.cases]
    images, labels = tmp / "images", tmp / "labels"
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    for case in cases:
        shutil.copy(raw / "labelsTr" / f"{case}.nii.gz", labels)
        for channel in range(4):
            shutil.copy(raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz", images)
    n_subsets = len(parse_subsets(args.subsets))

    from nnunet_missingmod.inference import pipeline
    labels_in_order = []
    for owner, attribute, label in (
            (MissingModalityPredictor, "initialize_from_trained_model_folder", "start: predictor + checkpoint"),
            (MissingModalityPredictor, "prepare_case", "read + checks + preprocessing (per case)"),
            (MissingModalityPredictor, "preprocess", "  of which nnU-Net's preprocessing"),
            (MissingModalityPredictor, "predict_preprocessed", "prediction (per case x subset)"),
            (pipeline, "export_case", "export (per case x subset)"),
            (export_prediction, "convert_predicted_logits_to_segmentation_with_correct_shape",
             "  of which resampling to the original geometry"),
            (scoring, "score_prediction_folders", "scoring (Dice, HD95, reading)"),
            (report, "write_report", "report (CSV, JSON, plots)")):
        _timed(owner, attribute, label)
        labels_in_order.append(label)

    settings = [tuple(int(n) for n in text.split(":")) for text in args.pipelines]
    totals = collections.defaultdict(list)
    stages = {}
    load_start = load_average()
    profiler = None
    if args.cprofile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    for _ in range(args.rounds):
        for npp, nps in settings:
            TIMES.clear()
            CALLS.clear()
            argv = ["evaluate", "-i", str(images), "-l", str(labels), "-m", str(model), "-f", "0", "-o",
                    str(tmp / f"out_{npp}_{nps}"), "-device", args.device, "-np", str(args.num_processes),
                    "-npp", str(npp), "-nps", str(nps), "--figures", "0"]
            if args.subsets:
                argv += ["--subsets", args.subsets]
            if not args.tta:
                argv.append("--disable_tta")
            start = time.perf_counter()
            status = cli.main(argv)
            totals[(npp, nps)].append(time.perf_counter() - start)
            if status not in (0, None):
                raise SystemExit(f"evaluate -npp {npp} -nps {nps} failed with status {status}")
            stages[(npp, nps)] = (dict(TIMES), dict(CALLS))
    if profiler is not None:
        profiler.disable()
    load_end = load_average()

    n_predictions = len(cases) * n_subsets
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads "
          f"{torch.get_num_threads()} (evaluate sets them: all CPUs); torch {torch.__version__}; "
          f"load average {load_start} -> {load_end}")
    if note:
        print(f"note: {note}")
    print(f"evaluate: {len(cases)} cases x {n_subsets} subsets = {n_predictions} predictions, TTA "
          f"{'on' if args.tta else 'off'}, scoring -np {args.num_processes}, device {args.device}, "
          f"{args.rounds} round(s)")
    baseline = min(totals[settings[0]])
    for npp, nps in settings:
        best = min(totals[(npp, nps)])
        print(f"-npp {npp} -nps {nps}: best of {len(totals[(npp, nps)])} {best:.1f} s "
              f"({', '.join(f'{t:.1f}' for t in totals[(npp, nps)])}): {n_predictions / best * 60:.1f} case x "
              f"subset predictions per minute, {baseline / best:.2f}x the first setting's")
        times, calls = stages[(npp, nps)]
        accounted = sum(v for k, v in times.items() if not k.startswith("  "))
        for label in labels_in_order:
            value = times.get(label, 0.0)
            print(f"    {label:48s} {value:7.2f} s  ({calls.get(label, 0)} calls, in this process)")
        print(f"    {'other (waiting for workers, discovery, checks)':48s} {totals[(npp, nps)][-1] - accounted:7.2f} s")
    if profiler is not None:
        import pstats
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
