"""First-order Taylor importance of every unit kind: E_x |dL(x)/d gate| at the current gates.

One gate per unit (`prune_cli.gates`), all kinds in one backward pass per TRAINING batch. For a
value/output dimension, a query/key dimension or an FFN neuron this equals |sum(grad * W)| over
the unit's slice of the gated matrix -- GRAIN's score (Yang et al. 2023) without its running
average; for whole heads it is Michel et al.'s importance without their per-layer normalisation
(`method=michel` has it). The absolute value is taken per batch, then averaged.
"""

from __future__ import annotations

import torch

from prune_cli.accounting import METER, batch_examples
from prune_cli.methods.base import Pruner, ScoreContext


class Taylor(Pruner):
    kind = "scorer"

    def score(self, ctx: ScoreContext):
        model = ctx.model
        was_training = model.training
        model.eval()  # dropout off: the estimate should not depend on dropout noise
        device = next(model.parameters()).device
        base = ctx.gate_masks()
        sums = {k: torch.zeros(v.numel(), dtype=torch.float64, device=device) for k, v in base.items()}
        n = 0
        for batch in self.score_pass(ctx):
            gates = {k: v.to(device=device, dtype=torch.float32).clone().requires_grad_(True) for k, v in base.items()}
            ctx.gates.set_units(gates)
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
            METER.backward(batch_examples(batch.values()))
            for k, g in zip(gates, grads):
                if g is not None:
                    sums[k] += g.detach().abs().double()
            n += 1
        ctx.gates.set(None)
        model.train(was_training)
        scores = {k: v.cpu() / max(n, 1) for k, v in sums.items()}
        return scores["head"] if ctx.units == ("head",) else scores
