"""GRAIN, Yang et al. ACL 2023 (arXiv:2212.07634; official code airaria/GRAIN): gradient-based
intra-attention pruning.

A learner over units smaller than heads, pruning WHILE the model trains (with distillation from a
fine-tuned teacher, `distill=logits_hidden`, and the student starting from the pretrained model):

* importance of every unit = an exponential moving average (beta 0.998) of its first-order score
  |dL/dgate| = |sum(grad * W)| over its slice, gathered at EVERY optimizer step (with gradient
  accumulation: the gradient of the whole window, as one batch would give it);
* with `grad_sep` (GRAIN's default) that gradient is the one of the first loss terms (logit
  distillation, hard labels) only: the trainer backpropagates the hidden-state term afterwards;
* structure regularisation: a value/output unit's score update is multiplied by tanh(D / alpha),
  D = the fraction of its head's value dimensions still kept, so nearly empty heads empty out
  (alpha 0 turns it off);
* the density falls cubically: 1 until `p_start` (0.2) of training, then
  s(t) = s_f + (1 - s_f) (1 - (t - p_start) / (p_end - p_start))^3 until `p_end` (0.4), then s_f;
  at every step the kept weights exceed s(t), the units of every kind are ranked TOGETHER by their
  raw running score and the lowest go (`methods.base.select_units`: exact to one unit); masks only
  shrink, and a head that loses its last value dimension loses its query/key dimensions too.

Pruned units are gated to 0 while training goes on; the pipeline removes them physically at the
end. A pruned unit's score is frozen at its value when it went (the official code sets it to -inf;
either way it never competes again). A step whose gradients are not all finite changes no score
(the trainer skips it and counts it; the official code skips only the NaN batch's importance).

`method.importance=random` is the official code's random ablation (airaria/GRAIN,
FineISPruner.gather_IS with score_type=random): every step adds a fresh uniform draw per kept unit
to the EMA, under the same structure regularisation, which empties heads. `random_fixed` draws one
set of scores at the start and never updates them (no regularisation): a different experiment.

`method.schedule_rounding=official` reproduces the official schedule's integer steps: pruning at
steps int(p_start T) < t < int(p_end T) only, so the last density applied is
target + (1 - target) / (end - start)^3 above the target (0.027 at T = 96; 1.6e-12 at the paper's T);
`exact` (the default) reaches the target exactly, at p_end and at the end of training.
"""

from __future__ import annotations

import math

import torch

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Pruner, select_units


def density_at(progress: float, target: float, p_start: float, p_end: float) -> float:
    """GRAIN's cubic schedule: the density to keep at `progress` (0..1) through training."""
    if progress < p_start:
        return 1.0
    if progress >= p_end:
        return target
    return target + (1.0 - target) * (1.0 - (progress - p_start) / (p_end - p_start)) ** 3


