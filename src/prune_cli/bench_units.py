"""Speed of models pruned inside heads and FFNs, against the FLOP limit of their TRUE kept units.

Three ways to hold the same budget (a `density` of the encoder's attention + FFN weights):

* ``grain-like``: what intra-head pruning leaves (GRAIN's structure regularisation drives heads to
  full or empty): per layer, whole heads, one partial head (query/key and value sizes differ), in
  every other layer one head with query/key 0 (uniform attention), and FFN widths that vary over
  layers. Pruned by `surgery.remove_units` -- heads of equal size run as one attention call.
* ``grain-like padded``: the same units, each layer's heads padded to its largest kept size with
  zero rows (stock modules, one head size): the alternative representation, timed to choose.
* ``heads+ffn``: whole heads and FFN neurons at the same density (GRAIN's "whole heads" baseline).

Every row's FLOP limit is computed from the units kept (for the padded model: the units it stands
for), so `ratio` says how much of the saved work a representation turns into time. On a CPU the
element-wise work pruning cannot remove (embeddings, LayerNorms, residual adds) runs far below
matmul speed, so FLOPs undercount it and `ratio` falls as the density does whatever the
representation; `ratio_prunable` measures against a limit that charges that part at its measured
time (a model with nothing left, `NOTHING`) and scales only the attention + FFN time by its FLOPs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from prune_cli.arch.projections import sliced
from prune_cli.bench import DTYPES, Protocol, compare
from prune_cli.flops import EncoderGeometry, encoder_flops, kept_geometry
from prune_cli.surgery import _reshape_ffn, remove_units
from prune_cli.units import UnitSpace

#: the variant with every head and FFN neuron removed: what pruning can never make faster
NOTHING = "nothing left 0%"


def _layer_shares(density: float, layers: int, spread: float) -> list[float]:
    """Per-layer kept fractions averaging `density`, falling linearly with depth by `spread`."""
    if layers == 1:
        return [density]
    raw = [density * (1 + spread * (0.5 - i / (layers - 1))) for i in range(layers)]
    return [min(1.0, max(0.0, r)) for r in raw]


def grain_like(space: UnitSpace, density: float) -> UnitSpace:
    """Kept units with the structure intra-head pruning leaves, at `density` (to one unit)."""
    blocks = [i for i, b in enumerate(space.blocks) if b.kind == "encoder"]
    ffns = [j for j, f in enumerate(space.ffns) if f.kind == "encoder"]
    qk, vo, ffn = (torch.zeros(space.size(k), dtype=torch.bool) for k in ("qk", "vo", "ffn"))
    attn_share = _layer_shares(density, len(blocks), 1.0)  # lower layers keep more attention
    ffn_share = _layer_shares(density, len(ffns), -0.8)  # and less FFN
    for n, i in enumerate(blocks):
        b, base = space.blocks[i], space.dim_offsets[i]
        dims = round(attn_share[n] * 2 * b.num_heads * b.head_dim)  # qk + vo dims this layer keeps
        h = 0
        if n % 2 == 1 and dims >= b.head_dim + 1:  # a head with query/key 0: uniform attention
            vo[base:base + b.head_dim] = True
            dims -= b.head_dim
            h = 1
        while dims >= 2 * b.head_dim and h < b.num_heads:
            qk[base + h * b.head_dim:base + (h + 1) * b.head_dim] = True
            vo[base + h * b.head_dim:base + (h + 1) * b.head_dim] = True
            dims -= 2 * b.head_dim
            h += 1
        if dims >= 2 and h < b.num_heads:  # one partial head, more values than queries
            v = (dims + 1) // 2 + dims % 4 // 2
            q = dims - v
            vo[base + h * b.head_dim:base + h * b.head_dim + v] = True
            qk[base + h * b.head_dim:base + h * b.head_dim + q] = True
    for n, j in enumerate(ffns):
        f = space.ffns[j]
        ffn[f.offset:f.offset + round(ffn_share[n] * f.width)] = True
    return _fit(space, space.replace(qk=qk, vo=vo, ffn=ffn), density, ffns)


def whole_heads_like(space: UnitSpace, density: float) -> UnitSpace:
    """Whole heads and FFN neurons (no partial head) at the same density: per layer as many whole
    heads as its attention share pays for, FFN widths as in `grain_like`."""
    like = grain_like(space, density)
    keep = torch.zeros(space.total, dtype=torch.bool)
    for i, b in enumerate(space.blocks):
        if b.kind != "encoder":
            continue
        sl = slice(space.dim_offsets[i], space.dim_offsets[i] + b.num_heads * b.head_dim)
        heads = round(int(like.qk[sl].sum() + like.vo[sl].sum()) / (2 * b.head_dim))
        keep[b.offset:b.offset + min(heads, b.num_heads)] = True
    out = space.with_masks({"head": keep}).replace(ffn=like.ffn)
    return _fit(space, out, density, [j for j, f in enumerate(space.ffns) if f.kind == "encoder"])


def _fit(space: UnitSpace, target: UnitSpace, density: float, ffns: Sequence[int]) -> UnitSpace:
    """Move FFN neurons (first layers first) until the kept weights are within one unit of
    `density` of the encoder's, from above."""
    _, dense = space.weights("encoder")
    budget = density * dense
    ffn = target.ffn.clone()
    size = space.ffns[ffns[0]].unit_size
    kept = target.weights("encoder")[0]
    for j in ffns:  # add while below the budget
        f = space.ffns[j]
        while kept < budget and not bool(ffn[f.offset:f.offset + f.width].all()):
            ffn[f.offset + int(ffn[f.offset:f.offset + f.width].sum())] = True
            kept += size
    for j in reversed(ffns):  # remove while a whole unit above it
        f = space.ffns[j]
        while kept - size >= budget and bool(ffn[f.offset:f.offset + f.width].any()):
            ffn[f.offset + int(ffn[f.offset:f.offset + f.width].sum()) - 1] = False
            kept -= size
    return target.replace(ffn=ffn)


