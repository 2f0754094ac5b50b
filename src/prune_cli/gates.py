"""Gates: one multiplier per head, applied where a head's context enters the output projection.

transformers 5 dropped `head_mask`, so the seam we use is a forward pre-hook on each block's
output projection: its input is the concatenation of the heads' context vectors
(`[..., heads * head_dim]`), and scaling head h's slice by `gates[h]` is exactly what the old
`head_mask` did. The hook works the same under eager, sdpa and flash attention (it sits after the
attention kernel), needs no registration with `AttentionInterface` / `AttentionMaskInterface`,
and never touches the padding mask.

The gate vector may be indexed by the DENSE model's heads while the model itself has already
lost some (a pruned export pruned again, a resumed run): each block then reads the entries of
the heads it still has, and the entries of removed heads are simply unused (their gradient is 0).

When no gate values are set (`set(None)`, the default) the hook returns at once, so an installed
but idle `Gates` costs one Python call per block. Values may carry gradients: learners (DSP,
Voita, STE) and Michel's importance both differentiate the loss with respect to them.
"""

from __future__ import annotations

from typing import Self

import torch
from torch import nn

from prune_cli.heads import HeadSpace


class Gates:
    """Install with `with Gates(model, space) as gates:` (or `.remove()` when done)."""

    def __init__(self, model: nn.Module, space: HeadSpace | None = None):
        """`space`: the index of the gate values (default: the model as it is now); the DENSE space
        of a model that lost heads works too."""
        self.model = model
        current = HeadSpace.from_model(model)
        self.space = space or current
        # per block: a slice of the gate vector (its heads are contiguous there, always so when
        # `space` is the model's own) or an index tensor, kept on the gates' device
        self._index = [_reader(pos) for pos in self.space.positions(current)]
        self._values: torch.Tensor | None = None
        self._slices: list[torch.Tensor | None] = [None] * len(current.blocks)
        modules = dict(model.named_modules())
        self._handles = []
        for i, block in enumerate(current.blocks):
            o_proj = modules[block.o]
            width = block.num_heads * block.head_dim
            if o_proj.in_features != width:
                raise ValueError(
                    f"{block.o} takes {o_proj.in_features} features but the HeadSpace gives {block.name} "
                    f"{block.num_heads} heads of {block.head_dim}"
                )
            if block.num_heads:
                self._handles.append(o_proj.register_forward_pre_hook(self._hook(i, block.num_heads, block.head_dim)))

    def _hook(self, index: int, num_heads: int, head_dim: int):
        def scale(module, args):
            gate = self._slices[index]
            if gate is None:
                return None
            x = args[0]
            shaped = x.unflatten(-1, (num_heads, head_dim)) * gate.to(x.dtype).unsqueeze(-1)
            return (shaped.flatten(-2), *args[1:])

        return scale

    @property
    def values(self) -> torch.Tensor:
        """The current gate values [H] (ones when none are set)."""
        if self._values is None:
            return torch.ones(self.space.total)
        return self._values

    def set(self, values: torch.Tensor | None) -> None:
        """Gate values [H] for the following forward passes; None opens every gate (no cost)."""
        if values is None:
            self._values = None
            self._slices = [None] * len(self._index)
            return
        if values.shape != (self.space.total,):
            raise ValueError(f"gate values must have shape ({self.space.total},), got {tuple(values.shape)}")
        device = _device_of(self.model)
        if values.device != device:
            values = values.to(device)
        self._values = values
        if any(isinstance(ix, torch.Tensor) and ix.device != values.device for ix in self._index):
            self._index = [ix if isinstance(ix, slice) else ix.to(values.device) for ix in self._index]
        self._slices = [values[ix] for ix in self._index]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._values = None
        self._slices = [None] * len(self._index)

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
