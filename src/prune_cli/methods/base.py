"""The one protocol every pruning method speaks.

Two kinds:

* **scorers** (random, michel, ...) rank heads: `score(ctx)` returns one number per head (higher =
  more important). The `prune` stage keeps the top-K, in one shot or over several rounds that the
  schedule dictates, re-scoring with the already-pruned heads gated off.
* **learners** (dsp, ste, voita, ...) own trainable parameters that produce the gate values during
  training. The trainer calls the hooks below and never needs to know which method it is running.

Everything is in the flat head index of `prune_cli.heads.HeadSpace` (0..H-1, encoder self,
decoder self and cross-attention heads together), so one global top-K covers every architecture.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from prune_cli import progress


@dataclass
class ScoreContext:
    """What a scorer may use. `batches` are TRAINING batches, never the evaluation split."""

    model: torch.nn.Module
    gates: Any  # prune_cli.gates.Gates installed on `model`
    batches: Callable[[], Iterable[dict]]  # a fresh pass over the training batches (on device)
    mask: torch.Tensor  # bool [H]: heads still kept (False = already pruned, gated to 0)
    accelerator: Any = None
    #: the kinds to score (`units=`): ("head",) = one score per head, as `score` returns a [H] tensor;
    #: otherwise `score` returns {kind: scores over the UnitSpace's dense index of that kind}
    units: tuple[str, ...] = ("head",)
    space: Any = None  # prune_cli.units.UnitSpace of `model` (dense index, what the model still has)
    masks: dict | None = None  # {kind: bool}: units still kept in this round (earlier rounds gated to 0)

    def gate_masks(self) -> dict[str, torch.Tensor]:
        """The 0/1 gate vector of each scored kind for this round (what is kept so far)."""
        if self.units == ("head",):
            return {"head": self.mask}
        return {k: (self.masks or {}).get(k, self.space.kept(k)) for k in self.units}


class Pruner:
    kind: str = "scorer"  # "none" | "scorer" | "learner"
    #: pipeline used when the user does not give `pipeline=`
    default_pipeline: tuple[str, ...] = ("finetune", "prune", "finetune", "evaluate", "export")
    #: set by the pipeline: the run folder and the validated task (SMP reads its pruner.pt and
    #: whether the task's inputs are sentence pairs from them)
    run_dir = None
    task = None
    # ---- what the training loop and the pipeline ask of a learner (declared here with the
    # defaults of a method that does none of it; the loop never probes with getattr) ----
    #: the method's own lr follows "constant" or the model's schedule ("model": the official DSP code)
    lr_schedule: str = "constant"
    #: the method's parameters are clipped with the model's gradients (official DSP code)
    clip_logits: bool = False
    #: dropout stays on while only the gates learn on a frozen model (official DSP pipelined setup)
    gate_dropout: bool = False
    #: the method reads the model's gradients during each step (GRAIN's running importance)
    observes_gradients: bool = False
    #: with distillation, the importance comes from its own backward pass (GRAIN's gradient separation)
    grad_sep: bool = False
    #: the method measures the model before training and may choose K itself (APD: `prepare`)
    prepares: bool = False

    def __init__(self, cfg: DictConfig, space, seed: int = 0):
        self.cfg = cfg
        self.space = space
        self.seed = seed

    def setup(self, keep: int, eligible: torch.Tensor | None = None, schedule: DictConfig | None = None) -> None:
        """Called by the pipeline before training a learner: the number of heads to keep (within
        `eligible`, the heads that heads_scope lets the method prune; the others stay open) and
        the run's `schedule` config (how the budget falls to K during training)."""
        self.keep = keep
        self.eligible = eligible
        self.schedule = schedule

    def check_run(self, cfg: DictConfig, stages: list[str], keep: int | None, in_scope: int) -> None:
        """Validation's last word on this method: raise ConfigError for what only the method
        knows is wrong (files it reads, budgets it cannot meet). Must not load a model."""

    # ---- scorers -------------------------------------------------------
    def score(self, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a scorer")

    def select(self, scores: torch.Tensor, k: int, eligible: torch.Tensor) -> torch.Tensor:
        """bool [H]: the `k` heads of `eligible` to keep given `scores` (default: the global
        top-K; SMP keeps the same number in every layer)."""
        return top_k_mask(scores, k, eligible)

    def score_pass(self, ctx: ScoreContext):
        """One pass over the training batches, at most `method.score_batches` of them."""
        limit = self.cfg.get("score_batches")
        batches = ctx.batches()
        batches = itertools.islice(batches, int(limit)) if limit else batches
        return progress.bar(batches, f"scoring ({self.cfg.get('name')})", int(limit) if limit else None)

    # ---- learners ------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters of the method itself (their own optimizer group)."""
        return []

    def lr(self) -> float | None:
        """Learning rate for `parameters()`; None = the trainer's."""
        return None

    def gate_values(self, step: int, total_steps: int, training: bool = True) -> torch.Tensor | None:
        """Gate values [H] for the next forward pass (None = all open). Called every step."""
        return None

    def hard_gates(self, step: int, total_steps: int) -> torch.Tensor | None:
        """0/1 head gates [H] of the heads this learner keeps now (None = all): the heads that
        `distill=peer` trains to do without. Default: the hard mask evaluations see."""
        values = self.gate_values(step, total_steps, training=False)
        return None if values is None or isinstance(values, dict) else (values > 0.5).float()

    def observed_finite(self) -> bool:
        """False when the gradients this learner read during the step are not all finite (the
        trainer then skips the step: no weight and no score changes)."""
        return True

    def discard_observed(self) -> None:
        """The trainer skipped this optimizer step (a non-finite gradient): forget what was read."""

    def to(self, device) -> Pruner:
        """Move the method's own tensors to the training device."""
        return self

    def sync_observed(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Several processes: make what this step's gradients told the method global (`reduce`
        averages a tensor over processes)."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called once per optimizer step, after it (GRAIN: running importance, shrinking masks)."""

    def prepare(self, ctx: ScoreContext, validate: Callable[[], float] | None = None) -> int | None:
        """`prepares` methods: measure the model before training; returns the K to keep (APD's
        lossless mode chooses it) or None to keep the budget given."""
        return None

    def final_scales(self) -> torch.Tensor | None:
        """Fractional values the kept heads keep after training (Voita's ending=gates), or None."""
        return None

    def report(self) -> dict:
        """Extra numbers for the stage's entry in metrics.json."""
        return {}

    def history(self) -> dict | None:
        """The mask trajectory written to mask_trajectory.json, or None (not recorded)."""
        return None

    def extra_loss(self) -> torch.Tensor | float:
        """A term added to the task loss (e.g. an L0 penalty); 0.0 if none."""
        return 0.0

    def final_mask(self, k: int) -> torch.Tensor:
        """bool [H] with exactly `k` True: the heads to keep when training ends."""
        raise NotImplementedError(f"{type(self).__name__} is not a learner")

    def scores(self) -> torch.Tensor | None:
        """The per-head numbers recorded in heads.json (logits, scores...)."""
        return None

    def log_stats(self) -> dict[str, float]:
        """Per-step numbers for the logger (temperature, expected open gates, entropy...)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def top_k_mask(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """bool mask with exactly k True at the k largest scores (ties broken by lower index).

    `eligible` (bool) restricts the choice; heads outside it are never kept... unless the caller
    keeps them separately (heads_scope keeps out-of-scope heads).
    """
    scores = scores.detach().double().flatten()
    if eligible is not None:
        scores = torch.where(eligible, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    order = torch.argsort(-scores, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def select_units(space, scores: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor], budget: int,
                 scope: str = "all"):
    """One global ranking over units of every kind; returns the UnitSpace that keeps the
    highest-scored candidates until the kept attention + FFN weights in `scope` reach `budget`.

    `space` is what is kept now; `candidates` ({kind: bool over the dense index}) the units up for
    pruning, all others stay. The result keeps AT LEAST `budget` weights and less than one unit
    more: a query/key dimension counts only once its head holds a value dimension (a head without
    values is removed, its query/key with it), and when the value dimension that revives a head
    brings back more query/key dimensions than the budget needs, the lowest-scored go again.
    """
    masks = space.masks()
    qk, vo, ffn = masks["qk"].clone(), masks["vo"].clone(), masks["ffn"].clone()
    head_of = space.head_of("qk")
    # grouped-query attention: a key/value group's rows count once while any query head reads it
    group_of, group_cost = space.group_of_head(), space.group_cost() * space.group_scope(scope)
    head_dims = {}
    whole = candidates.get("head")
    if "kv" in candidates:  # a group is pruned as all its query heads at once
        whole = candidates["kv"][group_of]
    if whole is not None:
        dims = whole[head_of]
        head_dims = {"qk": qk & dims, "vo": vo & dims}
        qk &= ~dims
        vo &= ~dims
    for kind, mask in (("qk", qk), ("vo", vo), ("ffn", ffn)):
        if kind in candidates:
            mask &= ~candidates[kind]
    sizes = {k: space.unit_sizes(k) * space.scope(k, scope) for k in ("qk", "vo", "ffn")}  # 0 out of scope
    if whole is not None:
        held = torch.zeros(space.total, dtype=torch.long)
        held.index_add_(0, head_of, head_dims["qk"].long() * sizes["qk"] + head_dims["vo"].long() * sizes["vo"])
        sizes["head"] = held
    alive = torch.zeros(space.total, dtype=torch.bool)
    alive[head_of[vo]] = True
    group_alive = torch.zeros(len(group_cost), dtype=torch.bool)
    group_alive[group_of[alive]] = True
    total = int(sizes["qk"][qk & alive[head_of]].sum() + sizes["vo"][vo].sum() + sizes["ffn"][ffn].sum()
                + group_cost[group_alive].sum())

    def revive(h: int) -> int:
        """A head comes back: the weights of its group's key/value rows if the group was gone."""
        alive[h] = True
        g = int(group_of[h])
        if group_alive[g]:
            return 0
        group_alive[g] = True
        return int(group_cost[g])

    order = sorted(((v, n, i, k) for n, k in enumerate(candidates)
                    for i, v in zip(candidates[k].nonzero().flatten().tolist(),
                                    scores[k].detach().double().cpu()[candidates[k]].tolist())),
                   key=lambda t: (-t[0], t[1], t[2]))
    pending: dict[int, list[tuple[float, int]]] = {}
    revived: list[tuple[float, int]] = []
    for score, _, i, kind in order:
        if total >= budget:
            break
        if kind in ("head", "kv"):
            heads = [i] if kind == "head" else (group_of == i).nonzero().flatten().tolist()
            for h in heads:
                mine = head_of == h
                if not bool((head_dims["vo"] & mine).any()):
                    continue  # a query head the model had already lost
                qk |= head_dims["qk"] & mine
                vo |= head_dims["vo"] & mine
                total += int(sizes["head"][h]) + revive(h)
        elif kind == "ffn":
            ffn[i] = True
            total += int(sizes["ffn"][i])
        elif kind == "qk":
            qk[i] = True
            h = int(head_of[i])
            if alive[h]:
                total += int(sizes["qk"][i])
            else:
                pending.setdefault(h, []).append((score, i))
        else:  # vo
            vo[i] = True
            total += int(sizes["vo"][i])
            h = int(head_of[i])
            if not alive[h]:
                total += revive(h)
                revived = pending.pop(h, [])
                total += sum(int(sizes["qk"][j]) for _, j in revived)
    for _, j in sorted(revived):  # lowest score first, while the budget still holds
        if total - int(sizes["qk"][j]) < budget:
            break
        qk[j] = False
        total -= int(sizes["qk"][j])
    return space.replace(qk=qk, vo=vo, ffn=ffn)  # query/key of heads never revived go in _normalize
