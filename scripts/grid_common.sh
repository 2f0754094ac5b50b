# Sourced by the grid scripts: `run <folder under $OUT> <prune-run overrides...>` runs one cell
# unless it is done. Several workers may share one grid: each cell is claimed with a
# `<cell>.lock` folder (remove it by hand after killing a worker).
#
# A cell is done when $OUT/<cell>/metrics.json exists, or, with RECORDS set (a folder kept in
# git, e.g. docs/results/runs/smp), when $RECORDS/<cell>/metrics.json does: every finished cell's
# small files (metrics.json, heads.json, predictions.json, curve_predictions.json, bench.json, an SMP pruner.pt, subset.json, .hydra/) are copied there, so a grid
# longer than one machine's life continues on the next one, and `scripts/collect_runs.py $RECORDS`
# builds the tables from the records alone (models and checkpoints stay under $OUT).
run() {
  local cell=$1; shift
  local dir=$OUT/$cell
  [ -f "$dir/metrics.json" ] && { keep "$cell"; return 0; }
  [ -n "${RECORDS:-}" ] && [ -f "$RECORDS/$cell/metrics.json" ] && return 0
  mkdir -p "$(dirname "$dir")"
  mkdir "$dir.lock" 2>/dev/null || return 0  # another worker has it
  echo "== $dir" >&2
  if prune-run "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1; then keep "$cell"; else echo "FAILED $dir (see $dir.log)" >&2; fi
  rmdir "$dir.lock"
}

keep() {
  [ -n "${RECORDS:-}" ] || return 0
  local src=$OUT/$1 rec=$RECORDS/$1
  [ -f "$rec/metrics.json" ] && return 0
  mkdir -p "$rec/.hydra"
  for f in heads.json predictions.json curve_predictions.json bench.json pruner.pt subset.json; do [ -f "$src/$f" ] && cp "$src/$f" "$rec/"; done
  cp "$src"/.hydra/config.yaml "$src"/.hydra/overrides.yaml "$rec/.hydra/" 2>/dev/null
  cp "$src/metrics.json" "$rec/"  # last: its presence marks the record complete
}
