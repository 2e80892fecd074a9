"""Benchmark HD95 on a realistic 240×240×155 whole-tumour pair, and scoring throughput over cases.

Run:  .venv/bin/python benchmarks/bench_hd95.py [--repeats 5] [--cases 24]

Times (median of ``--repeats`` after one warm-up call, same masks for every implementation):

* ours, max_directed: ``nnunet_missingmod.evaluation.metrics.hd95``'s default, the BraTS 2023 HD95 (surface
  elements on the voxel-corner grid weighted by area, :mod:`nnunet_missingmod.evaluation.surface`; union
  bounding-box crop, scipy EDT on the crop);
* ours, voxel_max_directed: the voxel-surface 95th percentiles (MONAI's definition; the default before the BraTS
  2023 HD95, the baseline of the "vs old" column), and ``pooled``;
* ours uncropped: the voxel surfaces and EDT on the full volume, i.e. what medpy's ``hd95`` does (the medpy-style
  baseline; medpy itself is GPL and not installed);
* MONAI ``compute_hausdorff_distance(percentile=95)`` on CPU tensors, if MONAI is installed.

Then scores ``--cases`` synthetic 240×240×155 cases (3 regions each, NIfTI on disk) with 1 and 2 processes and
prints cases/s. Prints machine information first; the load average matters on a shared machine.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, List, Tuple

import numpy as np
from scipy import ndimage

from nnunet_missingmod.evaluation import metrics
from nnunet_missingmod.evaluation.metrics import hd95

SHAPE = (155, 240, 240)  # numpy (z, y, x) of a 240×240×155 BraTS volume
SPACING = (1.0, 1.0, 1.0)


def irregular_blob(center: Tuple[float, float, float], radii: Tuple[float, float, float], seed: int,
                   roughness: float = 0.35) -> np.ndarray:
    """An ellipsoid whose boundary is perturbed by smooth noise: a plausible whole-tumour shape."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    distance = ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + \
               ((x - center[2]) / radii[2]) ** 2
    noise = ndimage.gaussian_filter(rng.standard_normal(SHAPE).astype(np.float32), sigma=5)
    noise /= noise.std()
    return distance + roughness * noise < 1.0


def realistic_pair() -> Tuple[np.ndarray, np.ndarray]:
    """Reference WT (~150 cm³) and a prediction a few mm off with a different boundary, plus a small false-positive
    blob about 6 cm away."""
    ref = irregular_blob((78, 110, 125), (28, 36, 32), seed=1)
    pred = irregular_blob((80, 113, 122), (27, 37, 33), seed=2)
    pred |= irregular_blob((60, 170, 60), (4, 5, 4), seed=3, roughness=0.1)
    return pred, ref


def far_false_positive_pair() -> Tuple[np.ndarray, np.ndarray]:
    """Worst realistic crop: as :func:`realistic_pair`, plus a false-positive blob near the opposite corner of the
    brain, so the union bounding box spans about the whole brain (~140×170×140 mm)."""
    pred, ref = realistic_pair()
    pred |= irregular_blob((18, 40, 200), (4, 5, 4), seed=4, roughness=0.1)
    pred |= irregular_blob((140, 200, 70), (4, 5, 4), seed=5, roughness=0.1)
    return pred, ref


def hd95_uncropped(pred: np.ndarray, ref: np.ndarray, spacing=SPACING) -> float:
    """Our definition without the crop: full-volume surfaces and EDTs (medpy's approach)."""
    pred_surface, ref_surface = metrics.surface(pred), metrics.surface(ref)
    pred_to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    ref_to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


def hd95_monai(pred: np.ndarray, ref: np.ndarray, spacing=SPACING) -> float:
    import torch
    from monai.metrics import compute_hausdorff_distance
    as_tensor = lambda m: torch.from_numpy(m[None, None])  # noqa: E731  (B, C, *spatial), bool
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_hausdorff_distance(as_tensor(pred), as_tensor(ref), include_background=True,
                                                percentile=95, spacing=spacing)[0, 0])


def median_time(function: Callable[[], float], repeats: int) -> Tuple[float, float, List[float]]:
    value = function()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value, times


def machine_info() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import scipy
    versions = f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}"
    try:
        import monai
        versions += f", monai {monai.__version__}"
    except ImportError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}; {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}\n"
            f"{versions}\nload average (1, 5, 15 min) at start: {load}")


