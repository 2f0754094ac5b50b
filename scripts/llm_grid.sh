#!/usr/bin/env bash
# The LLM table (docs/results/llm.md): SmolLM2-135M-Instruct (model=smollm2) pruned by every head
# method at 50 % and ~25 % of its 270 query heads removed, as scattered query heads (units=heads)
# and as whole key/value groups (units=kv), one-shot on WikiText-2 calibration text and with a short
# recovery fine-tune (every method, the same fine-tune; LoRA as well at 50 %), scattered heads at the
# groups cells' parameter counts, and the methods that learn their gates while training (DSP, APD,
# GRAIN) at both budgets; each pruned model scored in the LLM-Pruner layout (Ma et al. 2023, Table 1):
# WikiText-2 perplexity + seven zero-shot accuracies, on the same fixed subsets for every cell.
#
#   bash scripts/llm_grid.sh [OUT=outputs/llm_grid] [DATA=../shared/data] [EXAMPLES=100] [WINDOWS=10]
#   prune-report --llm docs/results/runs/llm --out docs/results/llm_runs     # the table, from the records
#
# A cell is one prune run (pipeline=[prune,export] or [prune,finetune,export], calibration windows of
# 512 tokens) and eight evaluation runs of its exported model (method=none pipeline=[evaluate]):
# wikitext2 (the first $WINDOWS windows of 2048 tokens of the test split) and the first $EXAMPLES
# examples of each zero-shot task. Records: $RECORDS/<cell>/{prune,wikitext2,piqa,...}; exported
# models stay under $OUT (rebuilt from the seed when a later machine lacks one). Several workers may
# share a grid (grid_common.sh locks each run); OMP_NUM_THREADS sets torch's threads per worker.
set -uo pipefail
OUT=${1:-outputs/llm_grid}
DATA=${2:-../shared/data}
EXAMPLES=${3:-100}
WINDOWS=${4:-10}
export RECORDS=${RECORDS:-docs/results/runs/llm}
source "$(dirname "$0")/grid_common.sh"
ZEROSHOT="piqa boolq arc_easy arc_challenge openbookqa winogrande hellaswag"
quiet="logger.mode=disabled trainer.progress_bar=false data_root=$DATA"
# batches of 4 windows: the gradient of 32 x 512 tokens' logits over a 49k vocabulary does not fit 24 GB
calib="task=wikitext2 task.max_length=512 task.max_train_samples=32 task.subsample=first trainer.batch_size=4"
# recovery: one pass over 64 calibration windows (of wiki.valid.raw: the shared data has no
# wiki.train.raw), full fine-tuning, the same for every method
recover="task.max_train_samples=64 trainer.epochs=1 trainer.grad_accum=2 trainer.lr=5e-5 trainer.warmup_ratio=0.1"

evaluate() {  # evaluate <cell> [model.path=...]: the eight scores of one model
  local cell=$1; shift
  run "$cell/wikitext2" model=smollm2 "$@" method=none "pipeline=[evaluate]" $quiet \
    task=wikitext2 task.max_length=2048 task.max_eval_samples=$WINDOWS
  for t in $ZEROSHOT; do
    run "$cell/$t" model=smollm2 "$@" method=none "pipeline=[evaluate]" $quiet \
      task=zeroshot task.name=$t task.max_eval_samples=$EXAMPLES
  done
}

cell() {  # cell <cell> <prune-run overrides of the prune run>
  local name=$1; shift
  run "$name/prune" model=smollm2 $quiet $calib "$@"
  local missing=0
  for t in wikitext2 $ZEROSHOT; do [ -f "$RECORDS/$name/$t/metrics.json" ] || missing=1; done
  [ $missing = 1 ] || return 0
  if [ ! -f "$OUT/$name/prune/model/config.json" ]; then  # recorded elsewhere: rebuild the model here
    [ -f "$RECORDS/$name/prune/metrics.json" ] || return 0  # the prune run failed: see its log
    mkdir -p "$OUT/$name" && mkdir "$OUT/$name/prune.lock" 2>/dev/null || return 0
    local rebuilt=$OUT/$name/prune.rebuilt
    if prune-run model=smollm2 $quiet $calib "$@" hydra.run.dir="$rebuilt" > "$rebuilt.log" 2>&1; then
      if [ -f "$RECORDS/$name/prune/heads.json" ] && ! cmp -s "$rebuilt/heads.json" "$RECORDS/$name/prune/heads.json"; then
        echo "REBUILT DIFFERS $rebuilt: its heads.json is not the recorded one; not evaluated" >&2
      else
        mkdir -p "$OUT/$name/prune" && rm -rf "$OUT/$name/prune/model" && mv "$rebuilt/model" "$OUT/$name/prune/model"
      fi
    fi
    rmdir "$OUT/$name/prune.lock"
  fi
  [ -f "$OUT/$name/prune/model/config.json" ] && evaluate "$name" model.path="$(realpath "$OUT/$name/prune/model")"
}

