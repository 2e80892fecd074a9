"""Phantom generation speed: seconds per case at a spacing, anatomy cached (the demo and the tests generate dozens).

    python benchmarks/bench_phantom.py [--spacing 6] [--cases 5]

Goal: under 1 s per case at 6 mm on the 2-core development machine (the former wall-clock test's bound).
"""
import argparse
import statistics
import time

from nnunet_missingmod.conversion.phantom import generate_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacing", type=float, default=6.0)
    parser.add_argument("--cases", type=int, default=5)
    args = parser.parse_args()
    generate_case(0, args.spacing)  # loads and caches the anatomy
    seconds = []
    for seed in range(1, args.cases + 1):
        start = time.perf_counter()
        generate_case(seed, args.spacing)
        seconds.append(time.perf_counter() - start)
    print(f"phantom at {args.spacing:g} mm: median {statistics.median(seconds):.3f} s per case, "
          f"max {max(seconds):.3f} s over {args.cases} cases (goal < 1 s)")


if __name__ == "__main__":
    main()
