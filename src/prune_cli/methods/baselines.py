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
    different draw per seed so a sweep over seeds gives the random baseline's spread."""

    kind = "scorer"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.space.total, generator=generator, dtype=torch.float64)
