"""Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?".

A head's importance is the expected sensitivity of the loss to its gate,
I_h = E_x |dL(x)/d xi_h|, estimated on TRAINING batches with every gate at its current value
(1 for kept heads, 0 for heads an earlier round removed). The paper normalises the scores of
each layer by their L2 norm before ranking all heads globally; that keeps one layer with large
gradients from absorbing the whole budget.
"""

from __future__ import annotations

import itertools

import torch

from prune_cli.methods.base import Pruner, ScoreContext


class MichelImportance(Pruner):
    kind = "scorer"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        model = ctx.model
        was_training = model.training
        model.eval()  # dropout off: the estimate should not depend on dropout noise
        device = next(model.parameters()).device
        importance = torch.zeros(self.space.total, dtype=torch.float64, device=device)
        limit = self.cfg.get("score_batches")
        batches = ctx.batches()
        if limit:
            batches = itertools.islice(batches, int(limit))
        n = 0
        for batch in batches:
            gate = ctx.mask.to(device=device, dtype=torch.float32).clone().requires_grad_(True)
            ctx.gates.set(gate)
            loss = model(**batch).loss
            (grad,) = torch.autograd.grad(loss, gate)
            importance += grad.detach().abs().double()
            n += 1
        ctx.gates.set(None)
        model.train(was_training)
        importance = importance.cpu() / max(n, 1)
        if self.cfg.get("normalize_layers", True):
            importance = torch.cat([s / s.norm().clamp_min(1e-20) for s in self.space.split(importance)])
        return importance
