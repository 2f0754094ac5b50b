"""`evaluate`: the task's metrics on its evaluation split, and each example's prediction in
predictions.json (what prune-report's paired bootstrap compares between runs)."""

from __future__ import annotations

from prune_cli import report
from prune_cli.stages.state import Runner, State


def run(runner: Runner, state: State, index: int) -> dict:
    metrics = runner.evaluate(state, "evaluate")
    task, cfg = runner.task, runner.cfg
    if task.predictions and runner.main:
        report.write_json(runner.run_dir / "predictions.json", {
            "task": cfg.task.name, "family": cfg.task.family,
            "primary_metric": task.primary_metric, "splits": task.predictions},
            indent=None)  # one line: a token task's file holds a list per sentence
    return {"metrics": metrics}
