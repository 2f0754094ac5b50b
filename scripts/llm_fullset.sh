#!/usr/bin/env bash
# The LLM table on the FULL evaluation sets (docs/results/llm.md): the grid (scripts/llm_grid.sh)
# scores every cell on fixed subsets so that it fits a 2-core CPU; this scores the dense model and
# the cells named on every WikiText-2 test window and every example of the seven zero-shot tasks
# (about 22k examples: hours per model on that CPU, minutes on a GPU; prune-run picks the GPU when
# there is one). Measured here, one thread beside another worker: WikiText-2 (148 windows) 26 min,
# PIQA + WinoGrande + ARC-e + ARC-c + OBQA 36 min per model; BoolQ and HellaSwag (13k examples)
# would add about 2.5 h (estimated from the grid's 100-example runs), so a CPU session leaves them out:
#
#   SCORES="wikitext2 piqa arc_easy arc_challenge openbookqa winogrande" bash scripts/llm_fullset.sh \
#     outputs/llm_grid ../shared/data dense tuned/heads204/taylor tuned/kv204/taylor learned/density0.951/grain
#   prune-report --llm docs/results/runs/llm_full --llm-without boolq,hellaswag --out docs/results/llm_full
#
# A CELL is a grid cell whose exported model is at $OUT/<cell>/prune/model (run the grid, or its
# `cell` line, first); `dense` is the model itself. Records: $RECORDS/<cell>/<score>, as the grid's.
# SCORES="wikitext2 piqa ..." scores those only (default: all eight); LIMIT=N the first N examples /
# windows only (a smoke test of the script). Memory: a full WikiText-2 run held 4.3 GB (its windows
# go 5 to a forward: their logits are 403 MB each); APD / GRAIN grid workers beside it take 7-8 GB each.
set -uo pipefail
OUT=${1:-outputs/llm_grid}
DATA=${2:-../shared/data}
shift $(( $# < 2 ? $# : 2 ))
CELLS=${*:-dense}
export RECORDS=${RECORDS:-docs/results/runs/llm_full}
source "$(dirname "$0")/grid_common.sh"
OUT=$OUT/full  # the full-set runs' folders, beside the grid's
quiet="logger.mode=disabled trainer.progress_bar=false data_root=$DATA"
limit=${LIMIT:+task.max_eval_samples=$LIMIT}
status=0
for cell in $CELLS; do
  model=()
  if [ "$cell" != dense ]; then
    path=${OUT%/full}/$cell/prune/model
    [ -f "$path/config.json" ] || { echo "no model at $path: run the grid's cell $cell first" >&2; status=1; continue; }
    model=("model.path=$(realpath "$path")")
  fi
  for t in ${SCORES:-wikitext2 piqa boolq arc_easy arc_challenge openbookqa winogrande hellaswag}; do
    if [ "$t" = wikitext2 ]; then task="task=wikitext2 task.max_length=2048"; else task="task=zeroshot task.name=$t"; fi
    run "$cell/$t" model=smollm2 "${model[@]}" method=none "pipeline=[evaluate]" $quiet $task $limit
  done
done
exit $status
