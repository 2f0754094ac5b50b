"""The stand-in forward of an attention block that kept no heads (any family): the stock forward
runs with one zero head, so whatever the release does with the cache, masks and kernels, the block
outputs exactly its output bias, as the gated model does."""

from __future__ import annotations

import torch
from torch import nn

from prune_cli.arch.projections import out_features
from prune_cli.arch.uneven import BlockConfig

#: width of the stand-in head an empty block runs with: small, and a size every attention kernel takes
STAND_IN_DIM = 8


class EmptyAttention:
    """Forward of an attention block that kept no heads.

    The stock forward cannot run with zero heads (`view(..., -1, head_dim)` of an empty tensor is
    ambiguous), and a hand-written stand-in has to re-implement whatever the release does with its
    arguments: the KV cache (a decoder self-attention must still advance its cache layer, or the
    past length later steps read — T5's position bias among them — is wrong), cache positions, the
    returned tuple. So the STOCK forward runs, with one stand-in head: zero query/key/value
    projections of width `STAND_IN_DIM` and a zero output weight with the block's real output
    bias. These are not parameters (nothing is saved, counted or trained, except the real bias).
    The head's values are 0, so the block outputs exactly its output bias — what the gated model
    computes with every gate of the block at 0 — whatever the cache, the mask or the attention
    kernel. The stand-in costs a few tiny ops per call (see docs/benchmarks.md).
    """

    def __init__(self, module: nn.Module, layout, o_attr: str | None, own_table: bool):
        self.module_ref = [module]  # a list keeps this a plain object, not a registered submodule
        self.o_attr = o_attr  # the output projection inside the block (BART, DistilBERT, T5), else None
        # what the call swaps in, built once: zero projections computing in the dtype/device of
        # the block's (empty) query projection, the real output bias, one head of STAND_IN_DIM
        # (of the block's dense head size where rotary tables of that size turn queries and keys)
        ref = getattr(module, layout.q)
        width = getattr(module, layout.head_dim_attr) if layout.rotary else STAND_IN_DIM
        if layout.fused:  # one projection outputs the head's query, key and value features
            self.swaps = {layout.q: Zeros(3 * width, ref)}
        else:
            self.swaps = {a: Zeros(width, ref) for a in (layout.q, layout.k, layout.v)}
        if o_attr is not None:
            o_proj = getattr(module, o_attr)
            self.swaps[o_attr] = Zeros(out_features(o_proj), ref, bias_of=o_proj)
        if own_table:  # UMT5: the block's own (now empty) relative-position table
            self.swaps["relative_attention_bias"] = Zeros(1, ref)
        self.swaps[layout.head_dim_attr] = width
        self.swaps.update({a: 1 for a in (*layout.count_attrs, *filter(None, [layout.groups_attr]))})
        self.swaps.update({a: 1 for a in layout.kv_count_attrs if hasattr(module, a)})
        self.swaps.update({a: width for a in layout.width_attrs if hasattr(module, a)})
        if layout.config_count_attrs:  # the head count the forward reads from the (shared) model config
            self.swaps["config"] = BlockConfig(module.config, {a: 1 for a in layout.config_count_attrs})

    def __call__(self, *args, **kwargs):
        module = self.module_ref[0]
        saved = {a: getattr(module, a) for a in self.swaps}
        for a, value in self.swaps.items():
            setattr(module, a, value)
        try:
            out = type(module).forward(module, *args, **kwargs)
        finally:
            for a, value in saved.items():
                setattr(module, a, value)
        if self.o_attr is None:  # the output projection lives outside the block (BERT): no features
            out = (out[0][..., :0], *out[1:]) if isinstance(out, tuple) else out[..., :0]
        return out


class Zeros(nn.Module):
    """A stand-in projection (or bias table) that outputs zeros of `width` features, in the dtype
    and on the device of `like` (a module of the block), plus the bias of `bias_of` (a real
    parameter, which keeps its gradient). Modules are referenced, not registered, and read at
    call time, so `model.to(...)` and loaded weights are followed."""

    def __init__(self, width: int, like: nn.Module, bias_of: nn.Module | None = None):
        super().__init__()
        self.width, self.refs = width, [like, bias_of]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        like, bias_of = self.refs
        lead = x.shape[:-1] if x.is_floating_point() else x.shape  # features, or bucket ids (table)
        out = torch.zeros(*lead, self.width, dtype=like.weight.dtype, device=like.weight.device)
        bias = None if bias_of is None else bias_of.bias
        return out if bias is None else out + bias
