"""``evaluate --subset-batch K``: case x subset predictions per minute, one sliding window per subset (K = 1) vs
each tile's K masked copies as one batch.

The phantom model of ``bench_evaluate.py`` (phantom cases converted with our converter and planned by nnU-Net, a
``ModalityDropoutTrainer`` fold 0 checkpoint written straight after ``initialize()``: untrained weights, the work
does not depend on them), then the real command in this process, once per K in turns over ``--rounds``::

    nnunet-missingmod evaluate -i imagesTr -l labelsTr -m MODEL -f 0 -o OUT -device DEVICE --subset-batch K
        -npp 0 -nps 0 --figures 0 [--disable_tta]

Throughput is counted twice: over the whole command (start, reading, export, scoring included) and over the
prediction alone (a timer around ``predict_preprocessed_subsets``). Every K's segmentation files are compared with
K = 1's, voxel for voxel; and on the first case the logits of one sliding window per subset and of all 15 batched
are compared directly: the voxels whose segmentation differs (each must be a tie of class probabilities) and the
largest probability difference.

    .venv/bin/python benchmarks/bench_subset_batch.py [--spacing 7] [--cases 2] [--batches 1 3 5 15] [--tta]
        [--rounds 1] [--device cpu] [--work-dir DIR]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_evaluate  # noqa: E402  (the model folder)
import bench_overhead  # noqa: E402  (the phantom dataset set-up)
from machine import cpu_model, load_average  # noqa: E402

PREDICTION_SECONDS = collections.defaultdict(float)


def _timed_prediction(owner) -> None:
    original = owner.predict_preprocessed_subsets

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PREDICTION_SECONDS["now"] += time.perf_counter() - start
    owner.predict_preprocessed_subsets = wrapper


def _segmentations(folder: Path) -> dict:
    import SimpleITK as sitk
    return {str(p.relative_to(folder)): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted(folder.rglob("*.nii.gz")) if not p.name.startswith(".")}


def _logit_comparison(model: Path, images: Path, case: str, device: str, tta: bool) -> str:
    """One case: 15 sliding windows vs one with the 15 subsets batched, from the same preprocessed array."""
    import torch
    from nnunet_missingmod.inference.discovery import discover_cases
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    from nnunet_missingmod.modalities import SUBSETS
    predictor = MissingModalityPredictor(use_mirroring=tta, device=torch.device(device), allow_tqdm=False)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's messages while it finds the trainer
        predictor.initialize_from_trained_model_folder(str(model), (0,))
    files = next(c for c in discover_cases(str(images), predictor.channel_modalities, ".nii.gz") if c.case_id == case)
    data = predictor.prepare_case(files).data
    alone = [predictor.predict_preprocessed(data, s) for s in SUBSETS]
    batched = predictor.predict_preprocessed_subsets(data, SUBSETS)
    labels = predictor.label_manager
    differing, largest, tie = 0, 0.0, 0.0
    for a, b in zip(alone, batched):
        p_a, p_b = labels.apply_inference_nonlin(a.float()), labels.apply_inference_nonlin(b.float())
        differ = (labels.convert_probabilities_to_segmentation(p_a)
                  != labels.convert_probabilities_to_segmentation(p_b))
        differing += int(differ.sum())
        largest = max(largest, float((p_a - p_b).abs().max()))
        if differ.any():
            margin = ((p_a - 0.5).abs().min(0).values if labels.has_regions
                      else (lambda t: t[0] - t[1])(p_a.topk(2, dim=0).values))
            tie = max(tie, float(margin[differ].max()))
    logits = max(float((a.float() - b.float()).abs().max()) for a, b in zip(alone, batched))
    return (f"case {case}, 15 subsets, logits of 15 sliding windows vs 1 batched: {differing} of "
            f"{15 * data[0].numel()} voxels segmented differently (largest distance from a probability tie among "
            f"them {tie:.2g}), max probability difference {largest:.2g}, max logit difference {logits:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=7.0,
                        help="phantom voxel size in mm (7: 28x33x27, the tests' plans; 4: 50x59x48)")
    parser.add_argument("--cases", type=int, default=2, help="number of phantom cases evaluated (at most 6)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 3, 5, 15], metavar="K",
                        help="--subset-batch values, measured in turns (default: 1 3 5 15; 1 first: the baseline)")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA on (evaluate's default; 8x the network "
                                                           "work in 3d); default here: --disable_tta")
    parser.add_argument("--rounds", type=int, default=1, help="turns over the K values (default 1)")
    parser.add_argument("--device", default="cpu")
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
    from nnunet_missingmod import cli
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor

    model, note = bench_evaluate._write_model(root)
    raw = root / "nnUNet_raw" / bench_overhead.DATASET
    cases = sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))[:args.cases]
    images, labels = tmp / "images", tmp / "labels"
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    for case in cases:
        shutil.copy(raw / "labelsTr" / f"{case}.nii.gz", labels)
        for channel in range(4):
            shutil.copy(raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz", images)
    _timed_prediction(MissingModalityPredictor)

    totals, predicting = collections.defaultdict(list), collections.defaultdict(list)
    load_start = load_average()
    for _ in range(args.rounds):
        for k in args.batches:
            PREDICTION_SECONDS.clear()
            argv = ["evaluate", "-i", str(images), "-l", str(labels), "-m", str(model), "-f", "0", "-o",
                    str(tmp / f"out_{k}"), "-device", args.device, "-np", "1", "-npp", "0", "-nps", "0",
                    "--figures", "0", "--bootstrap", "100", "--subset-batch", str(k)]
            if not args.tta:
                argv.append("--disable_tta")
            start = time.perf_counter()
            status = cli.main(argv)
            totals[k].append(time.perf_counter() - start)
            predicting[k].append(PREDICTION_SECONDS["now"])
            if status not in (0, None):
                raise SystemExit(f"evaluate --subset-batch {k} failed with status {status}")
    load_end = load_average()
    comparison = _logit_comparison(model, images, cases[0], args.device, args.tta)

    reference = _segmentations(tmp / f"out_{args.batches[0]}" / "predictions")
    n_predictions = len(cases) * 15
    patch = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]["patch_size"]
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, device "
          f"{args.device}, torch threads {torch.get_num_threads()} (evaluate's: every CPU); load average "
          f"{load_start} -> {load_end}")
    if note:
        print(f"note: {note}")
    shape = tuple(reference[next(iter(reference))].shape)
    print(f"phantom at {args.spacing} mm (image {shape}, patch {patch}), {len(cases)} cases "
          f"x 15 subsets = {n_predictions} predictions, TTA {'on' if args.tta else 'off'}, {args.rounds} round(s), "
          "best of the rounds")
    base_total, base_predicting = min(totals[args.batches[0]]), min(predicting[args.batches[0]])
    print("\n| --subset-batch | evaluate wall time (s) | predictions per minute | vs K=1 | sliding windows (s) | "
          "vs K=1 | voxels differing from K=1 |")
    print("|---|---|---|---|---|---|---|")
    for k in args.batches:
        total, window = min(totals[k]), min(predicting[k])
        files = _segmentations(tmp / f"out_{k}" / "predictions")
        differing = sum(int((files[name] != reference[name]).sum()) for name in reference)
        voxels = sum(a.size for a in reference.values())
        print(f"| {k} | {total:.1f} | {n_predictions / total * 60:.1f} | {base_total / total:.2f}x | {window:.1f} | "
              f"{base_predicting / window:.2f}x | {differing} of {voxels} |")
    print(f"\n{comparison}")


if __name__ == "__main__":
    main()
