"""Gates: one multiplier per unit -- head, key/value group, query/key dimension, value/output
dimension, FFN neuron.

transformers 5 dropped `head_mask`, so the seams are hooks on the projections: a forward pre-hook
on each block's output projection scales its input (the heads' context vectors, one feature per
value dimension) by the head gate and the value/output gate of every feature, which is exactly
what the old `head_mask` did for heads; a forward hook on the query projection scales each
query/key dimension (a zero query dimension removes that dimension's term from every score, as
deleting the row of W_q and of W_k does); a pre-hook on the FFN's output projection scales each
neuron. A key/value group's gate multiplies the head gates of every query head reading it (what
removing the group does: its query heads go with it). The hooks work the same under eager, sdpa and flash attention (none is inside the
attention kernel) and never touch the padding mask. On a fused q/k/v projection (GPT-2, Phi-3...)
the query hook scales only its query features (`UnitSpace.qkv_rows`), the key/value ones by 1.

|dL/dgate| at gate 1 is the first-order (Taylor) importance of the unit, and equals
|sum(grad * W)| over the unit's slice of the gated matrix (W_o column, W_q row + bias, W2 column):
GRAIN's score (tests/test_units.py checks the identity).

Gate vectors are indexed by the DENSE model's units (the `UnitSpace`) while the model itself may
have lost some (a pruned export pruned again, a resumed run): each block reads the entries of the
units it still has; entries of removed units are unused (their gradient is 0).

When no gate values are set (`set(None)`, the default) the output-projection hook returns at once
and the others are not installed, so an idle `Gates` costs one Python call per block. Values may
carry gradients: learners (DSP, Voita, STE) and the importance scorers differentiate the loss with
respect to them.
"""

from __future__ import annotations

from typing import Self

import torch
from torch import nn

from prune_cli.arch.projections import in_features, out_features, weight
from prune_cli.heads import HeadSpace
from prune_cli.units import KINDS, UnitSpace


