"""What an architecture adapter declares, and the one walk that reads a model through it.

prune-cli prunes attention heads (and the dimensions and FFN neurons inside them) of any model whose
family is declared here. A family says how its attention modules name their projections and head
counts, where its FFNs are, which kind each attention block is (encoder self-attention, decoder
self-attention, cross-attention), what surgery may do to it, and where its config keeps the widths.
Everything else in prune-cli (HeadSpace, UnitSpace, surgery, FLOPs, distillation) asks the family
instead of guessing from module names, and a block the family cannot match is an error naming the
module, never a silent skip: a new release that renames a projection must fail loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn

from prune_cli.arch.projections import QKV_ORDERS, is_projection

KINDS = ("encoder", "decoder", "cross")


@dataclass(frozen=True)
class AttentionLayout:
    """How one family of attention modules names its parts.

    `o` is relative to the attention module; a leading ".." climbs to its parent (BERT keeps the
    output projection in the sibling `output` module). `count_attrs` / `width_attrs` are the module
    attributes holding the head count and heads*head_dim, which surgery keeps up to date;
    `kv_count_attrs` hold the key/value head count where the forward reads it (Phi-3 slices its
    fused projection by it), which surgery sets to the key/value heads left.
    `groups_attr` names the attribute holding the query heads per key/value head (Llama's
    `num_key_value_groups`, which the stock attention functions read to repeat keys and values):
    a family that sets it is grouped-query attention, and its query head h of a dense block
    belongs to key/value group h // (heads / kv_heads) (Ainslie et al. 2023, "GQA").

    `fused` (one of `projections.QKV_ORDERS`) declares q, k and v ONE projection (then q, k and v
    name the same module) and how its output features hold the parts: "concat" ([q | k | v]) or
    "per_head" ([q_h | k_h | v_h] per head); `projections.qkv_positions` is the one reading of it.
    `config_count_attrs` are attributes of the MODEL config that the block's forward reads as its
    own query head count (Phi-3 slices its fused output at `config.num_attention_heads * head_dim`):
    surgery gives such a block a view of the config with its own count (`uneven.BlockConfig`).
    `rotary`: queries and keys are rotated by a table of the dense head size (Su et al. 2021,
    "RoFormer"), so the stand-in head of an emptied block has that size (`empty.EmptyAttention`).
    """

    q: str
    k: str
    v: str
    o: str
    head_dim_attr: str
    count_attrs: tuple[str, ...]
    width_attrs: tuple[str, ...] = ()
    kv_count_attrs: tuple[str, ...] = ()
    groups_attr: str | None = None
    fused: str | None = None
    config_count_attrs: tuple[str, ...] = ()
    rotary: bool = False

    def __post_init__(self):
        if self.fused is not None and (self.fused not in QKV_ORDERS or not self.q == self.k == self.v):
            raise ValueError(f"a fused attention layout names one projection for q, k and v and one of "
                             f"{', '.join(QKV_ORDERS)}, not {self.q}/{self.k}/{self.v} {self.fused!r}")

    def matches(self, module: nn.Module) -> bool:
        return all(is_projection(getattr(module, a, None)) for a in (self.q, self.k, self.v)) and isinstance(
            getattr(module, self.head_dim_attr, None), int)


@dataclass(frozen=True)
class FFNLayout:
    inputs: tuple[str, ...]  # projections whose ROWS are the neurons (T5's gated FFN has two)
    output: str  # the projection whose COLUMNS are the neurons
    #: projections stacked in each input's rows (Phi-3's gate_up_proj = [gate | up]: 2): neuron n
    #: of width w is row c * w + n of every chunk c (`projections.chunk_rows`)
    chunks: int = 1


@dataclass(frozen=True)
class Geometry:
    """The widths a family's config declares (read without building the model)."""

    hidden: int
    layers: int  # per stack (the encoder's for an encoder-decoder)
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int | None


