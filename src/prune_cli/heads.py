"""HeadSpace: every attention head of a model, with one flat index 0..H-1.

Everything else in prune-cli (gates, scores, masks, heads.json, `heads=K`) speaks in that flat
index, so one global top-K covers encoder-only and encoder-decoder models alike.

Which modules are attention blocks, what kind each is and how its projections are named is the
model family's declaration (`prune_cli.arch`); a model of an undeclared family is refused, and a
block its family cannot match is an error, never a silent skip.

A pruned model remembers the ORIGINAL ids of the heads it kept, in `model.config` under
`RECORD_KEY` (written by `prune_cli.surgery`), keyed by block name relative to the base model
(`model.base_model`), so the record survives `save_pretrained` and is valid whichever head class
(`AutoModel`, `...ForSequenceClassification`) reloads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prune_cli.arch import FAMILIES, AttentionLayout, family_of, layer_index
from prune_cli.arch.projections import in_features, out_features
from prune_cli.errors import ConfigError

#: config attribute holding {block name relative to the base model: [kept original head ids]}
RECORD_KEY = "prune_cli_kept_heads"

SCOPES = ("all", "encoder", "decoder", "cross")


#: the attention layout type and lookup live in the architecture adapters (prune_cli.arch)
Layout = AttentionLayout


@dataclass(frozen=True)
class Block:
    """One attention module: which heads it still has and where its projections live."""

    name: str  # dotted path (from the model root) of the attention module that owns q/k/v
    kind: str  # "encoder" | "decoder" | "cross"
    layer: int
    heads: tuple[int, ...]  # ORIGINAL head ids still present, in the order they sit in the weights
    head_dim: int
    offset: int  # flat index of this block's first head in its HeadSpace
    q: str
    k: str
    v: str
    o: str
    #: query heads per key/value head in the DENSE block (1 unless grouped-query attention):
    #: original query head h reads key/value head h // group_size
    group_size: int = 1
    #: q, k and v are one projection (q == k == v) laid out this way (`AttentionLayout.fused`)
    fused: str | None = None

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def groups(self) -> tuple[int, ...]:
        """ORIGINAL ids of the key/value heads still present (a group stays while any query head
        of it is left), in weight order."""
        return tuple(sorted({h // self.group_size for h in self.heads}))


def match_layout(module: nn.Module) -> Layout | None:
    """The layout `module` follows (in its model's family), or None if it is not an attention block."""
    family = family_of(module.config) if hasattr(module, "config") else None
    layouts = family.attention if family else tuple(a for f in FAMILIES for a in f.attention)
    return next((layout for layout in layouts if layout.matches(module)), None)


def base_prefix(model: nn.Module) -> str:
    """'bert.' for BertForSequenceClassification, '' for BertModel or T5: the record is keyed
    relative to the base model so any head class can reload a pruned checkpoint."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix + "."
    return ""


def head_keys(model) -> list[str]:
    """State-dict keys of the task head: everything outside the base model."""
    prefix = base_prefix(model)
    return [k for k in model.state_dict() if prefix and not k.startswith(prefix)]


def read_record(model: nn.Module) -> dict[str, list[int]]:
    """{root-relative block name: kept original head ids} stored by surgery (empty if unpruned)."""
    config = getattr(model, "config", None)
    record = getattr(config, RECORD_KEY, None) or {}
    prefix = base_prefix(model)
    return {prefix + name: list(ids) for name, ids in record.items()}


class HeadSpace:
    """All attention blocks of one model in forward order, and the flat head index over them."""

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)

    # ---- construction --------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, dense: bool = False) -> HeadSpace:
        """`dense=True` ignores the pruning record: the space of the model before any pruning
        (only valid on a model built from its config, whose shapes are still dense)."""
        record = {} if dense else read_record(model)
        family = family_of(model)
        geometry = family.geometry(model.config)
        blocks, offset = [], 0
        for name, module, layout, o_name in family.attention_blocks(model):
            # a block whose heads lost dimensions runs with head size 1 (prune_cli.arch.runtime) and
            # remembers its dense head size; its widths are sums of uneven heads
            uneven = getattr(module, "_prune_cli_head_dim", None)
            head_dim = uneven or getattr(module, layout.head_dim_attr)
            # query features: of the query projection, or (q/k/v fused, heads whole) the output
            # projection's input features
            width = in_features(model.get_submodule(o_name)) if layout.fused else out_features(
                getattr(module, layout.q))
            heads = tuple(record[name]) if name in record else tuple(range(width // head_dim))
            if not uneven and len(heads) * head_dim != width:
                raise ValueError(
                    f"{name}: {width} query features do not hold the {len(heads)} heads of size {head_dim} "
                    f"recorded in config.{RECORD_KEY}"
                )
            blocks.append(
                Block(
                    name=name,
                    kind=family.kind(name),
                    layer=layer_index(name),
                    heads=heads,
                    head_dim=head_dim,
                    offset=offset,
                    q=f"{name}.{layout.q}" if name else layout.q,
                    k=f"{name}.{layout.k}" if name else layout.k,
                    v=f"{name}.{layout.v}" if name else layout.v,
                    o=o_name,
                    group_size=geometry.heads // geometry.kv_heads if layout.groups_attr else 1,
                    fused=layout.fused,
                )
            )
            offset += len(heads)
        return cls(blocks)

    @classmethod
    def from_config(cls, config, auto_class=None, dense: bool = False) -> HeadSpace:
        """The HeadSpace of the model `config` describes, without loading or allocating weights.

        The model is built on the meta device (`auto_class` when given, so block names match the
        task's model, else the class in `config.architectures`); the heads a pruned model kept are
        read from the record in the config, unless `dense`, which gives the space before any
        pruning. Validation counts heads this way before anything is downloaded or loaded.
        """
        from dataclasses import replace

        from prune_cli.arch import build_model

        with torch.device("meta"):
            model = build_model(config, auto_class)
        space = cls.from_model(model, dense=True)
        if dense:
            return space
        record, blocks, offset = read_record(model), [], 0
        for block in space.blocks:
            heads = tuple(record.get(block.name, block.heads))
            blocks.append(replace(block, heads=heads, offset=offset))
            offset += len(heads)
        return cls(blocks)

    # ---- flat index ----------------------------------------------------
    @property
    def total(self) -> int:
        return sum(b.num_heads for b in self.blocks)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-block views of a [H] tensor (or slices of a list)."""
        if len(flat) != self.total:
            raise ValueError(f"expected {self.total} values (one per head), got {len(flat)}")
        return [flat[b.offset : b.offset + b.num_heads] for b in self.blocks]

    def nested(self, flat) -> list[list]:
        """Per-block python lists, e.g. the `mask` field of heads.json."""
        return [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in self.split(flat)]

    def scope_mask(self, scope: str) -> torch.Tensor:
        """bool [H]: the heads of blocks of this kind ('all' = every head)."""
        if scope not in SCOPES:
            raise ConfigError("heads_scope", scope, f"one of {', '.join(SCOPES)}")
        return torch.tensor(
            [scope == "all" or b.kind == scope for b in self.blocks for _ in b.heads], dtype=torch.bool
        ).reshape(self.total)

    def positions(self, current: HeadSpace) -> list[list[int]]:
        """Per block of `current` (this model after surgery, or this very space), the flat
        indices in THIS space of the heads it still has: how a dense mask, gate vector or score
        vector is read by a model that already lost heads."""
        by_name = {b.name: b for b in self.blocks}
        out = []
        for block in current.blocks:
            ref = by_name.get(block.name)
            missing = [h for h in block.heads if ref is None or h not in ref.heads]
            if missing:
                raise ValueError(f"{block.name}: heads {missing} are not in this HeadSpace")
            out.append([ref.offset + ref.heads.index(h) for h in block.heads])
        return out

    def kept(self, current: HeadSpace) -> torch.Tensor:
        """bool [self.total]: which of this (dense) space's heads `current` still has."""
        mask = torch.zeros(self.total, dtype=torch.bool)
        mask[[i for block in self.positions(current) for i in block]] = True
        return mask

    def describe(self) -> list[dict]:
        """[{name, kind, layer, heads}] with ORIGINAL head ids: the block list of heads.json
        (+ `kv_heads`, the key/value heads left, for grouped-query attention)."""
        return [{"name": b.name, "kind": b.kind, "layer": b.layer, "heads": list(b.heads),
                 **({"kv_heads": list(b.groups())} if b.group_size > 1 else {})} for b in self.blocks]

    def kinds(self) -> dict[str, int]:
        """Heads per kind, e.g. {'encoder': 24, 'decoder': 24, 'cross': 24}."""
        counts: dict[str, int] = {}
        for b in self.blocks:
            counts[b.kind] = counts.get(b.kind, 0) + b.num_heads
        return counts

    def __len__(self) -> int:
        return self.total

    def __eq__(self, other) -> bool:
        return isinstance(other, HeadSpace) and self.blocks == other.blocks

    def __repr__(self) -> str:
        return f"HeadSpace({len(self.blocks)} blocks, {self.total} heads, {self.kinds()})"
