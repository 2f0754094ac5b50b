"""`prune_curve`: Michel et al.'s main figure in one run (Michel, Levy & Neubig 2019, "Are Sixteen
Heads Really Better than One?", Figure 3; pmichel31415/are-16-heads-really-better-than-1).

Score ONCE, then gate off the lowest-scored heads cumulatively, `curve_step` (5 %) of the heads in
scope at a time, evaluating each point WITHOUT retraining (metrics.json `curve`, log.jsonl
`curve/*`, curve.png, per-example predictions per point in curve_predictions.json); finally remove
physically all but the K heads that `heads=` / `sparsity=` keeps, by the method's own `select`
(SMP's per-layer rule; the curve's points are global top-Ks). A resumed curve keeps its points."""

from __future__ import annotations

import json

from prune_cli import distributed, report
from prune_cli.gates import Gates
from prune_cli.methods import ScoreContext, top_k_mask
from prune_cli.stages.state import Runner, State


def run(runner: Runner, state: State, index: int) -> dict:
    cfg = runner.cfg
    batches = runner.score_batches(state)
    eligible = state.space.scope_mask(cfg.heads_scope) & state.mask
    in_scope = int(eligible.sum())
    step = float(cfg.get("curve_step", 0.05))
    primary = runner.task.primary_metric
    with Gates(state.model, state.space) as gates:
        ctx = ScoreContext(state.model, gates, batches, state.mask.clone(), runner.accelerator, space=state.space)
        scores = runner.cached_scores(state, lambda: runner.pruner.score(ctx))
        done = {point["removed"] for point in state.curve}
        for i in range(int(1 / step + 1e-9) + 1):
            removed = min(in_scope, round(i * step * in_scope))
            if removed in done:
                continue
            mask = (top_k_mask(scores, in_scope - removed, eligible) | ~eligible) & state.mask
            gates.set(mask.float())
            metrics = runner.evaluate(state, "prune_curve")
            state.evals[-1]["heads_kept"] = int(mask.sum())
            _keep_predictions(runner, removed, int(mask.sum()))
            state.curve.append({"removed": removed, "fraction_pruned": round(removed / in_scope, 4),
                                "heads_kept": int(mask.sum()), "metrics": metrics})
            done.add(removed)
            runner.logger.log({"curve/heads_kept": int(mask.sum()), "curve/fraction_pruned": removed / in_scope,
                               f"curve/{primary}": metrics.get(primary)})
    state.scores = scores
    mask = (runner.pruner.select(scores, runner.plan.keep, eligible) | ~eligible) & state.mask
    mask = distributed.broadcast(mask)  # `random` draws, SMP's ties: one choice for every process
    if runner.main:
        report.plot_curve(runner.run_dir / "curve.png", state.curve, primary,
                          title=f"{cfg.model.name} {cfg.task.name} {cfg.method.name}: no retraining")
    return {"points": len(state.curve), **runner.apply(state, state.space.with_masks({"head": mask}))}


def _keep_predictions(runner: Runner, removed: int, heads_kept: int) -> None:
    """Each point's per-example predictions, one entry per point, the file rewritten after each,
    so prune-report can bootstrap two orders (michel vs random) at every point on the same
    examples."""
    task = runner.task
    if not (task.predictions and runner.main):
        return
    path = runner.run_dir / "curve_predictions.json"
    record = json.loads(path.read_text()) if path.is_file() else {
        "task": runner.cfg.task.name, "family": runner.cfg.task.family,
        "primary_metric": task.primary_metric, "points": []}
    record["points"] = [p for p in record["points"] if p["removed"] != removed]
    record["points"].append({"removed": removed, "heads_kept": heads_kept, "splits": task.predictions})
    report.write_json(path, record, indent=None)  # 20+ points of per-example lists: compact
