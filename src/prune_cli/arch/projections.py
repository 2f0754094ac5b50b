"""Projections as prune-cli reads them: `nn.Linear`, and transformers' `Conv1D` (GPT-2), whose weight
is stored transposed ([in, out]: Radford et al. 2019's OpenAI code computes x @ W + b). Everything
that counts, reads or slices the features of a projection goes through this module, so the
transposition is handled here and nowhere else: `weight` is always the [out, in] view (writes go
through to the parameter), `sliced` keeps output features (dim 0) or input features (dim 1) of
either kind.

A projection may also hold several projections side by side in its output features (fused
projections). `qkv_positions` says where the query, key and value features of each head sit in a
fused attention projection, for the two layouts transformers uses: ``"concat"`` ([q | k | v], each
head-major: GPT-2's `c_attn`, Phi-3's `qkv_proj`, which with grouped-query attention holds fewer
key/value heads than query heads) and ``"per_head"`` ([q_h | k_h | v_h] for every head h in turn:
GPT-NeoX's `query_key_value`, viewed as (..., heads, 3 * head_size) and chunked in three).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D, prune_linear_layer

#: how a fused attention projection lays out its query, key and value features
QKV_ORDERS = ("concat", "per_head")


def is_projection(module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def in_features(module: nn.Module) -> int:
    return int(module.nx) if isinstance(module, Conv1D) else int(module.in_features)


def out_features(module: nn.Module) -> int:
    return int(module.nf) if isinstance(module, Conv1D) else int(module.out_features)


def weight(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] (a view of the parameter: writes reach it)."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def sliced(module: nn.Module, index: list[int], dim: int) -> nn.Module:
    """`module` keeping output features (dim 0, with their biases) or input features (dim 1) `index`,
    in that order, as a new module of the same kind, dtype and device (prune_linear_layer builds the
    new layer in the default dtype)."""
    with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op" for empty blocks
        warnings.simplefilter("ignore", UserWarning)
        idx = torch.tensor(index, dtype=torch.long, device=module.weight.device)
        if not isinstance(module, Conv1D):
            return prune_linear_layer(module, idx, dim=dim).to(module.weight.dtype)
        # Conv1D: weight [in, out], so output features are its columns
        w = module.weight.detach().index_select(1 - dim, idx).clone()
        new = Conv1D(w.shape[1], w.shape[0]).to(module.weight.device, module.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.copy_(module.bias.detach()[idx] if dim == 0 else module.bias.detach())
        return new


def qkv_positions(order: str, heads: int, kv_heads: int, head_dim: int) -> tuple[list[int], list[int], list[int]]:
    """(query, key, value) feature positions in a fused projection holding `heads` query heads and
    `kv_heads` key/value heads of `head_dim`: each part head-major, feature j of head h at
    h * head_dim + j of its part."""
    q, kv = heads * head_dim, kv_heads * head_dim
    if order == "concat":
        return list(range(q)), list(range(q, q + kv)), list(range(q + kv, q + 2 * kv))
    if order == "per_head":
        if heads != kv_heads:
            raise ValueError(f"a per-head fused projection holds as many key/value heads as query heads, not "
                             f"{kv_heads} for {heads}")
        step = 3 * head_dim
        return tuple([h * step + p * head_dim + j for h in range(heads) for j in range(head_dim)]
                     for p in range(3))
    raise ValueError(f"unknown fused projection order {order!r} (one of {', '.join(QKV_ORDERS)})")


def fused_index(order: str, head_dim: int, old: tuple[int, int], new: tuple[int, int],
                q_index: list[int], k_index: list[int], v_index: list[int]) -> list[int]:
    """Output features of a fused projection to keep, in the new module's order: the new block holds
    `new` = (query heads, key/value heads), and its query/key/value feature i is the old block's
    (`old` heads) feature `q_index[i]` / `k_index[i]` / `v_index[i]` of that part."""
    was = qkv_positions(order, *old, head_dim)
    now = qkv_positions(order, *new, head_dim)
    index = [0] * sum(map(len, now))
    for part_was, part_now, keep in zip(was, now, (q_index, k_index, v_index)):
        if len(keep) != len(part_now):
            raise ValueError(f"{len(keep)} features kept of a part that holds {len(part_now)}")
        for pos, i in zip(part_now, keep):
            index[pos] = part_was[i]
    return index


def chunk_rows(chunks: int, width: int, neurons: list[int]) -> list[int]:
    """Rows of an FFN input projection that holds `chunks` projections of `width` neurons stacked in
    its output features (Phi-3's gate_up_proj = [gate | up], split with `chunk(2)`): every chunk's
    rows of `neurons`, chunk by chunk."""
    return [c * width + n for c in range(chunks) for n in neurons]
