"""`bench`: the final model's latency and memory against the dense one, in this process
(prune_cli.bench: bench.json)."""

from __future__ import annotations

from prune_cli.stages.state import Runner, State


def run(runner: Runner, state: State, index: int) -> dict:
    from prune_cli.bench import bench_run_model

    return bench_run_model(runner.cfg, state, runner.run_dir)
