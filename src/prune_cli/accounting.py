"""Compute accounting: what each stage of a run costs, so methods are compared at equal budgets.

Counted per stage (metrics.json `stages[i].compute`, totals in `compute`): optimizer steps and
epochs of training, training examples seen, and forward / backward passes with the examples
they carried -- scoring passes (Michel, Taylor, SMP's maps), evaluation and the distillation
teacher's passes included. Forward passes are counted by a hook on each watched model's base
model (every head class and SMP's encoder-only passes go through it); backward passes by the
code that runs them (the trainer, the Taylor scorers, SMP's meta-training), since autograd
offers no hook that sees `torch.autograd.grad` and `.backward()` alike.
"""

from __future__ import annotations

from collections import Counter

import torch

FIELDS = ("optimizer_steps", "epochs", "examples", "forward_passes", "forward_examples", "backward_passes",
          "backward_examples")


class Meter:
    def __init__(self):
        self.counts: Counter = Counter()
        self._handles: list = []

    def reset(self) -> None:
        self.counts = Counter()

    def watch(self, model: torch.nn.Module) -> None:
        """Count the forward passes of `model` (until `unwatch`)."""
        base = getattr(model, "base_model", model)
        self._handles.append(base.register_forward_pre_hook(self._forward, with_kwargs=True))

    def unwatch(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward(self, module, args, kwargs) -> None:
        self.counts["forward_passes"] += 1
        self.counts["forward_examples"] += batch_examples((*args, *kwargs.values()))

    def backward(self, examples: int) -> None:
        self.counts["backward_passes"] += 1
        self.counts["backward_examples"] += int(examples)

    def add(self, **values) -> None:
        self.counts.update(values)

    def snapshot(self) -> dict:
        out = {k: self.counts.get(k, 0) for k in FIELDS}
        out["epochs"] = round(float(out["epochs"]), 4)
        return out


def batch_examples(values) -> int:
    """Rows of the first tensor among `values` (a batch's values, a call's arguments), else 0."""
    for value in values:
        if torch.is_tensor(value) and value.dim() >= 1:
            return int(value.shape[0])
    return 0


def across_processes(snapshot: dict) -> dict:
    """A stage's counts over all processes of a multi-process run: examples and passes add up;
    optimizer steps and epochs are the same on every process (one global step each)."""
    from prune_cli import distributed

    if distributed.world_size() <= 1:
        return snapshot
    parts = distributed.gather(snapshot)
    return {k: (v if k in ("optimizer_steps", "epochs") else sum(p[k] for p in parts)) for k, v in snapshot.items()}


def since(before: dict) -> dict:
    """What the meter counted since `snapshot()` gave `before` (over all processes): the cost of
    one piece of a stage, stored with a cache entry so that a run which reuses it can say what it
    received."""
    now = METER.snapshot()
    return across_processes({k: round(now[k] - before.get(k, 0), 4) if k == "epochs" else now[k] - before.get(k, 0)
                             for k in FIELDS})


def total(stages: list[dict], key: str = "compute") -> dict:
    """The run's sum over its stages: `compute` counts what this run computed (a cache hit:
    nothing), `cached_compute` what its cache hits cost when they were computed."""
    out = dict.fromkeys(FIELDS, 0)
    for stage in stages:
        for k, v in (stage.get(key) or {}).items():
            out[k] = out.get(k, 0) + v
    out["epochs"] = round(float(out["epochs"]), 4)
    return out


#: the process's meter (the pipeline resets it at every stage)
METER = Meter()