@dataclass(frozen=True)
class Family:
    """One architecture family: everything prune-cli needs to know to prune it.

    `structure` decides the kind of every attention block: "encoder" (every block is encoder
    self-attention), "decoder" (decoder-only: every block is causal self-attention) or "seq2seq"
    (blocks under `decoder_names` are decoder self-attention, those named in `cross_names`
    cross-attention, the rest encoder). `dims`: whether a head may lose query/key or value
    dimensions (the attention views its projections with -1 heads, which uneven heads need:
    prune_cli.arch.runtime); `surgery`: whether heads can be removed physically at all.
    """

    name: str
    model_types: tuple[str, ...]
    structure: str
    attention: tuple[AttentionLayout, ...]
    ffn: tuple[FFNLayout, ...]
    dims: bool = True
    #: why heads of this family cannot lose single dimensions (for the one-line refusal)
    no_dims: str = ""
    surgery: bool = True
    cross_names: frozenset[str] = frozenset()
    decoder_names: frozenset[str] = frozenset({"decoder"})
    #: config attributes, first present wins
    hidden_attrs: tuple[str, ...] = ("hidden_size", "d_model", "dim")
    layer_attrs: tuple[str, ...] = ("num_hidden_layers", "num_layers", "n_layers", "encoder_layers")
    head_attrs: tuple[str, ...] = ("num_attention_heads", "num_heads", "n_heads", "encoder_attention_heads")
    kv_head_attrs: tuple[str, ...] = ("num_key_value_heads",)
    head_dim_attrs: tuple[str, ...] = ("head_dim", "d_kv")
    ffn_attrs: tuple[str, ...] = ("intermediate_size", "hidden_dim", "d_ff", "ffn_dim", "encoder_ffn_dim")
    #: the attention-block counts a model of this config may hold (the whole model, or one stack
    #: for the head classes that keep one, e.g. T5EncoderModel); None: not checked
    expected_blocks: Callable | None = field(default=None, compare=False)
    #: config -> None, or (config attribute, value, what is allowed) for an option of this family
    #: that pruning cannot keep exact: `family_of` refuses such a model in one line
    unsupported: Callable | None = field(default=None, compare=False)

    # ---- blocks ---------------------------------------------------------
    def layout_of(self, module: nn.Module) -> AttentionLayout | None:
        """The layout `module` follows, or None if it is not an attention block of this family."""
        return next((layout for layout in self.attention if layout.matches(module)), None)

    def kind(self, name: str) -> str:
        if self.structure == "encoder":
            return "encoder"
        if self.structure == "decoder":
            return "decoder"
        parts = set(name.split("."))
        if parts & self.cross_names:
            return "cross"
        return "decoder" if parts & self.decoder_names else "encoder"

    def attention_blocks(self, model: nn.Module) -> Iterator[tuple[str, nn.Module, AttentionLayout, str]]:
        """(name, module, layout, output projection path) of every attention block, in forward
        order; a module that has the projections but no output projection where the layout says
        is an error naming it, as is a block count other than the config promises."""
        modules = dict(model.named_modules())
        found = []
        for name, module in modules.items():
            layout = self.layout_of(module)
            if layout is None:
                continue
            o_name = resolve(name, layout.o)
            if not is_projection(modules.get(o_name)):
                raise ValueError(  # a model that does not match its declaration
                    f"{type(model).__name__}.{name} ({type(module).__name__}): the {self.name} adapter "
                    f"expects its output projection at {o_name}; transformers may have renamed it")
            found.append((name, module, layout, o_name))
        if not found:
            raise ValueError(f"no attention blocks found in {type(model).__name__} (the {self.name} adapter knows "
                             f"{', '.join(f'{a.q}/{a.k}/{a.v}/{a.o}' for a in self.attention)})")
        expected = self.expected_blocks(model.config) if self.expected_blocks else None
        if expected is not None and len(found) not in expected:
            raise ValueError(f"{type(model).__name__}: the {self.name} adapter matched {len(found)} attention blocks "
                             f"where its config declares {' or '.join(map(str, expected))}: a module the adapter "
                             "does not know would be skipped")
        return iter(found)

    def ffns(self, model: nn.Module) -> list[tuple[str, FFNLayout]]:
        """(module name, layout) of every FFN of `model`, in forward order."""
        modules = dict(model.named_modules())
        found = []
        for name in modules:
            for layout in self.ffn:
                parts = [f"{name}.{p}" if name else p for p in (*layout.inputs, layout.output)]
                if all(is_projection(modules.get(p)) for p in parts):
                    found.append((name, layout))
                    break
        return found

    # ---- config ---------------------------------------------------------
    def geometry(self, config) -> Geometry:
        def first(attrs, default=None):
            return next((int(v) for a in attrs if isinstance(v := getattr(config, a, None), int)), default)

        hidden, heads = first(self.hidden_attrs), first(self.head_attrs)
        if hidden is None or heads is None:
            raise ValueError(f"{type(config).__name__}: the {self.name} adapter finds no width or head count")
        return Geometry(hidden=hidden, layers=first(self.layer_attrs, 0), heads=heads,
                        kv_heads=first(self.kv_head_attrs, heads), head_dim=first(self.head_dim_attrs, hidden // heads),
                        ffn=first(self.ffn_attrs))


def resolve(name: str, relative: str) -> str:
    """Dotted path of `relative` (which may start with '..') seen from module `name`."""
    parts = name.split(".") if name else []
    while relative.startswith(".."):
        parts = parts[:-1]
        relative = relative[2:].lstrip(".")
    return ".".join(parts + ([relative] if relative else []))


def layer_index(name: str) -> int:
    """The layer a module belongs to: the first number in its dotted path (0 if none)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return 0
