"""Analytical FLOPs of one encoder forward pass, for any number of kept heads per layer.

Why count instead of only timing: a measured speedup means little without the ceiling it is
measured against. Removing heads shrinks only the attention part of a layer (the q/k/v/o
projections and the score/context products); the feed-forward block, embeddings and
LayerNorms stay, so the best possible speedup of head pruning is `flops(dense) /
flops(pruned)`. A benchmark reports `measured speedup / FLOP speedup` (the "ratio"): 1.0 means
the runtime shrank exactly as the work did.

Conventions (the usual ones, e.g. Kaplan et al. 2020 and torch.utils.flop_counter):

* a matrix product of [m, k] by [k, n] is 2*m*k*n FLOPs (one multiply and one add per term);
  `matmul` in the breakdown holds exactly these, and equals what
  `torch.utils.flop_counter.FlopCounterMode` counts for an eager-attention forward (tested);
* element-wise work is counted as a few FLOPs per element (constants below) in `elementwise`:
  bias adds, the attention scale/mask/softmax, GELU, residual adds, LayerNorms and the sum of
  the three embeddings. Embedding lookups themselves are memory reads, 0 FLOPs.

Per layer with h kept heads of size d_h, hidden size d, FFN size f, batch b, length n and
T = b*n tokens:

    q, k, v projections  3 * 2*T*d*(h*d_h)
    scores Q K^T             2*b*h*n*n*d_h
    context P V              2*b*h*n*n*d_h
    output projection        2*T*(h*d_h)*d
    FFN                      2*T*d*f + 2*T*f*d

Every term but the FFN is linear in h, which is why the FLOP speedup of a mask depends only on
its per-layer head counts, and two masks with the same total (uniform or uneven over layers)
have the same FLOPs. A layer that kept no heads still adds its output-projection bias, the
residual and the LayerNorm, and runs the stock attention kernel once with a zero stand-in head of
`surgery.STAND_IN_DIM` features (what the pruned model computes: see `surgery._EmptyAttention`;
0.2 % of the FLOPs of an emptied MiniLM layer at length 128).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: FLOPs per element of the element-wise steps (documented estimates; they are a small share)
SOFTMAX_OPS = 5  # scale, mask add, max-subtract, exp, normalise
LAYERNORM_OPS = 5  # mean, centre, variance, normalise, affine
GELU_OPS = 8  # erf-based GELU: a handful of multiplies/adds plus the erf polynomial


@dataclass(frozen=True)
class EncoderGeometry:
    """The shapes that decide an encoder's FLOPs (BERT / RoBERTa / DistilBERT style)."""

    hidden: int
    layers: int
    heads: int  # per layer, before pruning
    head_dim: int
    intermediate: int
    pooler: bool = False  # BERT's tanh pooler over the first token
    num_labels: int = 0  # 0 = no classification head

    @classmethod
    def from_config(cls, config, pooler: bool = False, num_labels: int = 0) -> EncoderGeometry:
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(f"{type(config).__name__}: FLOP counting covers encoder-only models")
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
        if intermediate is None:
            raise ValueError(f"{type(config).__name__}: no intermediate_size/hidden_dim (FFN size)")
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(hidden, int(config.num_hidden_layers), heads, int(head_dim), int(intermediate), pooler, num_labels)

    @classmethod
    def from_model(cls, model) -> EncoderGeometry:
        """Geometry of `model`, including whether it runs a pooler and a classifier."""
        from torch import nn

        base = getattr(model, "base_model", model)
        pooler = getattr(base, "pooler", None) is not None
        head = getattr(model, "classifier", None)
        if isinstance(head, nn.Sequential):
            head = [m for m in head if isinstance(m, nn.Linear)][-1]
        if head is not None and not isinstance(head, nn.Linear):  # RoBERTa-style head module
            head = getattr(head, "out_proj", None)
        num_labels = int(head.out_features) if isinstance(head, nn.Linear) else 0
        return cls.from_config(model.config, pooler=pooler, num_labels=num_labels)


