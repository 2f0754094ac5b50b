"""Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?".

A head's importance is the expected sensitivity of the loss to its gate,
I_h = E_x |dL(x)/d xi_h|, estimated on TRAINING batches with every gate at its current value
(1 for kept heads, 0 for heads an earlier round removed). The paper normalises the scores of
each layer by their L2 norm before ranking all heads globally; that keeps one layer with large
gradients from absorbing the whole budget.
"""

from __future__ import annotations

import torch

from prune_cli.methods.base import ScoreContext
from prune_cli.methods.taylor import Taylor


class MichelImportance(Taylor):
    """The first-order importance of every head (`Taylor`, one pass over the training batches),
    then the paper's per-layer L2 normalisation."""

    kind = "scorer"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        importance = super().score(ctx)
        if self.cfg.get("normalize_layers", True):
            importance = torch.cat([s / s.norm().clamp_min(1e-20) for s in self.space.split(importance)])
        return importance
