#!/usr/bin/env bash
# The SMP comparison of docs/results/smp.md on MiniLM; a cell whose metrics.json exists is skipped,
# so running it again continues where it stopped.
#   bash scripts/smp_grid.sh [OUT=outputs/smp] [DATA=../shared/data] [SEEDS="1 2 3"] [TASKS="sst2 stsb mrpc rte"]
# Several workers may run it at once (each cell is claimed with a lock folder): start it twice for 2 cores.
# 1. meta-train the pruner once on CoLA, SST-2, MRPC and STS-B text (labels unused; RTE held out).
# 2. per task and seed, at 36 of 72 heads (6 per layer for SMP), the same 3-epoch fine-tune of the
#    first 1,000 training rows (length 64, batch 32, AdamW lr 1e-4) after pruning:
#    dense (no pruning) | smp (pretrained maps, before fine-tuning) | random (before fine-tuning) |
#    michel (scores the dense run's fine-tuned model, as in its paper, then the same fine-tune).
set -uo pipefail
OUT=${1:-outputs/smp}
DATA=${2:-../shared/data}
SEEDS=${3:-1 2 3}
TASKS=${4:-sst2 stsb mrpc rte}
common="model=minilm data_root=$DATA task.max_train_samples=1000 task.max_length=64 trainer.epochs=3 \
trainer.batch_size=32 trainer.lr=1e-4 trainer.progress_bar=false logger.mode=disabled"
after="pipeline=[prune,finetune,evaluate,export]"

source "$(dirname "$0")/grid_common.sh"

meta() {
  run meta method=smp "pipeline=[meta_train]" "method.meta_tasks=[cola,sst2,mrpc,stsb]" data_root="$DATA" \
    method.meta_steps=300 method.meta_batch_size=16 method.meta_grad_accum=4 method.meta_lr=0.1 \
    method.meta_max_length=64 method.map_size=64 seed=1 logger.mode=offline trainer.progress_bar=false \
    trainer.log_every=10 trainer.save_every=25
}
# per seed and task: the baselines, then SMP once its pruner is meta-trained (another worker may be at it)
for s in $SEEDS; do for task in $TASKS; do
  run "$task/dense_s$s" $common task=$task method=none seed=$s
  run "$task/random_s$s" $common task=$task method=random heads=36 $after seed=$s
  while [ ! -f "$OUT/$task/dense_s$s/metrics.json" ]; do sleep 20; done  # Michel scores that model
  run "$task/michel_s$s" $common task=$task method=michel heads=36 $after model.path="$OUT/$task/dense_s$s/model" seed=$s
  meta
  while [ ! -f "$OUT/meta/metrics.json" ]; do sleep 20; done
  run "$task/smp_s$s" $common task=$task method=smp method.pruner="$OUT/meta/pruner.pt" heads=36 seed=$s
done; done
