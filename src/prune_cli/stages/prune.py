"""`prune`: a scorer's one-shot pruning -- score on the training batches, keep the best (in rounds
when `schedule=` says so), remove the rest physically (prune_cli.oneshot holds the three budgets:
query heads, whole key/value groups, a weight density)."""

from __future__ import annotations

from prune_cli import oneshot
from prune_cli.stages.state import Runner, State


def run(runner: Runner, state: State, index: int) -> dict:
    plan, cfg = runner.plan, runner.cfg
    common = {"kept_now": state.mask, "schedule": cfg.schedule, "scope": cfg.heads_scope,
              "accelerator": runner.accelerator, "log": runner.logger.log, "run_score": lambda compute, single: (
                  runner.cached_scores(state, compute) if single else runner.agreed(compute))}
    batches = runner.score_batches(state)
    if plan.density is not None:
        target, state.scores = oneshot.keep_density(state.model, state.space, runner.pruner, batches,
                                                    plan.density, plan.units, **common)
    elif plan.units == ("kv",):
        target, state.scores = oneshot.keep_groups(state.model, state.space, runner.pruner, batches,
                                                   plan.keep, **common)
    else:
        target, state.scores = oneshot.keep_heads(state.model, state.space, runner.pruner, batches,
                                                  plan.keep, **common)
    return runner.apply(state, target)
