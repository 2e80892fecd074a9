#!/usr/bin/env bash
# The point of the plugin in one run, on the CPU by default: phantom BraTS cases on real anatomy → convert → plan and
# preprocess → train stock nnU-Net and the missing-modality trainers at equal iterations → evaluate each on held-out
# cases under all 15 modality subsets → one comparison table and plot (see `nnunet-missingmod demo --help`).
# Usage: ./run_demo.sh [OUT_DIR] [demo options, e.g. --budget medium --device cuda --trainers ...]
#        (default --out demo_output; a rerun into the same folder reuses the finished stages)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
OUT=demo_output
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # a first argument that is not an option is the output folder
    OUT=$1
    shift
fi
exec nnunet-missingmod demo --out "$OUT" "$@"  # a later --out in "$@" wins