class GRAIN(Pruner):
    kind = "learner"
    observes_gradients = True
    default_pipeline = ("teacher", "prune_joint", "evaluate", "export")

    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        self.beta = float(cfg.get("beta", 0.998))
        self.alpha = float(cfg.get("alpha", 0.3))
        self.p_start, self.p_end = float(cfg.get("p_start", 0.2)), float(cfg.get("p_end", 0.4))
        self.grad_sep = bool(cfg.get("grad_sep", True))
        self.importance = str(cfg.get("importance", "taylor"))
        if not 0 <= self.beta < 1:
            raise ConfigError("method.beta", self.beta, "an EMA factor in [0, 1), e.g. 0.998")
        if self.alpha < 0:
            raise ConfigError("method.alpha", self.alpha, "a number >= 0 (0 = no structure regularisation)")
        if not 0 <= self.p_start < self.p_end <= 1:
            raise ConfigError("method.p_start", self.p_start, f"0 <= p_start < p_end <= 1 (p_end={self.p_end})")
        rank = cfg.get("embed_rank")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise ConfigError("method.embed_rank", rank, "null (off) or a rank >= 1 below the embedding width (the paper: 192)")
        if self.importance not in ("taylor", "random", "random_fixed"):
            raise ConfigError("method.importance", self.importance, "taylor, random (the official ablation: a "
                              "fresh draw every step, regularised) or random_fixed (one draw, never updated)")
        self.rounding = str(cfg.get("schedule_rounding", "exact"))
        if self.rounding not in ("exact", "official"):
            raise ConfigError("method.schedule_rounding", self.rounding, "exact (the target density to one unit) "
                              "or official (airaria/GRAIN's integer schedule steps)")
        self.current = None

    # ---- set-up by the pipeline ------------------------------------------
    def setup_units(self, space, kinds: tuple[str, ...], density: float, scope: str = "all") -> None:
        """`space`: the model's UnitSpace now (dense index); prune `kinds` within `scope` down to
        `density` of the attention + FFN weights there."""
        self.current, self.kinds, self.scope, self.density = space, tuple(kinds), scope, float(density)
        self.dense_weights = space.weights(scope)[1]
        g = torch.Generator().manual_seed(self.seed)
        self.ema = {k: (torch.rand(space.size(k), generator=g, dtype=torch.float64)
                        if self.importance == "random_fixed" else torch.zeros(space.size(k), dtype=torch.float64))
                    for k in self.kinds}
        self._acc = {k: torch.zeros(space.size(k), dtype=torch.float64) for k in self.kinds}
        self._leaves: dict[str, torch.Tensor] = {}
        self._discarded = False
        self.steps_pruned = 0
        self.steps_skipped = 0

    def budget(self, step: int, total: int) -> int | None:
        """Kept weights allowed after `step` of `total` steps (ceil: kept >= the density); None =
        no pruning at this step (`schedule_rounding=official` outside its pruning steps)."""
        if self.rounding == "official":
            start, end = int(self.p_start * total), int(self.p_end * total)
            if not start < step < end:
                return None
            s = self.density + (1.0 - self.density) * (1.0 - (step - start) / (end - start)) ** 3
        else:
            s = density_at(step / max(total, 1), self.density, self.p_start, self.p_end)
        return math.ceil(round(s * self.dense_weights, 6))

    def final_budget(self, total: int) -> int:
        """The kept weights at the end: the target (to one unit), or with `schedule_rounding=official`
        what its last pruning step (end - 1) applied, when the schedule has one."""
        if self.rounding == "official":
            start, end = int(self.p_start * total), int(self.p_end * total)
            if end - 1 > start:
                return self.budget(end - 1, total)
        return math.ceil(round(self.density * self.dense_weights, 6))

    # ---- the trainer's hooks ----------------------------------------------
    def to(self, device) -> GRAIN:
        """Gate leaves (and the step's gradient sums) live on the model's device: no host copy per
        micro-batch; the sums come to the host once per optimizer step."""
        self.device = torch.device(device)
        return self

    def gate_values(self, step: int, total_steps: int, training: bool = True) -> dict[str, torch.Tensor]:
        device = getattr(self, "device", torch.device("cpu"))
        masks = {k: self.current.kept(k).to(device, torch.float32) for k in self.kinds}
        if training and self.importance == "taylor":  # the random ablations read no gradient
            masks = {k: v.requires_grad_(True) for k, v in masks.items()}
        self._leaves = masks
        return masks

    def hard_gates(self, step: int, total_steps: int) -> torch.Tensor:
        """The heads still present (gate_values would replace this step's gradient leaves)."""
        return self.current.kept("head").float()

    def observe_gradients(self) -> None:
        """Add this micro-batch's gate gradient to the step's sum (|.| is taken per step)."""
        for k, leaf in self._leaves.items():
            if leaf.grad is not None:
                if self._acc[k].device != leaf.grad.device:
                    self._acc[k] = self._acc[k].to(leaf.grad.device)
                self._acc[k] += leaf.grad.detach().double()
                leaf.grad = None

    def sync_observed(self, reduce) -> None:
        """Several processes: the step's gate gradient of the GLOBAL batch (`reduce` averages over
        processes, as DDP averages the weights' gradients), so every process ranks the same way."""
        for k in self._acc:
            self._acc[k] = reduce(self._acc[k])

    def observed_finite(self) -> bool:
        return all(bool(torch.isfinite(acc).all()) for acc in self._acc.values())

    def discard_observed(self) -> None:
        for acc in self._acc.values():
            acc.zero_()
        self._discarded = True

    def after_step(self, step: int, total_steps: int) -> None:
        self.total_steps = total_steps
        if self._discarded:  # a skipped step: no score moves (the schedule still applies)
            self._discarded = False
            self.steps_skipped += 1
        elif self.importance != "random_fixed":
            self._update_scores(step)
        budget = self.budget(step, total_steps)
        before = self.current.weights(self.scope)[0]
        if budget is not None and before > budget:
            self._prune_to(budget)
            self.steps_pruned += int(self.current.weights(self.scope)[0] < before)

    def _update_scores(self, step: int) -> None:
        """EMA of this step's update, for the units still kept (a pruned unit's score is frozen)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)  # resumes draw the same numbers
        share = self._value_share() if "vo" in self.kinds and self.alpha > 0 else None
        for k in self.kinds:
            kept = self.current.kept(k)
            if self.importance == "random":
                update = torch.rand(kept.shape, generator=g, dtype=torch.float64)
            else:
                update = self._acc[k].abs().cpu()  # one transfer per kind and optimizer step
                self._acc[k].zero_()
            if share is not None and k == "vo":
                update = update * torch.tanh(share / self.alpha)
            moved = self.ema[k] * self.beta + update * (1 - self.beta)
            self.ema[k] = torch.where(kept, moved, self.ema[k])

    def _value_share(self) -> torch.Tensor:
        """Per value/output unit: the fraction of its head's value dimensions still kept."""
        space = self.current
        share = torch.zeros(space.dims_total, dtype=torch.float64)
        for i, b in enumerate(space.blocks):
            sl = slice(space.dim_offsets[i], space.dim_offsets[i] + b.num_heads * b.head_dim)
            kept = space.vo[sl].view(b.num_heads, b.head_dim).double().mean(-1)
            share[sl] = kept.repeat_interleave(b.head_dim)
        return share

    def _prune_to(self, budget: int) -> None:
        candidates = {k: self.current.kept(k) & self.current.scope(k, self.scope) for k in self.kinds}
        self.current = select_units(self.current, self.ema, candidates, budget, self.scope)

    # ---- results -----------------------------------------------------------
    def final_space(self):
        """The units kept at the end: exactly the target density (to one unit)."""
        budget = self.final_budget(getattr(self, "total_steps", 0))
        if self.current.weights(self.scope)[0] > budget:  # training ended before p_end
            self._prune_to(budget)
        return self.current

    def final_mask(self, k: int) -> torch.Tensor:
        return self.final_space().kept("head")

    def scores(self):
        return {k: v.clone() for k, v in self.ema.items()}

    def log_stats(self) -> dict[str, float]:
        if self.current is None:
            return {}
        kept, dense = self.current.weights(self.scope)
        return {"density": kept / max(dense, 1), "heads_left": float(self.current.kept("head").sum())}

    def state_dict(self) -> dict:
        if self.current is None:
            return {}
        return {"ema": self.ema, "masks": {k: self.current.kept(k) for k in ("qk", "vo", "ffn")},
                "steps_pruned": self.steps_pruned, "steps_skipped": self.steps_skipped,
                "total_steps": getattr(self, "total_steps", 0)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.ema = {k: v.clone() for k, v in state["ema"].items()}
        m = state["masks"]
        self.current = self.current.replace(qk=m["qk"], vo=m["vo"], ffn=m["ffn"])
        self.steps_pruned = state["steps_pruned"]
        self.steps_skipped = state.get("steps_skipped", 0)
        self.total_steps = state.get("total_steps", 0)
