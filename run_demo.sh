#!/usr/bin/env bash
# The main job on the embedded default data, on the CPU: phantom BraTS cases → convert → plan and preprocess →
# train a modality-dropout model → predict cases with missing sequences → evaluate all 15 subsets.
# Usage: ./run_demo.sh [OUT_DIR]   (default demo_output/; TRAINER=ModalityDropoutTrainer for a real training run)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
OUT=$(mkdir -p "${1:-demo_output}" && cd "${1:-demo_output}" && pwd)
MARKER="$OUT/.nnunet-missingmod-demo"
if [ -n "$(ls -A "$OUT")" ] && [ ! -f "$MARKER" ]; then
    echo "run_demo.sh: $OUT is not empty and was not made by this demo; choose another folder" >&2
    exit 2
fi
find "$OUT" -mindepth 1 -maxdepth 1 ! -name "$(basename "$MARKER")" -exec rm -rf {} +  # a rerun starts afresh
touch "$MARKER"
TRAINER=${TRAINER:-ModalityDropoutTrainer_debug}
export nnUNet_raw="$OUT/nnUNet_raw" nnUNet_preprocessed="$OUT/nnUNet_preprocessed" nnUNet_results="$OUT/nnUNet_results"
export nnUNet_extTrainer=$(nnunet-missingmod trainer-dir) nnUNet_compile=f nnUNet_def_n_proc=2

echo "== 1. phantom data on ICBM152 anatomy (BraTS 2021 layout), converted to nnU-Net raw"
nnunet-missingmod phantom "$OUT/source_train" -n 10 --layout brats2021 --spacing 6 --seed 0
nnunet-missingmod phantom "$OUT/source_test" -n 3 --layout brats2021 --spacing 6 --seed 1000
nnunet-missingmod convert brats2021 "$OUT/source_train" 500 --name PhantomTrain
nnunet-missingmod convert brats2021 "$OUT/source_test" 501 --name PhantomTest

echo "== 2. stock nnU-Net planning and preprocessing"
nnUNet_n_proc_DA=1 nnUNetv2_plan_and_preprocess -d 500 -c 3d_fullres -np 2 --verify_dataset_integrity

echo "== 3. training with per-sample modality dropout: $TRAINER"
nnUNet_n_proc_DA=0 nnUNetv2_train 500 3d_fullres 0 -tr "$TRAINER" -device cpu

echo "== 4. prediction on cases with missing sequences (BraTS layout, files removed)"
cp -r "$OUT/source_test" "$OUT/incomplete"
rm "$OUT"/incomplete/*/*_seg.nii.gz
first=$(ls "$OUT/incomplete" | head -1); second=$(ls "$OUT/incomplete" | sed -n 2p)
rm "$OUT/incomplete/$first/${first}_t1ce.nii.gz" "$OUT/incomplete/$first/${first}_t2.nii.gz"
rm "$OUT/incomplete/$second/${second}_flair.nii.gz"
nnunet-missingmod predict -i "$OUT/incomplete" -o "$OUT/predictions" -d 500 -c 3d_fullres -f 0 -tr "$TRAINER" \
    -device cpu --disable_tta
echo "sidecar of $first:"; cat "$OUT/predictions/$first.modalities.json"; echo

echo "== 5. robustness over all 15 modality subsets"
nnunet-missingmod evaluate -i "$nnUNet_raw/Dataset501_PhantomTest/imagesTr" \
    -l "$nnUNet_raw/Dataset501_PhantomTest/labelsTr" -d 500 -c 3d_fullres -f 0 -tr "$TRAINER" \
    -device cpu --disable_tta -o "$OUT/evaluation"
echo "== done: $OUT/evaluation/summary.md, robustness.png, subsets.png; predictions in $OUT/predictions"
