"""The stand-in of an attention block that kept no heads, as the block's family lays it out: the
forward itself is `runtime.EmptyAttention` (shipped with every export); this builds its spec."""

from __future__ import annotations

from torch import nn

from prune_cli.arch.projections import out_features
from prune_cli.arch.runtime import EmptyAttention

#: width of the stand-in head an empty block runs with: small, and a size every attention kernel takes
STAND_IN_DIM = 8


def stand_in(module: nn.Module, layout, o_attr: str | None, own_table: bool) -> EmptyAttention:
    """The forward of `module` (an attention block of `layout`, an `AttentionLayout`) once it kept no
    heads: zero projections of one head of `STAND_IN_DIM` features (of the block's dense head size
    where rotary tables of that size turn queries and keys), a zero output weight with the block's
    real output bias (`o_attr`, inside the block, else None), and a one-column bias table where the
    block owns one (UMT5). The stand-in costs a few tiny ops per call (see docs/benchmarks.md)."""
    width = getattr(module, layout.head_dim_attr) if layout.rotary else STAND_IN_DIM
    if layout.fused:  # one projection outputs the head's query, key and value features
        zeros = {layout.q: 3 * width}
    else:
        zeros = {a: width for a in (layout.q, layout.k, layout.v)}
    bias_from = {}
    if o_attr is not None:
        zeros[o_attr] = out_features(getattr(module, o_attr))
        bias_from[o_attr] = o_attr
    if own_table:  # UMT5: the block's own (now empty) relative-position table
        zeros["relative_attention_bias"] = 1
    values = {layout.head_dim_attr: width}
    values.update({a: 1 for a in (*layout.count_attrs, *filter(None, [layout.groups_attr]))})
    values.update({a: 1 for a in layout.kv_count_attrs if hasattr(module, a)})
    values.update({a: width for a in layout.width_attrs if hasattr(module, a)})
    spec = {"like": layout.q, "zeros": zeros, "bias_from": bias_from, "values": values,
            # the head count the forward reads from the (shared) model config
            "config_counts": {a: 1 for a in layout.config_count_attrs}, "o_attr": o_attr}
    return EmptyAttention(module, spec)
