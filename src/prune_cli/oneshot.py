"""Scoring and choosing what a scorer keeps, in one shot or in rounds: the `prune` stage's work,
shared by the pipeline and the Python API (`prune_cli.prune`).

Three budgets, one per function: K query heads (`keep_heads`), K query heads as whole key/value
groups (`keep_groups`, `units=kv`), and a fraction of the attention + FFN weights over any mix of
unit kinds (`keep_density`). Each scores with the method's `score` on the TRAINING batches while
the units already dropped in earlier rounds are gated to 0, and returns the UnitSpace to keep (the
caller removes the rest: `surgery.remove_units`) and the last round's scores.

`run_score(compute, single_round)` is how the caller runs one scoring pass: the pipeline serves a
one-round score from its sweep cache and has every process agree on rank 0's; the API just calls
it. `log` receives the counts after each round.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prune_cli import distributed
from prune_cli.gates import Gates
from prune_cli.methods import ScoreContext, select_units, top_k_mask
from prune_cli.schedules import rounds
from prune_cli.units import UnitSpace


def _plain(compute, single_round):
    return compute()


def keep_heads(model, space: UnitSpace, pruner, batches, keep: int, schedule=None, scope: str = "all",
               run_score: Callable = _plain, log: Callable = lambda row: None, accelerator=None,
               kept_now: torch.Tensor | None = None):
    """The `keep` best query heads of those in `scope` (others stay), removed heads staying removed
    (`kept_now`: the heads the model still has, default the space's)."""
    kept_now = space.kept("head") if kept_now is None else kept_now
    eligible = space.scope_mask(scope) & kept_now
    in_scope = int(eligible.sum())
    mask = kept_now.clone()
    steps = rounds(schedule, in_scope, keep) if schedule is not None else [min(keep, in_scope)]
    with Gates(model, space) as gates:
        for kept in steps:
            ctx = ScoreContext(model, gates, batches, mask, accelerator, space=space)
            scores = run_score(lambda c=ctx: pruner.score(c), len(steps) == 1)
            mask = (pruner.select(scores, kept, eligible & mask) | ~eligible) & kept_now
            mask = distributed.broadcast(mask)  # `random` draws, ties: one choice for every process
            log({"prune/heads_kept": int(mask.sum()), "prune/heads_kept_in_scope": kept})
    return space.with_masks({"head": mask}), scores


def keep_groups(model, space: UnitSpace, pruner, batches, keep: int, schedule=None, scope: str = "all",
                run_score: Callable = _plain, log: Callable = lambda row: None, accelerator=None,
                kept_now: torch.Tensor | None = None):
    """`units=kv`: whole key/value groups ranked by the scorer, each with every query head reading
    it; `keep` counts query heads (a multiple of the group size: validated by the caller). Returns
    the space and each query head's group score (heads.json shows them per head)."""
    group_of = space.group_of_head()
    kept_now = space.kept("head") if kept_now is None else kept_now
    in_scope = space.scope_mask(scope) & kept_now
    eligible = torch.zeros(space.size("kv"), dtype=torch.bool)
    eligible[group_of[in_scope]] = True
    per_group = torch.bincount(group_of, minlength=space.size("kv"))
    k = int(keep) // int(per_group[eligible].max()) if bool(eligible.any()) else 0
    kept = space.kept("kv")
    steps = rounds(schedule, int(eligible.sum()), k) if schedule is not None else [min(k, int(eligible.sum()))]
    with Gates(model, space) as gates:
        for groups in steps:
            ctx = ScoreContext(model, gates, batches, kept_now, accelerator, units=("kv",),
                               space=space, masks={"kv": kept})
            scores = run_score(lambda c=ctx: pruner.score(c), len(steps) == 1)["kv"]
            kept = distributed.broadcast((top_k_mask(scores, groups, eligible & kept) | ~eligible) & kept)
            log({"prune/kv_heads_kept": int(kept.sum()), "prune/heads_kept": int((kept[group_of] & in_scope).sum())})
    return space.with_masks({"kv": kept}), scores[group_of]


def keep_density(model, space: UnitSpace, pruner, batches, density: float, units: tuple[str, ...],
                 schedule=None, scope: str = "all", run_score: Callable = _plain,
                 log: Callable = lambda row: None, accelerator=None, kept_now=None):
    """A `density` budget: every kind in `units` ranked together, kept weights counted exactly (the
    result keeps at least `density` of the dense weights in `scope`, and less than one unit more)."""
    kept_now, dense = space.weights(scope)
    target = -(-round(density * dense * 1e6) // 1_000_000)  # ceil, immune to float noise
    current = space
    steps = rounds(schedule, kept_now, target) if schedule is not None else [target]
    with Gates(model, space) as gates:
        for budget in steps:
            masks = current.masks()
            ctx = ScoreContext(model, gates, batches, masks["head"], accelerator, units=units,
                               space=space, masks={k: masks[k] for k in units})
            scores = run_score(lambda c=ctx: pruner.score(c), len(steps) == 1)
            if not isinstance(scores, dict):
                scores = {"head": scores}
            candidates = {k: masks[k] & current.scope(k, scope) for k in units}
            current = distributed.broadcast(select_units(current, scores, candidates, budget, scope))
            log({"prune/density": current.density(scope), "prune/heads_kept": int(current.kept("head").sum())})
    return current, scores