def bench_hd95(repeats: int) -> None:
    pred, ref = realistic_pair()
    box = metrics.union_bounding_box(pred, ref)
    box_shape = tuple(s.stop - s.start for s in box)
    print(f"pair: {SHAPE[2]}×{SHAPE[1]}×{SHAPE[0]} voxels, 1 mm; reference {ref.sum()} voxels, prediction "
          f"{pred.sum()} voxels (incl. a false-positive blob); union bounding box {box_shape} (z, y, x)")
    far_pred, far_ref = far_false_positive_pair()
    far_box = tuple(s.stop - s.start for s in metrics.union_bounding_box(far_pred, far_ref))
    ours, ours_value, ours_times = median_time(lambda: hd95(pred, ref, SPACING, "voxel_max_directed"), repeats)
    new, new_value, new_times = median_time(lambda: hd95(pred, ref, SPACING, "max_directed"), repeats)
    pooled, pooled_value, _ = median_time(lambda: hd95(pred, ref, SPACING, "pooled"), repeats)
    full, full_value, _ = median_time(lambda: hd95_uncropped(pred, ref), repeats)
    print(f"{'implementation':52s} {'median s':>9s} {'HD95 mm':>9s} {'vs old':>8s}")
    print(f"{'ours, max_directed = BraTS 2023 (surface elements)':52s} {new:9.3f} {new_value:9.3f} "
          f"{new / ours:8.2f}")
    print(f"{'ours, voxel_max_directed (old default, cropped EDT)':52s} {ours:9.3f} {ours_value:9.3f} {1:8.2f}")
    print(f"{'ours, pooled (cropped EDT)':52s} {pooled:9.3f} {pooled_value:9.3f} {pooled / ours:8.2f}")
    box_text = 'x'.join(map(str, far_box))
    for variant in ("max_directed", "voxel_max_directed"):
        far, far_value, _ = median_time(functools.partial(hd95, far_pred, far_ref, SPACING, variant), repeats)
        print(f"{'ours, ' + variant + ', far FPs (' + box_text + ')':52s} {far:9.3f} {far_value:9.3f} "
              f"{far / ours:8.2f}")
    print(f"{'ours uncropped (full-volume EDT, medpy-style)':52s} {full:9.3f} {full_value:9.3f} {full / ours:8.2f}")
    try:
        monai_time, monai_value, _ = median_time(lambda: hd95_monai(pred, ref), repeats)
        print(f"{'MONAI compute_hausdorff_distance(percentile=95)':52s} {monai_time:9.3f} {monai_value:9.3f} "
              f"{monai_time / ours:8.2f}")
    except ImportError:
        print("MONAI not installed: skipped")
    print(f"max_directed, all {repeats} timings (s): {', '.join(f'{t:.3f}' for t in new_times)}")
    print(f"voxel_max_directed, all {repeats} timings (s): {', '.join(f'{t:.3f}' for t in ours_times)}")
    assert abs(full_value - ours_value) < 1e-9, "cropping changed the result"


def bench_scoring(n_cases: int) -> None:
    """Scoring throughput (default variant, lesion-wise columns included); every case is the same pair of label
    maps (writing distinct ones would dominate the benchmark's run time and not change the scoring work)."""
    import shutil

    import SimpleITK as sitk
    from nnunet_missingmod.evaluation.scoring import score_prediction_folder
    regions = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = os.path.join(tmp, "gt"), os.path.join(tmp, "pred")
        for folder, seed in ((gt_dir, 10), (pred_dir, 20)):
            os.makedirs(folder)
            wt = irregular_blob((78, 110, 125), (28, 36, 32), seed=seed)
            core = irregular_blob((78, 112, 125), (16, 20, 18), seed=seed + 1)
            enhancing = core & ~irregular_blob((78, 112, 125), (11, 14, 12), seed=seed + 2)
            labels = wt.astype(np.uint8) + core + enhancing  # 1 edema, 2 core, 3 enhancing, nested regions
            first = os.path.join(folder, "case_000.nii.gz")
            sitk.WriteImage(sitk.GetImageFromArray(labels), first)
            for i in range(1, n_cases):
                shutil.copyfile(first, os.path.join(folder, f"case_{i:03d}.nii.gz"))
        for processes in (1, 2):
            start = time.perf_counter()
            score_prediction_folder(gt_dir, pred_dir, regions, num_processes=processes)
            elapsed = time.perf_counter() - start
            print(f"scoring {n_cases} cases × 3 regions (240×240×155 .nii.gz, incl. reading): -np {processes}: "
                  f"{elapsed:.1f} s = {n_cases / elapsed:.2f} cases/s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--skip-scoring", action="store_true")
    args = parser.parse_args(argv)
    print(machine_info())
    bench_hd95(args.repeats)
    if not args.skip_scoring:
        bench_scoring(args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
