#!/usr/bin/env bash
# The two curves of docs/results/curves.md on MiniLM (issue: reproduce the papers' figures here).
# A finished cell is skipped, so running it again continues; start it twice for 2 cores (each cell
# is claimed with a lock folder); each finished cell's record goes to RECORDS (default
# docs/results/runs/curves, kept in git), so it also continues on a fresh machine.
#   bash scripts/curves_grid.sh [OUT=outputs/curves] [DATA=../shared/data] [SEEDS="1 2 3"] [PART="michel dsp"]
# michel: experiment=michel_curve (Michel et al.'s figure 3: fine-tune, score once with the
#   per-token importance, gate off 5 %, 10 %, ... 100 % of the heads, evaluate each WITHOUT
#   retraining) on SST-2 and MRPC, and the same curve with a random order (method=random) on the
#   same fine-tuned model (shared through the sweep cache). Here: length 64, lr 1e-4 (the paper:
#   128, 2e-5), the first 1,000 SST-2 training rows and all 3,668 of MRPC (on 1,000 rows the
#   fine-tuned MRPC model scored F1 82.9, next to the 81.2 of always answering "paraphrase").
# dsp: experiment=dsp_curve_equal on SST-2 (every method 3 epochs in all, split over its stages) at
#   36 and 18 of 72 heads, and the dense model (3 epochs); the first 600 training rows, length 64.
set -uo pipefail
OUT=${1:-outputs/curves}
DATA=${2:-../shared/data}
SEEDS=${3:-1 2 3}
PART=${4:-michel dsp}
export RECORDS=${RECORDS:-docs/results/runs/curves}
quiet="trainer.progress_bar=false logger.mode=disabled export_model=false cache.dir=$OUT/cache data_root=$DATA"

source "$(dirname "$0")/grid_common.sh"

if [[ " $PART " == *" michel "* ]]; then
  for s in $SEEDS; do for task in sst2 mrpc; do
    rows=1000; [ "$task" = mrpc ] && rows=null
    # task.subsample=first: the file's first N rows, as these records were made (the default since issue 31 is a seeded random draw)
    c="experiment=michel_curve model=minilm task=$task seed=$s task.max_train_samples=$rows task.subsample=first task.max_length=64 \
trainer.lr=1e-4 $quiet"
    run "michel_curve/$task/michel_s$s" $c
    run "michel_curve/$task/random_s$s" $c method=random
  done; done
fi
if [[ " $PART " == *" dsp "* ]]; then
  for s in $SEEDS; do
    c="experiment=dsp_curve_equal task=sst2 seed=$s task.max_train_samples=600 task.subsample=first task.max_length=64 $quiet"
    run "dsp_curve_equal/sst2/dense_s$s" $c method=none
    for k in 36 18; do for m in dsp dsp_pipelined ste voita michel random; do
      run "dsp_curve_equal/sst2/${m}_k${k}_s$s" $c method=$m heads=$k
    done; done
  done
fi
