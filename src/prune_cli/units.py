"""UnitSpace: the DENSE geometry of a model and what it still has, for every prunable unit.

Five kinds of unit, one hierarchy, each declared once in `KIND_TABLE`:

* ``head``: a whole attention head (the `HeadSpace` index, 0..H-1);
* ``kv``:   a whole key/value group with every query head reading it (one per head where every
            query head has its own key/value head);
* ``qk``:   one query/key dimension of a head (a row of W_q with the same row of W_k, + biases);
* ``vo``:   one value/output dimension of a head (a row of W_v with the matching column of W_o);
* ``ffn``:  one feed-forward neuron (a row of each FFN input projection, a column of its output).

Where a family fuses projections (GPT-2's c_attn, GPT-NeoX's query_key_value, Phi-3's qkv_proj and
gate_up_proj), the rows above are rows of the one fused projection, where its adapter's layout puts
them (`qkv_rows`, `FFN.chunks`; prune_cli.arch.projections); sizes, biases and counts are the same.

Grouped-query attention (GQA: Llama, Qwen2, Mistral...) shares each key/value head among a group of
query heads. A query head then owns its rows of W_q and columns of W_o; the rows of W_k and W_v
belong to its group, which stays while any query head of it is left (`Block.group_size`). The
kept state is still the masks over query heads' dimensions; the groups follow from them.

Each kind has a flat index over the dense model (qk/vo of head h of block b at
``dim_offset[b] + h * head_dim + j``, FFN neuron j of FFN f at ``ffn_offset[f] + j``) and a size in
weights, so units of every kind rank together and a budget in weights (`density=`) is exact.

The space is the one place that knows both the dense shapes and the kept state, so gates, surgery,
FLOPs and reports read it instead of re-deriving the geometry from the weights. The kept state is
three masks (qk, vo, ffn); a head is present while it keeps a value dimension (a head with value 0
contributes nothing and is removed, its query/key dimensions with it; a head with query/key 0 and
value > 0 attends uniformly, as the gated model does). The order of the units inside the pruned
weights is a function of the masks (`block_layout`), so the record saved in the config is the
masks alone (as compact ranges), and a pruned model of any shape reloads from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prune_cli.arch import FAMILIES, family_of
from prune_cli.arch.projections import in_features, out_features, qkv_positions
from prune_cli.errors import ConfigError
from prune_cli.heads import RECORD_KEY, Block, HeadSpace, base_prefix

#: config attribute holding {"attention": {block: {"head_dim", "qk", "vo"}}, "ffn": {ffn: ranges}}
UNITS_KEY = "prune_cli_kept_units"
#: model types whose heads may lose query/key or value dimensions (their family's `dims`: the
#: attention views q/k/v with -1 heads, which uneven heads need, see prune_cli.arch.runtime); tested on
#: each in tests/test_units.py (UMT5 and LongT5 view with their head count)
DIM_MODEL_TYPES = tuple(t for f in FAMILIES if f.dims for t in f.model_types)
#: `units=` shorthands (a list of kinds works too): what a prune may remove
UNIT_SETS = {
    "heads": ("head",),
    "heads_ffn": ("head", "ffn"),
    "kv": ("kv",),
    "kv_ffn": ("kv", "ffn"),
    "dims": ("qk", "vo"),
    "dims_ffn": ("qk", "vo", "ffn"),
    "ffn": ("ffn",),
}


@dataclass(frozen=True)
class FFN:
    name: str  # the module holding the FFN's projections
    kind: str  # "encoder" | "decoder"
    layer: int
    inputs: tuple[str, ...]  # full dotted paths
    output: str
    width: int  # dense number of neurons
    offset: int  # flat index of its first neuron
    unit_size: int  # weights per neuron
    chunks: int = 1  # projections stacked in each input's rows ([gate | up]: `FFNLayout.chunks`)


@dataclass(frozen=True)
class Kind:
    """One kind of prunable unit, declared once: the space's size/kept/unit_sizes/scope/with_masks
    and the record read it here, and a new kind is one entry (plus its gate in gates.py and, where
    it removes rows no other kind removes, its surgery)."""

    name: str
    weights: str  # what one unit is in the weights
    stored: bool  # one of the space's kept masks (qk, vo, ffn); the others follow from them
    recorded: str  # where a pruned model's config keeps it
    gate: str  # how gates.Gates scales it
    size: Callable[[UnitSpace], int]
    kept: Callable[[UnitSpace], torch.Tensor]
    unit_sizes: Callable[[UnitSpace], torch.Tensor]  # weights per unit (biases excluded, as density counts)
    scope: Callable[[UnitSpace, str], torch.Tensor]  # bool over its index: units in blocks of that kind
    #: the kept masks (qk, vo, ffn) a kept mask of this kind leaves: (masks, this kind's mask) -> masks
    restrict: Callable[[UnitSpace, dict, torch.Tensor], dict]


def _head_sizes(space: UnitSpace) -> torch.Tensor:
    # under grouped-query attention a query head owns its rows of W_q and columns of W_o only; the
    # key/value rows are its group's (`group_cost`)
    return torch.tensor([(2 if b.group_size > 1 else 4) * space.hidden[b.name] * b.head_dim
                         for b in space.blocks for _ in b.heads], dtype=torch.long)


def _kv_sizes(space: UnitSpace) -> torch.Tensor:  # its query heads and its own key/value rows
    heads = torch.zeros(space.size("kv"), dtype=torch.long)
    heads.index_add_(0, space.group_of_head(), _head_sizes(space))
    return heads + space.group_cost()


def _dim_sizes(space: UnitSpace) -> torch.Tensor:
    return torch.cat([torch.full((b.num_heads * b.head_dim,), (1 if b.group_size > 1 else 2) * space.hidden[b.name],
                                 dtype=torch.long) for b in space.blocks]) \
        if space.blocks else torch.zeros(0, dtype=torch.long)


def _ffn_sizes(space: UnitSpace) -> torch.Tensor:
    return torch.cat([torch.full((f.width,), f.unit_size, dtype=torch.long) for f in space.ffns]) \
        if space.ffns else torch.zeros(0, dtype=torch.long)


def _dim_scope(space: UnitSpace, scope: str) -> torch.Tensor:
    space.scope_mask(scope)  # validates the name
    return torch.cat([torch.full((b.num_heads * b.head_dim,), scope in ("all", b.kind)) for b in space.blocks]) \
        if space.blocks else torch.zeros(0, dtype=torch.bool)


def _ffn_scope(space: UnitSpace, scope: str) -> torch.Tensor:
    return torch.cat([torch.full((f.width,), scope in ("all", f.kind)) for f in space.ffns]) \
        if space.ffns else torch.zeros(0, dtype=torch.bool)


def _without_heads(space: UnitSpace, masks: dict, head: torch.Tensor) -> dict:
    """A head removed takes every query/key and value dimension of it."""
    dims = torch.cat([m.bool().repeat_interleave(b.head_dim) for b, m in zip(space.blocks, space.split(head.cpu()))])
    return {**masks, "qk": masks["qk"] & dims, "vo": masks["vo"] & dims}


def _without_groups(space: UnitSpace, masks: dict, kv: torch.Tensor) -> dict:
    """A group removed takes every query head reading it."""
    return _without_heads(space, masks, kv.bool().cpu()[space.group_of_head()])


def _stored(kind: str):
    def restrict(space: UnitSpace, masks: dict, mask: torch.Tensor) -> dict:
        return {**masks, kind: masks[kind] & mask.bool().cpu()}
    return restrict


#: every kind, coarsest first (the order `units=` lists are normalised to)
KIND_TABLE: dict[str, Kind] = {k.name: k for k in (
    Kind("head", "a whole attention head: its rows of W_q (and W_k, W_v unless grouped) and columns of W_o",
         stored=False, recorded="config prune_cli_heads (kept heads per block), from the vo mask",
         gate="a factor on the head's slice of the attention output",
         size=lambda s: s.total, kept=lambda s: s._heads_kept(), unit_sizes=_head_sizes,
         scope=lambda s, scope: s.scope_mask(scope), restrict=_without_heads),
    Kind("kv", "a key/value group with every query head reading it (one per head without GQA)",
         stored=False, recorded="follows from the heads left (a group stays while a query head reads it)",
         gate="its factor on every query head of the group",
         size=lambda s: len(s.group_cost()), kept=lambda s: s.groups_kept(), unit_sizes=_kv_sizes,
         scope=lambda s, scope: s.group_scope(scope), restrict=_without_groups),
    Kind("qk", "one query/key dimension of a head: a row of W_q with the same row of W_k (+ biases)",
         stored=True, recorded="config prune_cli_kept_units.attention.<block>.qk (ranges per head)",
         gate="a factor on the query feature (a hook on W_q's output)",
         size=lambda s: s.dims_total, kept=lambda s: s.qk.clone(), unit_sizes=_dim_sizes, scope=_dim_scope,
         restrict=_stored("qk")),
    Kind("vo", "one value/output dimension of a head: a row of W_v with the same column of W_o",
         stored=True, recorded="config prune_cli_kept_units.attention.<block>.vo (ranges per head)",
         gate="a factor on the value feature entering W_o",
         size=lambda s: s.dims_total, kept=lambda s: s.vo.clone(), unit_sizes=_dim_sizes, scope=_dim_scope,
         restrict=_stored("vo")),
    Kind("ffn", "one feed-forward neuron: a row of each FFN input projection, a column of its output",
         stored=True, recorded="config prune_cli_kept_units.ffn.<ffn> (ranges)",
         gate="a factor on the neuron's activation entering the output projection",
         size=lambda s: s.ffn_total, kept=lambda s: s.ffn.clone(), unit_sizes=_ffn_sizes, scope=_ffn_scope,
         restrict=_stored("ffn")),
)}
KINDS = tuple(KIND_TABLE)
STORED = tuple(k for k, kind in KIND_TABLE.items() if kind.stored)


def parse_units(value) -> tuple[str, ...]:
    """`units=` as kinds: a shorthand of UNIT_SETS or a list of kinds."""
    allowed = f"one of {', '.join(UNIT_SETS)} or a list of {', '.join(KINDS)}"
    if isinstance(value, str):
        if value not in UNIT_SETS:
            raise ConfigError("units", value, allowed)
        return UNIT_SETS[value]
    kinds = tuple(value or ())
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ConfigError("units", list(kinds), allowed)
    if "head" in kinds and ({"qk", "vo"} & set(kinds)):
        raise ConfigError("units", list(kinds), "whole heads OR their dimensions (head with qk/vo is one unit twice)")
    if "kv" in kinds and ({"head", "qk", "vo"} & set(kinds)):
        raise ConfigError("units", list(kinds), "whole key/value groups OR their heads or dimensions (a group is "
                          "its query heads)")
    if ("qk" in kinds) != ("vo" in kinds):
        raise ConfigError("units", list(kinds), "qk and vo together (a head's dimensions are pruned as a pair of kinds)")
    return tuple(k for k in KINDS if k in kinds)


def ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8': how kept dimensions are written into config.json."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def unranges(text: str) -> list[int]:
    out = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


class UnitSpace(HeadSpace):
    """Dense blocks (every head, full head size), dense FFNs, and the kept masks over them.

    `blocks` are HeadSpace blocks of the DENSE model, so the head index and every head-level
    method (`split`, `scope_mask`, `describe`...) are those of the dense model.
    """

    def __init__(self, blocks: Sequence[Block], ffns: Sequence[FFN], hidden: dict[str, int],
                 biases: dict[str, tuple[bool, ...]], qk: torch.Tensor | None = None,
                 vo: torch.Tensor | None = None, ffn: torch.Tensor | None = None):
        super().__init__(blocks)
        self.ffns = list(ffns)
        self.hidden = hidden  # block name -> model width its projections read
        self.biases = biases  # block name -> (q, k, v) have biases; ffn name -> (inputs...) have biases
        self.dim_offsets = []
        offset = 0
        for b in self.blocks:
            self.dim_offsets.append(offset)
            offset += b.num_heads * b.head_dim
        self.dims_total = offset
        self.ffn_total = sum(f.width for f in self.ffns)
        self.qk = torch.ones(self.dims_total, dtype=torch.bool) if qk is None else qk.bool().clone()
        self.vo = torch.ones(self.dims_total, dtype=torch.bool) if vo is None else vo.bool().clone()
        self.ffn = torch.ones(self.ffn_total, dtype=torch.bool) if ffn is None else ffn.bool().clone()
        self._normalize()

    # ---- construction --------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, dense: bool = False) -> UnitSpace:
        """The space of `model`: dense geometry from its config (a meta-device build, no weights),
        kept state from the record its config carries (`dense=True` ignores the record)."""
        from prune_cli.arch import build_model

        with torch.device("meta"):
            meta = build_model(_dense_config(model.config), type(model))
        space = cls._dense(meta)
        return space if dense else space.with_record(model.config, base_prefix(model))

    @classmethod
    def from_config(cls, config, auto_class=None, dense: bool = False) -> UnitSpace:
        from prune_cli.arch import build_model

        with torch.device("meta"):
            meta = build_model(_dense_config(config), auto_class)
        space = cls._dense(meta)
        return space if dense else space.with_record(config, base_prefix(meta))

    @classmethod
    def _dense(cls, meta: nn.Module) -> UnitSpace:
        heads = HeadSpace.from_model(meta, dense=True)
        modules = dict(meta.named_modules())
        hidden, biases = {}, {}
        for b in heads.blocks:
            q, k, v = (modules[p] for p in (b.q, b.k, b.v))  # one module thrice where they are fused
            hidden[b.name] = in_features(q)
            biases[b.name] = tuple(lin.bias is not None for lin in (q, k, v))
        ffns, offset, family = [], 0, family_of(meta)
        for name, layout in family.ffns(meta):
            paths = tuple(f"{name}.{p}" if name else p for p in layout.inputs)
            out = f"{name}.{layout.output}" if name else layout.output
            ins, chunks = [modules[p] for p in paths], layout.chunks
            width = out_features(ins[0]) // chunks
            size = chunks * sum(in_features(lin) for lin in ins) + out_features(modules[out])
            kind = family.kind(name)
            layer = next((int(p) for p in name.split(".") if p.isdigit()), 0)
            ffns.append(FFN(name, kind, layer, paths, out, width, offset, size, chunks))
            biases[name] = tuple(lin.bias is not None for lin in ins for _ in range(chunks))
            offset += width
        return cls(heads.blocks, ffns, hidden, biases)

    def with_record(self, config, prefix: str = "") -> UnitSpace:
        """This dense space with the kept state that `config`'s pruning record describes."""
        qk, vo, ffn = self.qk.clone(), self.vo.clone(), self.ffn.clone()
        heads_rec = {prefix + n: ids for n, ids in (getattr(config, RECORD_KEY, None) or {}).items()}
        units = getattr(config, UNITS_KEY, None) or {}
        dims_rec = {prefix + n: r for n, r in (units.get("attention") or {}).items()}
        ffn_rec = {prefix + n: r for n, r in (units.get("ffn") or {}).items()}
        known = {b.name for b in self.blocks}
        for name in set(heads_rec) | set(dims_rec):
            if name not in known:
                raise ValueError(f"the pruning record names {name!r}, which is not an attention block of this model")
        for i, b in enumerate(self.blocks):
            sl = slice(self.dim_offsets[i], self.dim_offsets[i] + b.num_heads * b.head_dim)
            if b.name in dims_rec:
                rec = dims_rec[b.name]
                kq = torch.zeros(b.num_heads, b.head_dim, dtype=torch.bool)
                kv = torch.zeros_like(kq)
                for h in range(b.num_heads):
                    kq[h, unranges(rec["qk"][h])] = True
                    kv[h, unranges(rec["vo"][h])] = True
                qk[sl], vo[sl] = kq.flatten(), kv.flatten()
            elif b.name in heads_rec:
                alive = torch.zeros(b.num_heads, dtype=torch.bool)
                alive[list(heads_rec[b.name])] = True
                dims = alive.repeat_interleave(b.head_dim)
                qk[sl], vo[sl] = dims, dims
        names = {f.name: f for f in self.ffns}
        for name, text in ffn_rec.items():
            if name not in names:
                raise ValueError(f"the pruning record names FFN {name!r}, which this model does not have")
            f = names[name]
            kept = torch.zeros(f.width, dtype=torch.bool)
            kept[unranges(text)] = True
            ffn[f.offset:f.offset + f.width] = kept
        return self.replace(qk=qk, vo=vo, ffn=ffn)

    def replace(self, qk=None, vo=None, ffn=None) -> UnitSpace:
        """The same geometry with other kept masks (None keeps the current one)."""
        return UnitSpace(self.blocks, self.ffns, self.hidden, self.biases,
                         self.qk if qk is None else qk, self.vo if vo is None else vo,
                         self.ffn if ffn is None else ffn)

    def _normalize(self) -> None:
        """A head without value dimensions is gone: its query/key dimensions go with it."""
        for i, b in enumerate(self.blocks):
            sl = slice(self.dim_offsets[i], self.dim_offsets[i] + b.num_heads * b.head_dim)
            alive = self.vo[sl].view(b.num_heads, b.head_dim).any(-1)
            self.qk[sl] &= alive.repeat_interleave(b.head_dim)

    # ---- masks per kind ------------------------------------------------
    def size(self, kind: str) -> int:
        return KIND_TABLE[kind].size(self)

    def kept(self, kind: str | HeadSpace = "head") -> torch.Tensor:
        """bool mask over the dense index of `kind` (for a HeadSpace argument: which of this
        space's heads that space still has, as `HeadSpace.kept`)."""
        if isinstance(kind, HeadSpace):
            return super().kept(kind)
        return KIND_TABLE[kind].kept(self)

    def _heads_kept(self) -> torch.Tensor:
        """A head is present while it keeps a value dimension."""
        return torch.cat([self.vo[self._dims(i)].view(b.num_heads, b.head_dim).any(-1)
                          for i, b in enumerate(self.blocks)])

    def masks(self) -> dict[str, torch.Tensor]:
        return {k: self.kept(k) for k in KINDS}

    def with_masks(self, masks: dict[str, torch.Tensor]) -> UnitSpace:
        """Apply kept masks of any kinds (coarse kinds take their finer units along); masks only shrink."""
        kept = {k: getattr(self, k).clone() for k in STORED}
        for kind in KINDS:
            if kind in masks:
                kept = KIND_TABLE[kind].restrict(self, kept, masks[kind])
        return self.replace(**kept)

    def unit_sizes(self, kind: str) -> torch.Tensor:
        """Weights per unit of `kind` (biases excluded, as the density counts)."""
        return KIND_TABLE[kind].unit_sizes(self)

    def scope(self, kind: str, scope: str = "all") -> torch.Tensor:
        """bool over `kind`'s index: units of blocks of this kind ('all' = every unit)."""
        return KIND_TABLE[kind].scope(self, scope)

    def head_of(self, kind: str) -> torch.Tensor:
        """long [size(kind)]: the flat head index each qk/vo unit belongs to."""
        return torch.cat([torch.arange(b.num_heads).repeat_interleave(b.head_dim) + b.offset for b in self.blocks])

    # ---- weights, density, parameters ----------------------------------
    def weights(self, scope: str = "all") -> tuple[int, int]:
        """(kept, dense) weights of the attention + FFN blocks in `scope`: what `density` counts
        (with grouped-query attention, the key/value rows of the groups still present)."""
        kept = dense = 0
        for kind in STORED:
            sizes, inside = self.unit_sizes(kind), self.scope(kind, scope)
            dense += int(sizes[inside].sum())
            kept += int(sizes[inside & self.kept(kind)].sum())
        cost, inside = self.group_cost(), self.group_scope(scope)
        dense += int(cost[inside].sum())
        kept += int(cost[inside & self.groups_kept()].sum())
        return kept, dense

    # ---- key/value groups (grouped-query attention) ---------------------
    def group_of_head(self) -> torch.Tensor:
        """long [H]: the flat index of the key/value group each (dense) query head reads; in a
        block without grouped-query attention every head is its own group."""
        out, offset = [], 0
        for b in self.blocks:
            out.append(torch.arange(b.num_heads) // b.group_size + offset)
            offset += b.num_heads // b.group_size
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def group_cost(self) -> torch.Tensor:
        """long [G]: weights a group owns beyond its query heads' (its rows of W_k and W_v under
        grouped-query attention; 0 where key/value rows belong to single heads' dimensions)."""
        return torch.cat([torch.full((b.num_heads // b.group_size,),
                                     2 * self.hidden[b.name] * b.head_dim if b.group_size > 1 else 0, dtype=torch.long)
                          for b in self.blocks]) if self.blocks else torch.zeros(0, dtype=torch.long)

    def group_scope(self, scope: str = "all") -> torch.Tensor:
        return torch.cat([torch.full((b.num_heads // b.group_size,), scope in ("all", b.kind))
                          for b in self.blocks]) if self.blocks else torch.zeros(0, dtype=torch.bool)

    def groups_kept(self) -> torch.Tensor:
        """bool [G]: groups with a query head left."""
        kept = torch.zeros(len(self.group_cost()), dtype=torch.bool)
        kept[self.group_of_head()[self.kept("head")]] = True
        return kept

    def density(self, scope: str = "encoder") -> float:
        """Kept fraction of the attention + FFN weights (of the encoder's by default, as GRAIN
        counts; embeddings and task heads excluded). 'all' counts every block."""
        kept, dense = self.weights(scope if any(b.kind == scope for b in self.blocks) else "all")
        return kept / dense if dense else 1.0

    def removed_params(self) -> int:
        """Parameters surgery removes for the current masks (weights and biases), exactly."""
        removed = 0
        groups_kept = self.groups_kept()
        group_pos = 0
        for i, b in enumerate(self.blocks):
            d, (bq, bk, bv) = self.hidden[b.name], self.biases[b.name]
            sl = self._dims(i)
            if b.group_size > 1:  # query rows and output columns per head, key/value rows per group
                removed += int((~self.qk[sl]).sum()) * (d + bq) + int((~self.vo[sl]).sum()) * d
                gone = int((~groups_kept[group_pos:group_pos + b.num_heads // b.group_size]).sum())
                removed += gone * b.head_dim * (2 * d + bk + bv)
            else:
                removed += int((~self.qk[sl]).sum()) * (2 * d + bq + bk)
                removed += int((~self.vo[sl]).sum()) * (2 * d + bv)
            group_pos += b.num_heads // b.group_size
        for f in self.ffns:
            gone = int((~self.ffn[f.offset:f.offset + f.width]).sum())
            removed += gone * (f.unit_size + sum(self.biases[f.name]))
        return removed

    def _dims(self, i: int) -> slice:
        b = self.blocks[i]
        return slice(self.dim_offsets[i], self.dim_offsets[i] + b.num_heads * b.head_dim)

    # ---- what the pruned weights hold -----------------------------------
    def block_layout(self, i: int) -> list[tuple[int, list[int], list[int]]]:
        """[(head, kept qk dims, kept vo dims)] of block i in the order the PRUNED weights hold
        them. Full heads in ascending order when every kept head is full (the stock layout, so
        head-only pruning equals transformers' own slicing); otherwise heads of equal
        (qk, vo) size side by side (largest first), so one attention call runs each group."""
        b = self.blocks[i]
        sl = self._dims(i)
        q, v = self.qk[sl].view(b.num_heads, b.head_dim), self.vo[sl].view(b.num_heads, b.head_dim)
        heads = [(h, q[h].nonzero().flatten().tolist(), v[h].nonzero().flatten().tolist())
                 for h in range(b.num_heads) if bool(v[h].any())]
        if all(len(qd) == len(vd) == b.head_dim for _, qd, vd in heads):
            return heads
        return sorted(heads, key=lambda t: (-len(t[1]), -len(t[2]), t[0]))

    def is_even(self, i: int) -> bool:
        """Every kept head of block i is whole (the stock attention runs it)."""
        b = self.blocks[i]
        return all(len(q) == len(v) == b.head_dim for _, q, v in self.block_layout(i))

    def is_whole(self) -> bool:
        """Nothing smaller than a head was removed: every kept head whole, every FFN full."""
        return bool(self.ffn.all()) and all(self.is_even(i) for i in range(len(self.blocks)))

    def qkv_rows(self, i: int) -> tuple[list[int], list[int], list[int]]:
        """Where block i's current query, key and value features sit among the output features of
        their projection(s): each part in weight order (heads as `block_layout`, key/value heads of
        the groups left). Separate projections hold their part alone; a fused one all three
        (`projections.qkv_positions`)."""
        b, layout = self.blocks[i], self.block_layout(i)
        q = sum(len(qd) for _, qd, _ in layout)
        if b.group_size > 1:
            kv_heads = len({h // b.group_size for h, _, _ in layout})
            k = v = kv_heads * b.head_dim
        else:
            kv_heads, k, v = len(layout), q, sum(len(vd) for _, _, vd in layout)
        if b.fused:
            return qkv_positions(b.fused, len(layout), kv_heads, b.head_dim)
        return list(range(q)), list(range(k)), list(range(v))

    def ffn_kept(self, j: int) -> list[int]:
        f = self.ffns[j]
        return self.ffn[f.offset:f.offset + f.width].nonzero().flatten().tolist()

    def current_heads(self) -> HeadSpace:
        """The HeadSpace of the pruned model (kept heads in weight order): what the head-level
        code that predates units (heads.json blocks, the head count per layer) reads."""
        blocks, offset = [], 0
        for i, b in enumerate(self.blocks):
            heads = tuple(h for h, _, _ in self.block_layout(i))
            blocks.append(dataclasses.replace(b, heads=heads, offset=offset))
            offset += len(heads)
        return HeadSpace(blocks)

    def record(self, prefix: str = "") -> tuple[dict, dict]:
        """(heads record, units record) for the config: only blocks that lost something."""
        heads, attention, ffn = {}, {}, {}
        for i, b in enumerate(self.blocks):
            layout = self.block_layout(i)
            name = b.name[len(prefix):] if prefix and b.name.startswith(prefix) else b.name
            if len(layout) != b.num_heads or not self.is_even(i):
                heads[name] = [h for h, _, _ in layout]
            if not self.is_even(i):
                sl = self._dims(i)
                q, v = self.qk[sl].view(b.num_heads, b.head_dim), self.vo[sl].view(b.num_heads, b.head_dim)
                attention[name] = {"head_dim": b.head_dim,
                                   "qk": [ranges(q[h].nonzero().flatten().tolist()) for h in range(b.num_heads)],
                                   "vo": [ranges(v[h].nonzero().flatten().tolist()) for h in range(b.num_heads)]}
        for j, f in enumerate(self.ffns):
            kept = self.ffn_kept(j)
            if len(kept) != f.width:
                name = f.name[len(prefix):] if prefix and f.name.startswith(prefix) else f.name
                ffn[name] = ranges(kept)
        units = {k: v for k, v in (("attention", attention), ("ffn", ffn)) if v}
        return heads, units

    def summary(self) -> dict:
        """Per block and FFN what is left: the `units` part of heads.json and metrics.json."""
        kept_w, dense_w = self.weights("all")
        blocks = []
        for i, b in enumerate(self.blocks):
            sl = self._dims(i)
            q, v = self.qk[sl].view(b.num_heads, b.head_dim), self.vo[sl].view(b.num_heads, b.head_dim)
            blocks.append({"name": b.name, "kind": b.kind, "layer": b.layer, "head_dim": b.head_dim,
                           "qk": q.sum(-1).tolist(), "vo": v.sum(-1).tolist(),
                           **({"kv_heads": sorted({h // b.group_size for h in range(b.num_heads) if bool(v[h].any())})}
                              if b.group_size > 1 else {})})
        ffns = [{"name": f.name, "kind": f.kind, "layer": f.layer, "width": f.width, "kept": len(self.ffn_kept(j))}
                for j, f in enumerate(self.ffns)]
        grouped = any(b.group_size > 1 for b in self.blocks)
        return {"density": round(self.density(), 6), "weights_kept": kept_w, "weights_dense": dense_w,
                "heads_left": int(self.kept("head").sum()),
                **({"kv_heads_left": int(self.groups_kept().sum())} if grouped else {}), "blocks": blocks, "ffns": ffns}

    def __eq__(self, other) -> bool:
        return (isinstance(other, UnitSpace) and self.blocks == other.blocks and self.ffns == other.ffns
                and torch.equal(self.qk, other.qk) and torch.equal(self.vo, other.vo)
                and torch.equal(self.ffn, other.ffn))

    __hash__ = None

    def __repr__(self) -> str:
        return (f"UnitSpace({len(self.blocks)} blocks, {int(self.kept('head').sum())}/{self.total} heads, "
                f"{len(self.ffns)} FFNs, density {self.density():.3f})")


def _dense_config(config):
    """A copy of `config` without pruning records: the model before any pruning."""
    import copy

    from prune_cli.embeddings import EMBED_KEY

    dense = copy.deepcopy(config)
    for key in (RECORD_KEY, UNITS_KEY, EMBED_KEY):
        if hasattr(dense, key):
            setattr(dense, key, {})
    return dense
