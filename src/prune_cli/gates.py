"""Gates: one multiplier per head, applied where a head's context enters the output projection.

transformers 5 dropped `head_mask`, so the seam we use is a forward pre-hook on each block's
output projection: its input is the concatenation of the heads' context vectors
(`[..., heads * head_dim]`), and scaling head h's slice by `gates[h]` is exactly what the old
`head_mask` did. The hook works the same under eager, sdpa and flash attention (it sits after the
attention kernel), needs no registration with `AttentionInterface` / `AttentionMaskInterface`,
and never touches the padding mask.

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
        self.model = model
        self.space = space or HeadSpace.from_model(model)
        self._values: torch.Tensor | None = None
        self._slices: list[torch.Tensor | None] = [None] * len(self.space.blocks)
        modules = dict(model.named_modules())
        self._handles = []
        for i, block in enumerate(self.space.blocks):
            o_proj = modules[block.o]
            width = block.num_heads * block.head_dim
            if o_proj.in_features != width:
                raise ValueError(
                    f"{block.o} takes {o_proj.in_features} features but the HeadSpace gives {block.name} "
                    f"{block.num_heads} heads of {block.head_dim}: build the HeadSpace from this model"
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
            self._slices = [None] * len(self.space.blocks)
            return
        if values.shape != (self.space.total,):
            raise ValueError(f"gate values must have shape ({self.space.total},), got {tuple(values.shape)}")
        device = _device_of(self.model)
        if values.device != device:
            values = values.to(device)
        self._values = values
        self._slices = list(self.space.split(values))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.set(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
