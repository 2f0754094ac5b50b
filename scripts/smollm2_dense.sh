#!/usr/bin/env bash
# The dense SmolLM2-135M-Instruct (model=smollm2: Q4_1 GGUF de-quantised to float32) on the LLM
# tasks, on the subsets a 2-core CPU affords: WikiText-2 perplexity on the first 20 windows of 2048
# tokens (40,940 predicted tokens of the ~290k test tokens) and the first 200 examples of each
# zero-shot task. Records (metrics, predictions, configs) go to docs/results/runs/smollm2_dense.
#   bash scripts/smollm2_dense.sh [OUT=outputs/llm_dense] [DATA=../shared/data] [EXAMPLES=200] [WINDOWS=20]
set -uo pipefail
OUT=${1:-outputs/llm_dense}
DATA=${2:-../shared/data}
EXAMPLES=${3:-200}
WINDOWS=${4:-20}
export RECORDS=${RECORDS:-docs/results/runs/smollm2_dense}
common="model=smollm2 data_root=$DATA method=none pipeline=[evaluate] logger.mode=disabled trainer.progress_bar=false"
source "$(dirname "$0")/grid_common.sh"
run wikitext2 $common task=wikitext2 task.max_eval_samples=$WINDOWS
for t in piqa boolq arc_easy arc_challenge openbookqa winogrande hellaswag; do
  run "$t" $common task=zeroshot task.name=$t task.max_eval_samples=$EXAMPLES
done
