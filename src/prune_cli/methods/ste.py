"""Straight-through top-K: the model always sees an exactly-K 0/1 mask during training.

Forward: the top-K_t heads of the logits (optionally Gumbel-perturbed, which samples a subset
instead of always taking the current best one) are open, the rest closed. Backward: the discrete
choice has no gradient, so a surrogate lends its own:

* `backward: identity` — d gate / d logit = 1: each logit moves with the loss's sensitivity to its
  head's gate, also for heads that are currently closed. This is the official DSP code's STE
  (`--use_ste`, `STEFunction` passes the gradient through unchanged; no noise, same 0.5 lr).
* `backward: softmax` — the gradient of the Gumbel soft top-K (`relaxed.soft_top_k`, the DSP
  relaxation) at temperature tau, annealed like DSP's. Sharper credit assignment among heads near
  the K-th place; tau must not be tiny or the surrogate's gradient vanishes.

`ties: official` is the official code's forward rule: open the heads whose key is strictly above the
(K+1)-th largest, so heads tied at the boundary all stay closed and fewer than K may be open while
training; `exact` (default) breaks ties by the lower index and always opens K. The final mask is
exactly K either way.

Unlike DSP the training forward pass never differs from the pruned model, so there is no
train/test mismatch at the end; the price is a biased gradient.
"""

from __future__ import annotations

import torch

from prune_cli.methods.dsp import Annealed
from prune_cli.methods.relaxed import (
    GateLearner,
    binary_entropy_bits,
    choice,
    gumbel_noise,
    soft_top_k,
    straight_through_top_k,
)


class STE(GateLearner):
    BACKWARDS = ("identity", "softmax")
    TIES = ("exact", "official")

    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        self.backward = choice(cfg, "backward", "identity", self.BACKWARDS)
        self.noise = bool(cfg.get("noise", False))
        self.ties = choice(cfg, "ties", "exact", self.TIES)
        self.tau = Annealed(cfg)

    def _train_gates(self, step: int, total_steps: int, budget: int) -> torch.Tensor:
        logits = self.inside(self.logits)
        keys = logits
        if self.noise:
            keys = logits + gumbel_noise(logits.shape, self.generator).to(logits.device)
        temperature = self.tau.at(step, total_steps)
        # the soft top-K of the keys: the surrogate's gradient, and the "how decided" statistic
        with torch.set_grad_enabled(self.backward == "softmax" and torch.is_grad_enabled()):
            soft = soft_top_k(keys, budget, temperature)
        values = straight_through_top_k(keys, budget, soft if self.backward == "softmax" else None,
                                        strict=self.ties == "official")
        self._stats = {
            "temperature": temperature,
            "budget": float(budget),
            "expected_open": float(values.detach().sum()),
            "mask_entropy": binary_entropy_bits(soft.clamp(0.0, 1.0)),
        }
        return values
