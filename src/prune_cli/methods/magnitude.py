"""Weight magnitude: a unit's importance is the L2 norm of the weights it owns.

The data-free baseline of the intra-head pruning literature: a head owns its rows of W_q, W_k, W_v
and its columns of W_o; a query/key dimension its row of W_q and of W_k; a value/output dimension
its row of W_v and column of W_o; an FFN neuron its rows of the input projection(s) and column
of the output projection. Biases are left out (they are not what `density` counts). Read from the
model as it is (a pruned model's units at their current positions), in the dense index.
Under grouped-query attention a query head owns only its rows of W_q and columns of W_o; the rows
of W_k and W_v are its key/value group's, whose norm also counts its query heads'. Fused projections
(GPT-2's c_attn, Phi-3's qkv_proj and gate_up_proj) are read part by part where the family's layout
places them (`UnitSpace.qkv_rows`, `FFN.chunks`).
"""

from __future__ import annotations

import torch

from prune_cli.arch.projections import weight
from prune_cli.methods.base import Pruner, ScoreContext


def unit_norms(model, space) -> dict[str, torch.Tensor]:
    """{kind: L2 norm per unit} over the dense index of `space` (0 for units the model lost)."""
    modules = dict(model.named_modules())
    sq = {k: torch.zeros(space.size(k), dtype=torch.float64) for k in ("kv", "qk", "vo", "ffn")}
    group_offset = 0
    with torch.no_grad():
        for i, b in enumerate(space.blocks):
            layout = space.block_layout(i)
            groups = b.num_heads // b.group_size
            group_offset += groups
            if not layout:
                continue
            q, k, v = (_sq(modules[p]).sum(1)[rows] for p, rows in zip((b.q, b.k, b.v), space.qkv_rows(i)))
            o = _sq(modules[b.o]).sum(0)
            base, d = space.dim_offsets[i], b.head_dim
            qk_index = torch.tensor([base + h * d + j for h, qd, _ in layout for j in qd], dtype=torch.long)
            vo_index = torch.tensor([base + h * d + j for h, _, vd in layout for j in vd], dtype=torch.long)
            if b.group_size > 1:  # key/value rows belong to the group (whole heads: rows in weight order)
                kept = sorted({h // b.group_size for h, _, _ in layout})
                own = (k + v).view(len(kept), d).sum(-1)
                sq["kv"][torch.tensor(kept, dtype=torch.long) + group_offset - groups] = own
                k, v = 0, 0
            sq["qk"][qk_index] = q + k
            sq["vo"][vo_index] = v + o
        for j, f in enumerate(space.ffns):
            kept = space.ffn_kept(j)
            if not kept:
                continue
            total = sum(_sq(modules[p]).sum(1).view(f.chunks, -1).sum(0) for p in f.inputs)  # every chunk's row
            total = total + _sq(modules[f.output]).sum(0)
            sq["ffn"][torch.tensor(kept, dtype=torch.long) + f.offset] = total
    head = torch.zeros(space.total, dtype=torch.float64)
    head.index_add_(0, space.head_of("qk"), sq["qk"] + sq["vo"])
    sq["kv"].index_add_(0, space.group_of_head(), head)
    return {"head": head.sqrt(), **{k: v.sqrt() for k, v in sq.items()}}


def _sq(module) -> torch.Tensor:
    """Squared weights of a projection as [out, in] (Linear or Conv1D), float64 on the CPU."""
    return weight(module).detach().double().cpu().pow(2)


class Magnitude(Pruner):
    kind = "scorer"

    def score(self, ctx: ScoreContext):
        norms = unit_norms(ctx.model, ctx.space)
        if ctx.units == ("head",):
            return norms["head"]
        return {k: norms[k] for k in ctx.units}
