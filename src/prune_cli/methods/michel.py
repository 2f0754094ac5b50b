"""Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?".

A head's importance is the expected sensitivity of the loss to its gate,
I_h = E_x |dL(x)/d xi_h|, estimated on TRAINING batches with every gate at its current value
(1 for kept heads, 0 for heads an earlier round removed). The paper normalises the scores of
each layer by their L2 norm before ranking all heads globally; that keeps one layer with large
gradients from absorbing the whole budget.

`method.per_token: true` is the paper's own estimator (its code, pmichel31415's BERT fork): the
absolute value is taken PER TOKEN, |sum_d grad(ctx_{t,h,d}) * ctx_{t,h,d}|, summed over the real
tokens of the training set and divided by their count. The default (false) takes |batch-mean
gradient| per batch, as Hugging Face's run_bertology and the DSP repository's baseline do.
"""

from __future__ import annotations

import torch

from prune_cli.accounting import METER, batch_examples
from prune_cli.methods.base import ScoreContext
from prune_cli.methods.taylor import Taylor


class MichelImportance(Taylor):
    """The first-order importance of every head (`Taylor`, one pass over the training batches),
    then the paper's per-layer L2 normalisation."""

    kind = "scorer"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        importance = per_token_importance(self, ctx) if self.cfg.get("per_token", False) else super().score(ctx)
        if self.cfg.get("normalize_layers", True):
            importance = torch.cat([s / s.norm().clamp_min(1e-20) for s in self.space.split(importance)])
        return importance


def per_token_importance(method, ctx: ScoreContext) -> torch.Tensor:
    """sum over real tokens of |dL/d gate_{t,h}|, / the token count: one [H] tensor (dense index).

    dL/d gate_{t,h} = sum_d grad(x_{t,h,d}) x_{t,h,d}, x the output projection's input (the heads'
    context vectors, already gated: removed heads contribute 0)."""
    model = ctx.model
    was_training = model.training
    model.eval()
    space = method.space
    current = space.current_heads() if hasattr(space, "current_heads") else space
    positions = space.positions(current)
    modules = dict(model.named_modules())
    inputs: dict[int, torch.Tensor] = {}

    def hook(i):
        def record(module, args):
            inputs[i] = args[0]
        return record

    blocks = [(i, b) for i, b in enumerate(current.blocks) if b.num_heads]
    handles = [modules[b.o].register_forward_pre_hook(hook(i)) for i, b in blocks]
    total = torch.zeros(space.total, dtype=torch.float64)
    tokens = 0
    ctx.gates.set(ctx.mask.float())
    try:
        for batch in method.score_pass(ctx):
            inputs.clear()
            loss = model(**batch).loss
            order = [i for i, _ in blocks if i in inputs and inputs[i].requires_grad]
            grads = torch.autograd.grad(loss, [inputs[i] for i in order], allow_unused=True)
            METER.backward(batch_examples(batch.values()))
            mask = batch.get("attention_mask")
            for i, g in zip(order, grads):
                if g is None:
                    continue
                b = current.blocks[i]
                x = inputs[i]
                if x.shape[-1] != b.num_heads * b.head_dim:
                    raise ValueError(f"{b.name}: per-token importance needs whole heads (uneven heads present)")
                per = (g * x).detach().unflatten(-1, (b.num_heads, b.head_dim)).sum(-1).abs().double()  # [b, n, h]
                keep = mask.bool() if mask is not None and mask.shape == per.shape[:2] else None
                per = per[keep] if keep is not None else per.flatten(0, -2)
                total[positions[i]] += per.sum(0).cpu()
            tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    finally:
        for h in handles:
            h.remove()
        ctx.gates.set(None)
        model.train(was_training)
    return total / max(tokens, 1)