equal_params() {  # equal_params <query heads kept>: one-shot scattered heads at a groups cell's parameters
  local heads=$1
  for m in taylor magnitude michel; do
    cell "oneshot/heads$heads/$m" $oneshot method=$m heads=$heads units=heads
  done
  for s in 1 2 3; do
    cell "oneshot/heads$heads/random_s$s" $oneshot method=random heads=$heads units=heads seed=$s
  done
}

main() {
evaluate dense

oneshot="pipeline=[prune,export]"
tuned="pipeline=[prune,finetune,export] $recover"
block() {  # block <oneshot|tuned> <query heads kept of 270>: 135 = 50 % removed, 204 = 24.4 % (whole groups of 3)
  local kind=$1 budget=$2
  local run_args=${!kind}  # $oneshot or $tuned
  for units in heads kv; do
    for m in taylor magnitude $([ $units = heads ] && echo michel); do  # michel ranks whole query heads only
      cell "$kind/$units$budget/$m" $run_args method=$m heads=$budget units=$units
    done
    for s in 1 2 3; do
      cell "$kind/$units$budget/random_s$s" $run_args method=random heads=$budget units=$units seed=$s
    done
  done
}
# Methods that learn their gates while training, on the same 64 calibration windows and optimiser
# settings as the recovery fine-tune: DSP, APD (the dense model as its teacher), GRAIN (heads + FFN
# neurons) at the weights the taylor one-shot cell of the budget kept. APD and GRAIN hold a dense
# teacher beside the model: at batch 4 x 2 windows each took 12-14 GB and were killed for memory
# beside another job on a 24 GB machine; batch 2 x 4 is the same optimizer step over the same
# windows with half the activations.
learn="pipeline=[prune_joint,export] $recover"
learn_t="$learn trainer.batch_size=2 trainer.grad_accum=4"
learners() {  # learners <query heads kept>: GRAIN's density read from the taylor one-shot record
  local budget=$1 d
  cell "learned/heads$budget/dsp" $learn method=dsp heads=$budget
  cell "learned/heads$budget/apd" $learn_t method=apd heads=$budget distill.teacher=dense
  d=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["density"], 3))' \
        "$RECORDS/oneshot/heads$budget/taylor/prune/metrics.json" 2>/dev/null)
  [ -n "$d" ] && cell "learned/density$d/grain" $learn_t method=grain density=$d units=heads_ffn distill.teacher=dense
}
# Order: what answers a question first. The 50 % block one-shot, scattered heads at the key/value
# cells' parameter count, then with recovery, then the learners at that budget, then the 24.4 % block.
block oneshot 135
# Scattered query heads at the parameters of the 50 % key/value-group cells (121.2 M): 108 query heads
# kept leave 120.4-120.9 M under each scorer's ranking (whole groups also drop their key/value rows)
equal_params 108
block tuned 135
learners 135  # GRAIN at density 0.893
block oneshot 204
block tuned 204
learners 204
# ... and at the 24.4 % groups cells' 128.0 M: 188 query heads kept leave 127.9-128.1 M under the
# scorers' rankings of the 204-heads cells (a removed head takes 73,728 weights, an emptied group as many)
equal_params 188
# LoRA recovery (LLM-Pruner's: r=8, alpha 16, dropout 0.05, every linear layer, lr 3e-4) on the same
# 64 windows and steps as the full recovery fine-tune, at 50 %: is LoRA enough on a 135 M model?
lora="pipeline=[prune,finetune,export] $recover trainer.lr=3e-4 trainer.recovery_lora.r=8"
for units in heads kv; do
  cell "lora/${units}135/taylor" $lora method=taylor heads=135 units=$units
  for s in 1 2 3; do
    cell "lora/${units}135/random_s$s" $lora method=random heads=135 units=$units seed=$s
  done
done
}
# bash has read all of main() before it runs: editing this file under a running worker is safe
main
