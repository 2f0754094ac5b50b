#!/usr/bin/env bash
# The APD comparison of docs/results/apd.md on MiniLM; a cell whose metrics.json exists is skipped,
# so running it again continues where it stopped. Several workers may run it at once (start it twice
# for 2 cores); the dense fine-tune each method starts from is shared through the sweep cache.
# Each finished cell's record goes to RECORDS (default docs/results/runs/apd), so it continues on a fresh machine.
#   bash scripts/apd_grid.sh [OUT=outputs/apd] [DATA=../shared/data] [SEEDS="1 2 3"] [TASKS="rte mrpc sst2 stsb"] [SMP_PRUNER=]
# Every cell: the first 1,000 training rows (length 64, batch 32, AdamW lr 1e-4), 3 epochs of dense
# fine-tuning, then 3 epochs in which the heads go (36 of 72 kept) -- the same training budget:
#   dense | dense6 (the dense model fine-tuned the full 6 epochs: the reference at the pruned cells' budget) | random | michel | voita (L0 gates from the fine-tuned model) | apd |
#   apd_nopeer (APD's allocation, no peer distillation) | michel_peer (Michel's heads + peer distillation) |
#   smp (SMP_PRUNER=<meta run>/pruner.pt, by default the SMP grid's recorded one: prune the pretrained model, then 6 epochs: the others' 3 + 3) |
#   lossless (method.tolerance=0.01: APD picks K; 10 % of the rows held out for it).
set -uo pipefail
OUT=${1:-outputs/apd}
DATA=${2:-../shared/data}
SEEDS=${3:-1 2 3}
TASKS=${4:-rte mrpc sst2 stsb}
RECORDED_PRUNER=docs/results/runs/smp/meta/pruner.pt  # the SMP grid's meta-trained pruner, kept in git
SMP_PRUNER=${5:-$([ -f "$RECORDED_PRUNER" ] && realpath "$RECORDED_PRUNER")}
export RECORDS=${RECORDS:-docs/results/runs/apd}  # finished cells' records, kept in git (grid_common.sh)
# task.subsample=first: the file's first N rows, as these records were made (the default since issue 31 is a seeded random draw)
common="model=minilm data_root=$DATA task.max_train_samples=1000 task.subsample=first task.max_length=64 trainer.epochs=3 \
trainer.batch_size=32 trainer.lr=1e-4 trainer.progress_bar=false logger.mode=disabled export_model=false \
cache.dir=$OUT/cache"

source "$(dirname "$0")/grid_common.sh"

for s in $SEEDS; do for task in $TASKS; do
  c="$common task=$task seed=$s"
  run "$task/dense_s$s" $c method=none
  run "$task/dense6_s$s" $c method=none trainer.epochs=6
  run "$task/apd_s$s" $c method=apd heads=36
  run "$task/michel_s$s" $c method=michel heads=36
  run "$task/random_s$s" $c method=random heads=36
  run "$task/apd_nopeer_s$s" $c method=apd heads=36 distill=none
  run "$task/michel_peer_s$s" $c method=michel heads=36 distill=peer
  run "$task/voita_s$s" $c method=voita heads=36 "pipeline=[finetune,prune_joint,evaluate,export]"
  run "$task/lossless_s$s" $c method=apd method.tolerance=0.01
  [ -n "$SMP_PRUNER" ] && run "$task/smp_s$s" $c method=smp heads=36 method.pruner="$SMP_PRUNER" trainer.epochs=6
done; done