def layer_flops(g: EncoderGeometry, kept: int, batch: int, seq_len: int) -> dict[str, int]:
    """FLOPs of one encoder layer that kept `kept` heads: {matmul, elementwise}."""
    from prune_cli.surgery import STAND_IN_DIM

    tokens = batch * seq_len
    width = kept * g.head_dim  # features the kept heads produce
    qkv = 3 * 2 * tokens * g.hidden * width
    kernel_heads, kernel_dim = (kept, g.head_dim) if kept else (1, STAND_IN_DIM)  # see the module doc
    attention = 2 * (2 * batch * kernel_heads * seq_len * seq_len * kernel_dim)  # scores + context
    out = 2 * tokens * width * g.hidden
    ffn = 2 * 2 * tokens * g.hidden * g.intermediate
    elementwise = (
        3 * tokens * width  # q/k/v biases
        + SOFTMAX_OPS * batch * kernel_heads * seq_len * seq_len
        + tokens * g.hidden  # output-projection bias (also when no head is left)
        + tokens * g.intermediate + tokens * g.hidden  # FFN biases
        + GELU_OPS * tokens * g.intermediate
        + 2 * tokens * g.hidden  # two residual adds
        + 2 * LAYERNORM_OPS * tokens * g.hidden  # two LayerNorms
    )
    return {"matmul": qkv + attention + out + ffn, "elementwise": elementwise}


def encoder_flops(g: EncoderGeometry, heads_per_layer: Sequence[int], batch: int, seq_len: int) -> dict[str, int]:
    """FLOPs of one forward pass: {matmul, elementwise, attention, ffn, other, total}.

    `attention` is the part head pruning can remove (projections + score/context products and
    their element-wise work), `ffn` the feed-forward blocks, `other` embeddings, LayerNorms,
    residuals, pooler and classifier.
    """
    if len(heads_per_layer) != g.layers:
        raise ValueError(f"expected {g.layers} per-layer head counts, got {len(heads_per_layer)}")
    if any(not 0 <= h <= g.heads for h in heads_per_layer):
        raise ValueError(f"head counts must lie in 0..{g.heads}: {list(heads_per_layer)}")
    tokens = batch * seq_len
    matmul = elementwise = attention = 0
    for kept in heads_per_layer:
        layer = layer_flops(g, kept, batch, seq_len)
        matmul += layer["matmul"]
        elementwise += layer["elementwise"]
        width = kept * g.head_dim
        attention += (8 * tokens * g.hidden * width + 4 * batch * kept * seq_len**2 * g.head_dim
                      + 3 * tokens * width + SOFTMAX_OPS * batch * kept * seq_len**2)
    ffn = g.layers * (4 * tokens * g.hidden * g.intermediate + tokens * g.intermediate * (1 + GELU_OPS) + tokens * g.hidden)
    elementwise += 2 * tokens * g.hidden + LAYERNORM_OPS * tokens * g.hidden  # embedding sum + LayerNorm
    if g.pooler:
        matmul += 2 * batch * g.hidden * g.hidden
        elementwise += 2 * batch * g.hidden  # bias + tanh
    if g.num_labels:
        matmul += 2 * batch * g.hidden * g.num_labels
        elementwise += batch * g.num_labels
    total = matmul + elementwise
    return {"matmul": matmul, "elementwise": elementwise, "attention": attention, "ffn": ffn,
            "other": total - attention - ffn, "total": total}


def flop_speedup(g: EncoderGeometry, heads_per_layer: Sequence[int], batch: int, seq_len: int) -> float:
    """Dense FLOPs / pruned FLOPs: the speedup a perfectly efficient runtime would show."""
    dense = encoder_flops(g, [g.heads] * g.layers, batch, seq_len)["total"]
    return dense / encoder_flops(g, heads_per_layer, batch, seq_len)["total"]


def heads_per_layer(model) -> list[int]:
    """Kept heads of each encoder self-attention layer of `model`, in layer order."""
    from prune_cli.heads import HeadSpace

    blocks = sorted((b for b in HeadSpace.from_model(model).blocks if b.kind == "encoder"), key=lambda b: b.layer)
    return [b.num_heads for b in blocks]
