#!/bin/bash
# 3 runs each of stock, the bar and the candidate at the demo's small budget
cd /work/main
export PATH=/work/main/.venv/bin:$PATH
for r in 1 2 3; do
  nice -n 15 nnunet-missingmod demo --trainers FullSetTrainer ModalityDropoutTrainer_cardinality TwoPhaseDistillTrainer TwoPhaseTrainer --budget small --out /work/runs/small_run$r > /work/runs/small_run$r.log 2>&1
done
