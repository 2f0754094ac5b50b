"""Voita et al. 2019 ("Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting,
the Rest Can Be Pruned"): a stochastic hard-concrete gate on every head, trained with an L0 penalty.

Each head h has log_alpha_h; a training step samples gate_h ~ HardConcrete(log_alpha_h) (exactly 0
or 1 with positive probability) and the loss gets lambda * sum_h P(gate_h != 0), the expected number
of open heads (Louizos et al. 2018's L0 relaxation).

lambda only steers K indirectly (Voita et al. sweep it; the official DSP code uses l0_penalty
0.0015 for BERT/MNLI with a 0.1 learning rate for log_alpha). Since `heads=K` is the contract, the
default `controller: lagrangian` turns the penalty into a constraint, as in Wang, Wohlwend & Lei
2020 ("Structured Pruning of Large Language Models"): the term is

    lambda1 * (E[L0] - K_t) + lambda2 * (E[L0] - K_t)^2,        E[L0] = sum_h P(gate_h != 0)

minimised over log_alpha and MAXIMISED over (lambda1, lambda2): after every optimiser step both
multipliers take a plain gradient-ascent step, lambda1 += lambda_lr * v, lambda2 += lambda_lr * v^2,
v = E[L0] - K_t in heads. lambda1 thus keeps Voita's meaning (a penalty per open head) and grows
until exactly K_t gates are expected open; the quadratic term damps the oscillation. The ascent is
done here rather than by the trainer's optimizer, which can only descend. `controller: fixed` is
Voita's original (a constant `l0_penalty`); either way `final_mask(k)` projects to exactly k heads
(top-k of log_alpha), and log_stats reports `expected_open`, the K the gates reached before it.

Hard-concrete constants (config keys): beta=0.33 and (gamma, zeta)=(-0.1, 1.1) as in Voita et
al.'s code (lena-voita/the-story-of-heads); Louizos et al. use beta=2/3. log_alpha is initialised
U(-0.68, 0.68), the Xavier bound of the official [1, 12, 1, 1] gate tensor.
"""

from __future__ import annotations

import torch

from prune_cli.errors import ConfigError
from prune_cli.methods.relaxed import GateLearner, HardConcrete, binary_entropy_bits, choice, number


class Voita(GateLearner):
    CONTROLLERS = ("lagrangian", "fixed")

    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        gamma, zeta = number(cfg, "gamma", -0.1), number(cfg, "zeta", 1.1)
        if not gamma < 0:
            raise ConfigError("method.gamma", gamma, "a negative number (the gate's lower stretch limit)")
        if not zeta > 1:
            raise ConfigError("method.zeta", zeta, "a number above 1 (the gate's upper stretch limit)")
        self.gate = HardConcrete(beta=number(cfg, "beta", 0.33, positive=True), gamma=gamma, zeta=zeta)
        self.controller = choice(cfg, "controller", "lagrangian", self.CONTROLLERS)
        self.l0_penalty = number(cfg, "l0_penalty", 0.0015, low=0.0)
        self.lambda_lr = number(cfg, "lambda_lr", 0.01, low=0.0)
        self.lambda1 = number(cfg, "lambda_init", 0.0015)
        self.lambda2 = 0.0
        self._target: int | None = None
        self._violation: float | None = None  # E[L0] - K_t seen by the last extra_loss
        self._ascended_at: int | None = None  # step of the last multiplier update

    # ---- gates -------------------------------------------------------------------------------
    def _train_gates(self, step: int, total_steps: int, budget: int) -> torch.Tensor:
        self._ascend(step)
        self._target = budget
        log_alpha = self.inside(self.logits)
        eps = 1e-6  # keeps log(u) and log(1 - u) finite, as the official gate does
        u = torch.rand(log_alpha.shape, generator=self.generator, dtype=torch.float64)
        u = (u * (1 - 2 * eps) + eps).to(log_alpha.device)
        values = self.gate.sample(log_alpha, u)
        p_open = self.gate.prob_open(log_alpha.detach())
        self._stats = {
            "budget": float(budget),
            "expected_open": float(p_open.sum()),
            "sampled_open": float((values.detach() > 0).sum()),
            "mask_entropy": binary_entropy_bits(p_open),
            "lambda": self.lambda1 if self.controller == "lagrangian" else self.l0_penalty,
        }
        if self.controller == "lagrangian":
            self._stats["lambda2"] = self.lambda2
        return values

    def extra_loss(self) -> torch.Tensor:
        expected = self.gate.prob_open(self.inside(self.logits)).sum()
        if self.controller == "fixed":
            return self.l0_penalty * expected
        if self._target is None:
            raise RuntimeError("Voita.extra_loss() needs gate_values(...) first (it sets the target K_t)")
        v = expected - self._target
        self._violation = float(v.detach())
        return self.lambda1 * v

    def _ascend(self, step: int) -> None:
        if self.controller != "lagrangian" or self._violation is None or step == self._ascended_at:
            return
        self._ascended_at = step
        import os, math
        eta=float(os.environ.get("ETA","0.05"))
        self.lambda1 = min(max(max(self.lambda1,1e-8) * math.exp(eta * self._violation / self.n_eligible), 1e-8), 1e4)

    # ---- resume ------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"lambda1": self.lambda1, "lambda2": self.lambda2, "violation": self._violation,
                "ascended_at": self._ascended_at}

    def _load_extra_state(self, state: dict) -> None:
        self.lambda1 = float(state.get("lambda1", self.lambda1))
        self.lambda2 = float(state.get("lambda2", self.lambda2))
        self._violation = state.get("violation")
        self._ascended_at = state.get("ascended_at")