def padded_copy(model: nn.Module, space: UnitSpace, target: UnitSpace) -> nn.Module:
    """`model` holding `target`'s units padded per layer to its largest kept head (stock attention,
    one head size per layer, the original scale); weights are not meaningful, shapes are."""
    from prune_cli.heads import match_layout

    padded = copy.deepcopy(model)
    empty = [i for i in range(len(space.blocks)) if not target.block_layout(i)]
    if empty:  # blocks with no head left: as surgery leaves them
        keep = torch.ones(space.total, dtype=torch.bool)
        for i in empty:
            b = space.blocks[i]
            keep[b.offset:b.offset + b.num_heads] = False
        remove_units(padded, space.with_masks({"head": keep}), space)
    modules = dict(padded.named_modules())
    for i, b in enumerate(space.blocks):
        layout = target.block_layout(i)
        if not layout:
            continue
        size = max(max(len(q), len(v)) for _, q, v in layout)
        if size == b.head_dim and len(layout) == b.num_heads:
            continue
        module, attrs = modules[b.name], match_layout(modules[b.name])
        index = [h * b.head_dim + j for h, _, _ in layout for j in range(size)]
        for attr in (attrs.q, attrs.k, attrs.v):
            setattr(module, attr, sliced(getattr(module, attr), index, 0))
        parent, _, name = b.o.rpartition(".")
        setattr(padded.get_submodule(parent), name, sliced(modules[b.o], index, 1))
        setattr(module, attrs.head_dim_attr, size)  # module.scaling keeps 1/sqrt(dense head size)
        for attr in attrs.count_attrs:
            setattr(module, attr, len(layout))
        modules = dict(padded.named_modules())
    for j, f in enumerate(space.ffns):
        kept = target.ffn_kept(j)
        if len(kept) != f.width:
            _reshape_ffn(padded, modules, f, kept)
    return padded.eval()


def units_grid(model_name: str, dense: nn.Module, densities: Sequence[float], batches: Sequence[int],
               seq_lens: Sequence[int], protocol: Protocol, dtype: str = "float32", padded: bool = True,
               log: Callable[[str], None] | None = print) -> list[dict]:
    """Rows of bench.json for every density: grain-like (grouped), grain-like padded, heads+ffn."""
    dense = dense.float().eval()
    space = UnitSpace.from_model(dense)
    variants: dict[str, tuple] = {}
    for density in densities:
        pct = f"{density * 100:g}%"
        grain = grain_like(space, density)
        model = copy.deepcopy(dense)
        remove_units(model, grain, space)
        variants[f"grain-like {pct}"] = (model.to(protocol.device, DTYPES[dtype]), f"density {density:g}")
        if padded:
            variants[f"grain-like padded {pct}"] = (padded_copy(dense, space, grain).to(protocol.device, DTYPES[dtype]),
                                                   f"density {density:g}", grain)
        whole = whole_heads_like(space, density)
        model = copy.deepcopy(dense)
        remove_units(model, whole, space)
        variants[f"heads+ffn {pct}"] = (model.to(protocol.device, DTYPES[dtype]), f"density {density:g}")
    nothing = space.replace(qk=torch.zeros(space.dims_total, dtype=torch.bool),
                            vo=torch.zeros(space.dims_total, dtype=torch.bool),
                            ffn=torch.zeros(space.ffn_total, dtype=torch.bool))
    model = copy.deepcopy(dense)
    remove_units(model, nothing, space)
    variants[NOTHING] = (model.to(protocol.device, DTYPES[dtype]), "density 0")
    dense = dense.to(protocol.device, DTYPES[dtype])
    geometry = EncoderGeometry.from_model(dense)
    rows = []
    for seq_len in seq_lens:
        for batch in batches:
            t = time.time()
            new = compare(model_name, dense, variants, batch, seq_len, protocol, dtype)
            floor_ms = next(r["pruned_ms"] for r in new if r["variant"] == NOTHING)
            full = encoder_flops(geometry, [geometry.heads] * geometry.layers, batch, seq_len)
            for row, (label, v) in zip(new, variants.items()):
                target = v[2] if len(v) > 2 else UnitSpace.from_model(v[0])
                row["density"] = round(target.density("encoder"), 6)
                row["representation"] = "padded" if "padded" in label else "grouped"
                # the part pruning can shrink (attention + FFN), at the dense model's measured speed,
                # plus what it cannot (embeddings, LayerNorms, residuals: the `nothing left` time)
                kept = encoder_flops(geometry, *kept_geometry(target)[:1], batch, seq_len, kept_geometry(target)[1])
                share = (kept["attention"] + kept["ffn"]) / (full["attention"] + full["ffn"])
                limit_ms = floor_ms + (row["dense_ms"] - floor_ms) * share
                row["floor_ms"] = floor_ms
                row["prunable_share"] = round(share, 5)
                row["ratio_prunable"] = round(limit_ms / row["pruned_ms"], 4)
            rows.extend(new)
            if log:
                log(f"{model_name} {dtype} b={batch} n={seq_len}: dense {new[0]['dense_ms']:.1f} ms; "
                    + ", ".join(f"{r['variant']} x{r['speedup']:.2f} (ratio {r['ratio']}, {r['ratio_prunable']})"
                                for r in new)
                    + f"  [{time.time() - t:.0f}s]")
    return rows
