# Sourced by the grid scripts: `run <folder under $OUT> <prune-run overrides...>` runs one cell
# unless its metrics.json exists. Several workers may share one grid: each cell is claimed with a
# `<cell>.lock` folder (remove it by hand after killing a worker).
run() {
  local dir=$OUT/$1; shift
  [ -f "$dir/metrics.json" ] && return 0
  mkdir -p "$(dirname "$dir")"
  mkdir "$dir.lock" 2>/dev/null || return 0  # another worker has it
  echo "== $dir" >&2
  prune-run "$@" hydra.run.dir="$dir" > "$dir.log" 2>&1 || echo "FAILED $dir (see $dir.log)" >&2
  rmdir "$dir.lock"
}
