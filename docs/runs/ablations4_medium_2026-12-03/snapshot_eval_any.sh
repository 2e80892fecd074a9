#!/bin/bash
export PYTHONPATH=/work/main PATH=/work/main/.venv/bin:$PATH nnUNet_compile=f
set -e
for r in 1 2 3; do
  D=/work/runs/$1_$r
  M=$D/nnUNet_results/Dataset500_DemoTrain/$2_demoMedium__nnUNetPlans__3d_fullres
  S=/work/runs/$3_$r/$2_demoMedium__nnUNetPlans__3d_fullres
  mkdir -p $S/fold_all; cp $M/dataset.json $M/plans.json $S/
  python - "$M/fold_all/checkpoint_final.pth" "$S/fold_all/checkpoint_final.pth" <<'PY'
import sys, torch
c = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print("snapshot epoch", c["missingmod_extra"]["teacher_snapshot_epoch"])
c["network_weights"] = c["missingmod_extra"]["modules"]["teacher"]
torch.save({k: c[k] for k in ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch", "optimizer_state", "grad_scaler_state", "logging", "_best_ema")}, sys.argv[2])
PY
  nnunet-missingmod evaluate -i $D/nnUNet_raw/Dataset501_DemoTest/imagesTr -l $D/nnUNet_raw/Dataset501_DemoTest/labelsTr -m $S -f all -device cpu --disable_tta -np 1 -npp 0 -nps 0 -o /work/runs/$3_$r/eval > /work/runs/$3_$r/eval.log 2>&1
  python3 -c "
import json; s=json.load(open('/work/runs/$3_$r/eval/summary.json')); t=s['trainers'][0]
print('run $r snapshot complete', {g: round(s['per_subset'][t][g]['T1+T1ce+T2+FLAIR']['dice']['mean'],3) for g in ('WT','TC','ET')}, '15-mean', {g: round(s['mean_over_subsets'][t][g]['dice']['mean'],3) for g in ('WT','TC','ET')})"
done
