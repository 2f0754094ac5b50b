"""Differentiable Subset Pruning (Li, Cotterell & Sachan, TACL 2021, arXiv:2108.04657).

One learnable importance logit per head, flat over the whole model: encoder self-, decoder self-
and cross-attention heads compete in ONE global top-K (as in the paper's encoder-decoder runs).
Every training step the logits get fresh Gumbel noise and the Gumbel soft top-K relaxation
(`relaxed.soft_top_k`) turns them into gate values that sum exactly to the current budget K_t; the
temperature is annealed so the relaxation hardens into a K-hot mask. Because the constraint is
built into the relaxation, `heads=K` is met exactly, with no penalty to tune (the paper's point
against Voita et al.'s L0 penalty). The kept heads at the end are the top-K of the logits.

Facts from the official code (github.com/rycolab/differentiable-subset-pruning), used as defaults:
* logits: a float64 tensor, Xavier-uniform initialised (for BERT-base's 12x12 that is U(-0.5, 0.5));
* their own learning rate (`pruning_lr`): 0.5 for BERT on MNLI, 0.2 for the IWSLT Transformer;
* temperature annealed exponentially from `initial_temperature` to `final_temperature` over
  `cooldown_steps`, then held: BERT/MNLI joint 1000 -> 1e-8 over 25000 steps (of ~36.8k, 3 epochs;
  8333 steps for the 1-epoch pipelined run); IWSLT 0.1 -> 1e-8 over 15000 steps;
* Gumbel noise is drawn for every forward pass; `1 - p` is floored at the smallest double.
`cooldown_steps: null` here means `cooldown_fraction` of the run (default 0.68 ~ 25000/36.8k), so the
default carries over to runs of any length.
"""

from __future__ import annotations

import torch

from prune_cli.methods.relaxed import (
    GateLearner,
    binary_entropy_bits,
    choice,
    gumbel_noise,
    number,
    soft_top_k,
)
from prune_cli.schedules import TEMPERATURE_SCHEDULES, temperature_at


class Annealed:
    """Temperature settings shared by DSP and STE's soft surrogate, read from the method yaml."""

    def __init__(self, cfg):
        self.tau_start = number(cfg, "tau_start", 1000.0, positive=True)
        self.tau_end = number(cfg, "tau_end", 1e-8, positive=True)
        self.kind = choice(cfg, "tau_schedule", "exponential", TEMPERATURE_SCHEDULES)
        steps = cfg.get("cooldown_steps")
        self.cooldown_steps = None if steps is None else number(cfg, "cooldown_steps", None, low=0, integer=True)
        self.cooldown_fraction = number(cfg, "cooldown_fraction", 0.68, low=0.0, high=1.0)

    def at(self, step: int, total_steps: int) -> float:
        cooldown = self.cooldown_steps
        if cooldown is None:
            cooldown = round(self.cooldown_fraction * max(int(total_steps) - 1, 0))
        return temperature_at(step, self.tau_start, self.tau_end, cooldown, self.kind)


class DSP(GateLearner):
    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        self.tau = Annealed(cfg)

    def _train_gates(self, step: int, total_steps: int, budget: int) -> torch.Tensor:
        # One small device-to-host copy a step: the noisy keys are formed on the host, where the
        # soft top-K runs; the logits carry the gradient (d keys / d logits = I).
        temperature = self.tau.at(step, total_steps)
        self._host_logits = self.logits.detach().cpu()
        logits = self.inside(self.logits)
        keys = self.inside(self._host_logits) + gumbel_noise(logits.shape, self.generator)
        values = soft_top_k(logits, budget, temperature, host_keys=keys.numpy())
        self._last = (temperature, budget, values.detach())
        return values

    def log_stats(self) -> dict[str, float]:
        # computed when logged (every trainer.log_every steps), not every step: each is a sync
        if getattr(self, "_last", None) is None:
            return {}
        temperature, budget, values = self._last
        return {
            "temperature": temperature,
            "budget": float(budget),
            "expected_open": float(values.sum()),
            "mask_entropy": binary_entropy_bits(values.clamp(0.0, 1.0)),
        }
