"""The two reference points every pruning table needs: no pruning, and random heads."""

from __future__ import annotations

import torch

from prune_cli.methods.base import Pruner, ScoreContext


class NoPruning(Pruner):
    """The dense baseline: the pipeline skips pruning altogether."""

    kind = "none"
    default_pipeline = ("finetune", "evaluate", "export")


class RandomScores(Pruner):
    """Uniform random scores from a generator seeded by the run's seed: reproducible, and a
    different draw per seed so a sweep over seeds gives the random baseline's spread. Every unit
    kind gets its own draw; one global ranking then mixes them (GRAIN's random-score ablation)."""

    kind = "scorer"

    def score(self, ctx: ScoreContext):
        generator = torch.Generator().manual_seed(self.seed)
        if ctx.units == ("head",):
            return torch.rand(self.space.total, generator=generator, dtype=torch.float64)
        # one draw per kind, in a fixed order, so a kind's scores do not depend on the others'
        return {k: torch.rand(ctx.space.size(k), generator=generator, dtype=torch.float64) for k in ctx.units}
