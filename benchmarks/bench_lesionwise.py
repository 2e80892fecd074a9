"""Lesion-wise scoring (BraTS 2023 glioma protocol) against today's whole-volume Dice + HD95, on one synthetic
240x240x155 case with 3 regions (WT/TC/ET) and a false-positive blob.

    python benchmarks/bench_lesionwise.py [--repeats 3]

Goal (issue: BraTS protocol): lesion-wise at most 2x the whole-volume time of the same case. Prints both medians
and the ratio.
"""
import argparse
import statistics
import time

import numpy as np

from nnunet_missingmod.evaluation.lesionwise import lesionwise_scores
from nnunet_missingmod.evaluation.metrics import dice, hd95

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def synthetic_case():
    """Nested spheres (labels 2 ⊃ 1 ⊃ 3) as ground truth; the prediction is shifted by 2 voxels and has an extra
    blob far away."""
    z, y, x = np.ogrid[:155, :240, :240]
    radius = np.sqrt((z - 77) ** 2 + (y - 120) ** 2 + (x - 110) ** 2)
    truth = np.where(radius < 30, 2, 0)
    truth[radius < 15] = 1
    truth[radius < 8] = 3
    prediction = np.roll(truth, 2, axis=2)
    prediction[20:24, 30:34, 30:34] = 2
    return prediction, truth


def whole_volume(prediction, truth):
    for labels in REGIONS.values():
        p, t = np.isin(prediction, labels), np.isin(truth, labels)
        dice(p, t)
        hd95(p, t)


def lesion_wise(prediction, truth):
    for labels in REGIONS.values():
        lesionwise_scores(np.isin(prediction, labels), np.isin(truth, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prediction, truth = synthetic_case()
    seconds = {}
    for scorer in (whole_volume, lesion_wise):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            scorer(prediction, truth)
            runs.append(time.perf_counter() - start)
        seconds[scorer.__name__] = statistics.median(runs)
    ratio = seconds["lesion_wise"] / seconds["whole_volume"]
    print(f"whole-volume {seconds['whole_volume']:.2f} s, lesion-wise {seconds['lesion_wise']:.2f} s per case "
          f"(3 regions, median of {args.repeats}): ratio {ratio:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