class Gates:
    """Install with `with Gates(model, space) as gates:` (or `.remove()` when done)."""

    def __init__(self, model: nn.Module, space: HeadSpace | None = None):
        """`space`: the index of the head gate values (default: the model's heads as they are now);
        a `UnitSpace` (the pipeline's: the dense index of every kind) also indexes the dimension
        and neuron gates of `set_units`."""
        self.model = model
        units = space if isinstance(space, UnitSpace) else UnitSpace.from_model(model)
        current = units.current_heads()
        self.units = units
        self.space = space or current
        self._modules = dict(model.named_modules())
        head_pos = self.space.positions(current)
        self._blocks = []  # per non-empty block: how it reads each gate vector
        for i, block in enumerate(units.blocks):
            layout = units.block_layout(i)
            if not layout:
                continue
            o_proj = self._modules[block.o]
            base, d = units.dim_offsets[i], block.head_dim
            vo = [base + h * d + j for h, _, vd in layout for j in vd]
            if in_features(o_proj) != len(vo):
                raise ValueError(f"{block.o} takes {in_features(o_proj)} features but the UnitSpace gives "
                                 f"{block.name} {len(vo)} value dimensions")
            # a fused q/k/v projection: the query features are some of its outputs
            q_rows = units.qkv_rows(i)[0] if block.fused else None
            pos = head_pos[i]
            self._blocks.append({
                "o": block.o, "q": block.q, "even": units.is_even(i), "heads": len(layout), "head_dim": d,
                "head": _reader(pos),  # one gate per head, in weight order
                "head_feature": torch.tensor([p for p, (_, _, vd) in zip(pos, layout) for _ in vd], dtype=torch.long),
                "vo": torch.tensor(vo, dtype=torch.long),
                "qk": torch.tensor([base + h * d + j for h, qd, _ in layout for j in qd], dtype=torch.long),
                "q_rows": None if q_rows is None else torch.tensor(q_rows, dtype=torch.long),
                "q_width": out_features(self._modules[block.q]),
            })
        self._ffns = [{"out": f.output, "ffn": torch.tensor([f.offset + n for n in units.ffn_kept(j)], dtype=torch.long)}
                      for j, f in enumerate(units.ffns) if units.ffn_kept(j)]
        self._values: dict[str, torch.Tensor] = {}
        self._o_scale: list = [None] * len(self._blocks)  # what each hook multiplies by (None = nothing)
        self._q_scale: list = [None] * len(self._blocks)
        self._ffn_scale: list = [None] * len(self._ffns)
        self._handles = [self._modules[b["o"]].register_forward_pre_hook(self._o_hook(n))
                         for n, b in enumerate(self._blocks)]
        self._q_hooked = self._ffn_hooked = False
        self._group_of_head = None

    # ---- hooks: each returns at once while its gates are unset ------------
    def _o_hook(self, n: int):
        block = self._blocks[n]

        def scale(module, args):
            factor = self._o_scale[n]
            if factor is None:
                return None
            x = args[0]
            if factor.dim() == 2:  # one gate per head of a block of whole heads
                shaped = x.unflatten(-1, (block["heads"], block["head_dim"])) * factor.to(x.dtype)
                return (shaped.flatten(-2), *args[1:])
            return (x * factor.to(x.dtype), *args[1:])

        return scale

    def _q_hook(self, n: int):
        def scale(module, args, output):
            factor = self._q_scale[n]
            return None if factor is None else output * factor.to(output.dtype)

        return scale

    def _ffn_hook(self, n: int):
        def scale(module, args):
            factor = self._ffn_scale[n]
            return None if factor is None else (args[0] * factor.to(args[0].dtype), *args[1:])

        return scale

    # ---- values ------------------------------------------------------------
    @property
    def values(self) -> torch.Tensor:
        """The current head gate values [H] (ones when none are set)."""
        return self._values.get("head", torch.ones(self.space.total))

    def current(self) -> dict[str, torch.Tensor] | None:
        """The gate values set now ({kind: tensor}; None when every gate is open)."""
        return dict(self._values) or None

    def set(self, values: torch.Tensor | None) -> None:
        """Head gate values [H] for the following forward passes; None opens every gate (no cost)."""
        self.set_units(None if values is None else {"head": values})

    def set_units(self, values: dict[str, torch.Tensor] | None) -> None:
        """Gate values per kind ({"head": [H], "qk": [...], "vo": [...], "ffn": [...]}, over the
        dense index of the UnitSpace; kinds left out are open); None opens every gate."""
        values = dict(values or {})
        for kind, v in values.items():
            if kind not in KINDS:
                raise ValueError(f"{kind!r} is not a unit kind (one of {', '.join(KINDS)})")
            size = self.space.total if kind == "head" else self.units.size(kind)
            if v.shape != (size,):
                raise ValueError(f"{kind} gate values must have shape ({size},), got {tuple(v.shape)}")
        device = _device_of(self.model)
        values = {k: v if v.device == device else v.to(device) for k, v in values.items()}
        self._values = values
        if "kv" in values:  # a group's gate scales every query head reading it (gradients reach the group)
            if self.space.total != self.units.total:
                raise ValueError("kv gates need the dense index: Gates(model, UnitSpace.from_model(model))")
            if self._group_of_head is None or self._group_of_head.device != device:
                self._group_of_head = self.units.group_of_head().to(device)
            by_group = values["kv"][self._group_of_head]
            values = {**values, "head": by_group if "head" not in values else values["head"] * by_group}
        if "qk" in values and not self._q_hooked:
            self._handles += [self._modules[b["q"]].register_forward_hook(self._q_hook(n))
                              for n, b in enumerate(self._blocks)]
            self._q_hooked = True
        if "ffn" in values and not self._ffn_hooked:
            self._handles += [self._modules[f["out"]].register_forward_pre_hook(self._ffn_hook(n))
                              for n, f in enumerate(self._ffns)]
            self._ffn_hooked = True
        head, vo, qk, ffn = (values.get(k) for k in ("head", "vo", "qk", "ffn"))
        for n, b in enumerate(self._blocks):
            for key in ("head", "head_feature", "vo", "qk", "q_rows"):
                if isinstance(b[key], torch.Tensor) and b[key].device != device:
                    b[key] = b[key].to(device)
            factor = None
            if head is not None and vo is None and b["even"]:
                factor = head[b["head"]].unsqueeze(-1)
            elif head is not None or vo is not None:
                factor = head[b["head_feature"]] if head is not None else None
                factor = vo[b["vo"]] if factor is None else (factor if vo is None else factor * vo[b["vo"]])
            self._o_scale[n] = factor
            q_factor = None if qk is None else qk[b["qk"]]
            if q_factor is not None and b["q_rows"] is not None:  # ones on the key/value features
                q_factor = torch.ones(b["q_width"], dtype=q_factor.dtype, device=device).index_copy(
                    0, b["q_rows"], q_factor)
            self._q_scale[n] = q_factor
        for n, f in enumerate(self._ffns):
            if f["ffn"].device != device:
                f["ffn"] = f["ffn"].to(device)
            self._ffn_scale[n] = None if ffn is None else ffn[f["ffn"]]

    @torch.no_grad()
    def fold(self, values: torch.Tensor) -> None:
        """Bake head gate values [H] into the weights: each head's columns of its block's output
        projection are multiplied by its gate, so the model computes what `set(values)` computes,
        without hooks (Voita et al.'s fractional test-time gates in an exported model)."""
        if values.shape != (self.space.total,):
            raise ValueError(f"head gate values must have shape ({self.space.total},), got {tuple(values.shape)}")
        for b in self._blocks:
            w = weight(self._modules[b["o"]])  # [out, in]: a head's features are columns
            factor = values.to(w.device, torch.float64)[b["head_feature"].to(w.device)]
            w.copy_((w.double() * factor).to(w.dtype))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._values = {}
        self._o_scale = [None] * len(self._blocks)
        self._q_scale = [None] * len(self._blocks)
        self._ffn_scale = [None] * len(self._ffns)
        self._q_hooked = self._ffn_hooked = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _reader(pos: list[int]) -> slice | torch.Tensor:
    """How one block reads its gates from the vector: a view when its positions are a run."""
    start = pos[0] if pos else 0
    if pos == list(range(start, start + len(pos))):
        return slice(start, start + len(pos))
    return torch.tensor(pos, dtype=torch.long)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
