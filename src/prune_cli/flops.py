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

With heads pruned inside (`prune_cli.units`), h*d_h becomes the sum of the kept query/key
dimensions (q, k projections and scores) or of the kept value dimensions (v, output projections
and context), and f the kept FFN neurons of that layer.

Every term but the FFN is linear in h, which is why the FLOP speedup of a mask depends only on
its per-layer head counts, and two masks with the same total (uniform or uneven over layers)
have the same FLOPs. A layer that kept no heads still adds its output-projection bias, the
residual and the LayerNorm, and runs the stock attention kernel once with a zero stand-in head of
`arch.empty.STAND_IN_DIM` features (what the pruned model computes: see `arch.runtime.EmptyAttention`;
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
        from prune_cli.arch import family_of

        g = family_of(config).geometry(config)
        if g.ffn is None:
            raise ValueError(f"{type(config).__name__}: no FFN size in its config")
        return cls(g.hidden, g.layers, g.heads, g.head_dim, g.ffn, pooler, num_labels)

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


def _heads(g: EncoderGeometry, kept) -> list[tuple[int, int]]:
    """`kept` as [(query/key dims, value dims)] per kept head (an int = that many whole heads)."""
    heads = [(g.head_dim, g.head_dim)] * kept if isinstance(kept, int) else [tuple(h) for h in kept]
    if len(heads) > g.heads or any(not (0 <= q <= g.head_dim and 0 < v <= g.head_dim) for q, v in heads):
        raise ValueError(f"a layer holds at most {g.heads} heads of query/key 0..{g.head_dim} and value "
                         f"1..{g.head_dim} dimensions: {kept}")
    return heads


def layer_flops(g: EncoderGeometry, kept, batch: int, seq_len: int, ffn: int | None = None) -> dict[str, int]:
    """FLOPs of one encoder layer: {matmul, elementwise, attention, ffn}.

    `kept`: the number of whole heads left, or [(query/key dims, value dims)] per head left (heads
    pruned inside, `prune_cli.units`); `ffn`: FFN neurons left (None = all). These are the TRUE
    kept dimensions: a head with query/key 0 costs no scores and no softmax, only the masked mean
    of its values that uniform attention is (what the pruned model computes in an encoder)."""
    from prune_cli.arch.empty import STAND_IN_DIM

    heads = _heads(g, kept)
    f = g.intermediate if ffn is None else int(ffn)
    if not 0 <= f <= g.intermediate:
        raise ValueError(f"FFN neurons must lie in 0..{g.intermediate}: {ffn}")
    tokens = batch * seq_len
    dq, dv = sum(q for q, _ in heads), sum(v for _, v in heads)
    projections = 2 * tokens * g.hidden * (2 * dq + dv) + 2 * tokens * dv * g.hidden  # q, k, v and output
    if heads:
        # scores + context; a head with query/key 0 attends uniformly: a masked mean of its values
        uniform = sum(v for q, v in heads if q == 0)
        kernel = 2 * batch * seq_len * seq_len * (dq + dv - uniform) + 2 * batch * seq_len * uniform
        kernel_heads = sum(1 for q, _ in heads if q)
    else:  # the stand-in head of an emptied block (see the module doc)
        kernel, kernel_heads = 2 * (2 * batch * seq_len * seq_len * STAND_IN_DIM), 1
    ffn_mm = 2 * 2 * tokens * g.hidden * f
    attention_ew = tokens * (2 * dq + dv) + SOFTMAX_OPS * batch * kernel_heads * seq_len * seq_len
    ffn_ew = tokens * f + tokens * g.hidden + GELU_OPS * tokens * f  # biases + GELU
    elementwise = (
        attention_ew
        + tokens * g.hidden  # output-projection bias (also when no head is left)
        + ffn_ew
        + 2 * tokens * g.hidden  # two residual adds
        + 2 * LAYERNORM_OPS * tokens * g.hidden  # two LayerNorms
    )
    attention = projections + (kernel if heads else 0) + (attention_ew if heads else 0)
    return {"matmul": projections + kernel + ffn_mm, "elementwise": elementwise, "attention": attention,
            "ffn": ffn_mm + ffn_ew}


def encoder_flops(g: EncoderGeometry, heads_per_layer: Sequence, batch: int, seq_len: int,
                  ffn_per_layer: Sequence[int] | None = None) -> dict[str, int]:
    """FLOPs of one forward pass: {matmul, elementwise, attention, ffn, other, total}.

    `heads_per_layer`: per layer, the whole heads kept (an int) or [(qk, vo)] per kept head;
    `ffn_per_layer`: FFN neurons kept per layer (None = all). `attention` is the part head
    pruning can remove (projections + score/context products and their element-wise work), `ffn`
    the feed-forward blocks, `other` embeddings, LayerNorms, residuals, pooler and classifier.
    """
    if len(heads_per_layer) != g.layers:
        raise ValueError(f"expected {g.layers} per-layer head counts, got {len(heads_per_layer)}")
    ffns = list(ffn_per_layer) if ffn_per_layer is not None else [None] * g.layers
    if len(ffns) != g.layers:
        raise ValueError(f"expected {g.layers} per-layer FFN widths, got {len(ffns)}")
    tokens = batch * seq_len
    matmul = elementwise = attention = ffn = 0
    for kept, width in zip(heads_per_layer, ffns):
        layer = layer_flops(g, kept, batch, seq_len, width)
        matmul += layer["matmul"]
        elementwise += layer["elementwise"]
        attention += layer["attention"]
        ffn += layer["ffn"]
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


def flop_speedup(g: EncoderGeometry, heads_per_layer: Sequence, batch: int, seq_len: int,
                 ffn_per_layer: Sequence[int] | None = None) -> float:
    """Dense FLOPs / pruned FLOPs: the speedup a perfectly efficient runtime would show."""
    dense = encoder_flops(g, [g.heads] * g.layers, batch, seq_len)["total"]
    return dense / encoder_flops(g, heads_per_layer, batch, seq_len, ffn_per_layer)["total"]


def heads_per_layer(model) -> list[int]:
    """Kept heads of each encoder self-attention layer of `model`, in layer order."""
    from prune_cli.heads import HeadSpace

    blocks = sorted((b for b in HeadSpace.from_model(model).blocks if b.kind == "encoder"), key=lambda b: b.layer)
    return [b.num_heads for b in blocks]


def kept_geometry(space) -> tuple[list, list[int]]:
    """(per encoder layer [(qk, vo)] of each head left, per encoder layer FFN neurons left) of a
    `UnitSpace`: the true kept dimensions `encoder_flops` takes."""
    blocks = sorted((i for i, b in enumerate(space.blocks) if b.kind == "encoder"), key=lambda i: space.blocks[i].layer)
    heads = [[(len(q), len(v)) for _, q, v in space.block_layout(i)] for i in blocks]
    ffns = sorted((j for j, f in enumerate(space.ffns) if f.kind == "encoder"), key=lambda j: space.ffns[j].layer)
    return heads, [len(space.ffn_kept(j)) for j in ffns]
