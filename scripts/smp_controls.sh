#!/usr/bin/env bash
# Controls for the SMP grid's STS-B result (docs/results/smp.md): is it SMP's mask or the fact that
# its three seeds share ONE mask? On the grid's exact setting (the first 1,000 training rows, as
# those records were made): the INVERSE of SMP's mask (the 36 heads it removed, 6 per layer, the
# same per-layer rule) fine-tuned with seeds 1-3, and random masks of seeds 4-10 beside the grid's
# 1-3 (ten random masks). Records: docs/results/runs/smp_controls.
#   bash scripts/smp_controls.sh [OUT=outputs/smp_controls] [DATA=../shared/data]
set -uo pipefail
OUT=${1:-outputs/smp_controls}
DATA=${2:-../shared/data}
export RECORDS=${RECORDS:-docs/results/runs/smp_controls}
SMP_MASK=${SMP_MASK:-docs/results/runs/smp/stsb/smp_s1/heads.json}  # one mask for all three seeds
source "$(dirname "$0")/grid_common.sh"
c="model=minilm data_root=$DATA task=stsb task.max_train_samples=1000 task.subsample=first task.max_length=64 \
trainer.epochs=3 trainer.batch_size=32 trainer.lr=1e-4 trainer.progress_bar=false logger.mode=disabled \
export_model=false heads=36 pipeline=[prune,finetune,evaluate]"
for s in 1 2 3; do run "stsb/smp_inverse_s$s" $c method=mask method.heads="$SMP_MASK" method.invert=true seed=$s; done
for s in 4 5 6 7 8 9 10; do run "stsb/random_s$s" $c method=random seed=$s; done
