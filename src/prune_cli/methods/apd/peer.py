"""Peer distillation (APD, Li et al., IJCAI 2023; `distill=peer`): the heads a layer keeps learn what
its removed heads did.

For every attention block that has lost heads -- physically (a scorer pruned them) or by gate (a
learner is fading them out) -- the term is the mean squared error, over real tokens, between

* the dense teacher's block output: its output projection over ALL its heads, and
* the student's block output with ONLY the heads it keeps (removed heads' gates at exactly 0),

both computed on the TEACHER's input to that block. Reading the teacher's input is what makes the
distillation *peer* distillation: the gradient of a block's term reaches that block's kept heads
and its output projection and nothing else, so no earlier layer is pulled to make up for the loss;
the peers are. A block that lost no head adds nothing: the loss is exactly 0 when nothing is pruned.

The student side is a second forward pass of the student in which every block's input states are
replaced by the teacher's (forward pre-hooks on the block; "input states" = the 3-D float inputs of
the model's width: the hidden states, and for cross-attention the encoder states) and its output
projection's output is recorded (a forward hook); the pass's logits are discarded. Module call
conventions are transformers' internals: tests/test_peer.py pins them (a change fails loudly).

It lives with APD because it is half of that method, but it is a `distill=` term that any method's
training may add (`prune_cli.distill` imports it when `distill=peer`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from prune_cli.arch.projections import in_features
from prune_cli.heads import HeadSpace


def _states(args: tuple, kwargs: dict, width: int):
    """Keys (position or name) of a block call's input states: 3-D float tensors of the model width."""
    def is_state(t):
        return torch.is_tensor(t) and t.is_floating_point() and t.dim() == 3 and t.shape[-1] == width

    return [i for i, a in enumerate(args) if is_state(a)] + [k for k, v in kwargs.items() if is_state(v)]


@contextlib.contextmanager
def tap(model: nn.Module, blocks: dict[str, tuple[str, int]], inputs: dict | None = None):
    """Record each block's input states and output-projection output while the context is open.

    `blocks`: {block name: (output projection name, model width)}. With `inputs` (what a recording
    tap of another model gave), each block's input states are REPLACED by those instead.
    Yields {"inputs": {block: {key: tensor}}, "outputs": {block: tensor}}.
    """
    modules = dict(model.named_modules())
    seen: dict = {"inputs": {}, "outputs": {}}
    handles = []

    def pre(name, width):
        def hook(module, args, kwargs):
            keys = _states(args, kwargs, width)
            if inputs is None:
                seen["inputs"][name] = {k: (args[k] if isinstance(k, int) else kwargs[k]) for k in keys}
                return None
            given = inputs.get(name)
            if not given:
                return None
            args = list(args)
            for k in keys:
                if k in given:
                    if isinstance(k, int):
                        args[k] = given[k]
                    else:
                        kwargs[k] = given[k]
            return tuple(args), kwargs

        return hook

    def post(name):
        def hook(module, args, output):
            seen["outputs"][name] = output

        return hook

    try:
        for name, (o_name, width) in blocks.items():
            handles.append(modules[name].register_forward_pre_hook(pre(name, width), with_kwargs=True))
            handles.append(modules[o_name].register_forward_hook(post(name)))
        yield seen
    finally:
        for h in handles:
            h.remove()


def block_widths(model: nn.Module, space: HeadSpace) -> dict[str, tuple[str, int]]:
    """{block name: (output projection name, input width)} of every attention block of `model`."""
    modules = dict(model.named_modules())
    return {b.name: (b.o, in_features(modules[b.q])) for b in space.blocks}


class PeerLoss:
    """The peer term of one student against one teacher (both fixed for a training stage).

    `space`: the pipeline's UnitSpace of the student (dense index: which heads it still has).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, space):
        teacher_space = HeadSpace.from_model(teacher)
        self.teacher_blocks = {b.name: b.num_heads for b in teacher_space.blocks}
        self.space = space
        self.dense = {b.name: (b.offset, b.num_heads) for b in space.blocks}
        self.blocks = {n: v for n, v in block_widths(student, space.current_heads()).items()
                       if n in self.teacher_blocks}
        self.teacher_names = {n: v for n, v in block_widths(teacher, teacher_space).items()
                              if n in self.blocks}

    def active(self, hard: torch.Tensor | None) -> dict[str, int]:
        """{block: heads removed from it} for the blocks that lost any (physically or by `hard`,
        the learner's 0/1 head gates over the dense index)."""
        kept = self.space.kept("head")
        if hard is not None:
            kept = kept & (hard.detach().cpu() > 0)
        out = {}
        for name, (offset, n) in self.dense.items():
            lost = self.teacher_blocks.get(name, 0) - int(kept[offset:offset + n].sum())
            if lost > 0 and name in self.blocks:
                out[name] = lost
        return out

    def teacher_taps(self, teacher: nn.Module):
        """The context to run the teacher's forward pass in: records what the peer term needs."""
        return tap(teacher, self.teacher_names)

    def __call__(self, student: nn.Module, batch: dict, recorded: dict, gates=None,
                 hard: torch.Tensor | None = None) -> torch.Tensor:
        """The peer term: `recorded` is the teacher tap's record of this batch."""
        active = self.active(hard)
        device = next(iter(recorded["outputs"].values())).device if recorded["outputs"] else None
        if not active:
            return torch.zeros((), device=device)
        saved = gates.current() if gates is not None else None
        if gates is not None and hard is not None:
            gates.set_units({**(saved or {}), "head": hard.to(torch.float32)})
        try:
            inputs = {n: recorded["inputs"][n] for n in active if n in recorded["inputs"]}
            with tap(student, {n: self.blocks[n] for n in active}, inputs=inputs) as seen:
                student(**batch)
        finally:
            if gates is not None and hard is not None:
                gates.set_units(saved)
        mask = batch.get("attention_mask")
        total, terms = 0.0, 0
        for name in active:
            if name not in seen["outputs"] or name not in recorded["outputs"]:
                continue  # a block left with no head at all is skipped by the model: nothing to train
            s, t = seen["outputs"][name].float(), recorded["outputs"][name].float()
            err = (s - t).pow(2).mean(-1)  # [b, n]
            if mask is not None and err.shape == mask.shape:
                w = mask.to(err.dtype)
                err = (err * w).sum() / w.sum().clamp_min(1)
            else:
                err = err.mean()
            total, terms = total + err, terms + 1
        if not terms:
            return torch.zeros((), device=device)
        return total / terms
