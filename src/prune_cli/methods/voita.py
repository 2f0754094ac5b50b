"""Voita et al. 2019 ("Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting,
the Rest Can Be Pruned"): a stochastic hard-concrete gate on every head, with an L0 objective.

Each head h has log_alpha_h; a training step samples gate_h ~ HardConcrete(log_alpha_h) (exactly 0
or 1 with positive probability). Voita et al. add lambda * sum_h P(gate_h != 0), the expected
number of open heads (Louizos et al. 2018's L0 relaxation), and sweep lambda to reach a sparsity.
`heads=K` is our contract, and a fixed lambda only steers K indirectly, so by default the method
solves for the multiplier at every step instead (`controller: projection`):

    E[L0](s) = sum_h P(gate_h != 0 | log_alpha_h + s) = K_t

is solved for one shift s shared by every head (bisection: E[L0] is increasing in s), and the
gates are sampled from log_alpha + s. The expected number of open heads is therefore K_t at every
step, whatever the scale of the task's gradients. s depends on log_alpha through the constraint
(implicit function theorem: ds/dlog_alpha_h = -P'_h / sum_j P'_j), and that dependence is kept in
the graph. The gradient each log_alpha receives is then g_h + lambda_t * P'_h with
lambda_t = -sum_j g_j / sum_j P'_j: exactly Voita's L0 penalty gradient, with the lambda that keeps
E[L0] on target this step (a lambda search done in closed form). Heads compete for the K_t
expected slots; the task decides which.

Why not a Lagrangian whose multiplier ascends over steps (Wang, Wohlwend & Lei 2020)? On a toy
problem (72 heads, Adam, lr 0.1) its multiplier lagged behind the gates and overshot: once a
hard-concrete gate closes it stops receiving task gradient, so overshooting K is hard to undo,
and the right step size depended on the scale of the loss. The projection has no such knob.

`controller: fixed` is Voita's original objective (a constant `l0_penalty`, lambda in the paper),
for reproducing their sweeps; K is then whatever lambda gives. Either way `final_mask(k)` projects
to exactly k heads (top-k of log_alpha), and the K the gates reached before that projection is
reported: `k_reached` = heads whose deterministic test-time gate (Louizos et al.'s estimator, the
one Voita et al. prune with) is non-zero, logged every step, in `history()` (mask_trajectory.json)
and in `self.k_reached` after `final_mask`.

`ending: gates` is the paper's own ending instead (with `controller: fixed`, no `heads=`): the
deterministic test-time gate clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1) of every
head is kept as a multiplier -- fractional gates stay fractional, folded into the output
projection of the exported model -- and only heads whose gate is exactly 0 are removed: lambda,
not K, sets the sparsity, and the K it reached is the run's `heads_kept`.

Hard-concrete constants (config keys): temperature 1/3 and stretch (gamma, zeta) = (-0.1, 1.1), as
in Voita et al.; log_alpha starts U(-init_scale, init_scale).
"""

from __future__ import annotations

import math

import torch

from prune_cli.errors import ConfigError
from prune_cli.methods.relaxed import GateLearner, HardConcrete, binary_entropy_bits, choice, number


def solve_shift(log_alpha: torch.Tensor, offset: float, target: float, iters: int = 100) -> float:
    """s with sum_h sigmoid(log_alpha_h + s + offset) == target, 0 < target < n (bisection).

    The sum is increasing in s; the bracket puts every term below 1e-21 at `lo` and above
    1 - 1e-21 at `hi`, so it holds the root for any target not within 1e-20 of 0 or n.
    """
    a = log_alpha.detach().double().cpu()
    lo, hi = -50.0 - offset - float(a.max()), 50.0 - offset - float(a.min())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float(torch.sigmoid(a + mid + offset).sum()) > target:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


class Voita(GateLearner):
    CONTROLLERS = ("projection", "fixed")
    PENALTIES = ("sum", "layer_mean")
    ENDINGS = ("top_k", "gates")

    def __init__(self, cfg, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        gamma, zeta = number(cfg, "gamma", -0.1), number(cfg, "zeta", 1.1)
        if not gamma < 0:
            raise ConfigError("method.gamma", gamma, "a negative number (the gate's lower stretch limit)")
        if not zeta > 1:
            raise ConfigError("method.zeta", zeta, "a number above 1 (the gate's upper stretch limit)")
        beta = number(cfg, "temperature", 1 / 3, positive=True)
        self.gate = HardConcrete(beta=beta, gamma=gamma, zeta=zeta)
        self.controller = choice(cfg, "controller", "projection", self.CONTROLLERS)
        self.l0_penalty = number(cfg, "l0_penalty", 0.0015, low=0.0)
        self.penalty = choice(cfg, "penalty", "sum", self.PENALTIES)
        self.ending = choice(cfg, "ending", "top_k", self.ENDINGS)
        if self.ending == "gates" and self.controller != "fixed":
            raise ConfigError("method.ending", "gates", "top_k with method.controller=projection (it holds K, the "
                              "test-time gates would not), or method.controller=fixed to prune by lambda")
        self.shift = 0.0  # the projection's s at the last step (0 with controller=fixed)
        self.k_reached: int | None = None

    @property
    def _offset(self) -> float:
        """P(gate != 0) = sigmoid(log_alpha + offset)."""
        return -self.gate.beta * math.log(-self.gate.gamma / self.gate.zeta)

    def effective(self, log_alpha: torch.Tensor, budget: int) -> torch.Tensor:
        """log_alpha + s, s solving E[L0] = budget, differentiable through s (implicit function)."""
        if self.controller != "projection":
            return log_alpha
        n = log_alpha.numel()
        if budget <= 0 or budget >= n:
            return log_alpha  # gate_values handles "all closed" / "all open" without a shift
        s0 = solve_shift(log_alpha, self._offset, float(budget))
        p = torch.sigmoid(log_alpha.detach() + s0 + self._offset)
        slope = p * (1 - p)  # dP_h / dlog_alpha_h at the solution
        # value s0; gradient ds/dlog_alpha_h = -slope_h / sum(slope)
        s = s0 - (slope * (log_alpha - log_alpha.detach())).sum() / slope.sum().clamp_min(1e-300)
        self.shift = s0
        return log_alpha + s

    # ---- gates -------------------------------------------------------------------------------
    def _train_gates(self, step: int, total_steps: int, budget: int) -> torch.Tensor:
        log_alpha = self.inside(self.logits)
        n = log_alpha.numel()
        if self.controller == "projection" and (budget <= 0 or budget >= n):
            # the constraint fixes every gate; keep the graph so a frozen model still backpropagates
            values = log_alpha * 0.0 + (1.0 if budget >= n else 0.0)
            self._stats = {"budget": float(budget), "expected_open": float(budget), "k_reached": float(budget)}
            return values
        eff = self.effective(log_alpha, budget)
        eps = 1e-6  # keeps log(u) and log(1 - u) finite
        u = torch.rand(log_alpha.shape, generator=self.generator, dtype=torch.float64)
        u = (u * (1 - 2 * eps) + eps).to(log_alpha.device)
        values = self.gate.sample(eff, u)
        p_open = self.gate.prob_open(eff.detach())
        self._stats = {
            "budget": float(budget),
            "expected_open": float(p_open.sum()),
            "k_reached": float(self._reached(eff.detach())),
            "sampled_open": float((values.detach() > 0).sum()),
            "mask_entropy": binary_entropy_bits(p_open),
            "shift": self.shift,
        }
        return values

    def gate_values(self, step: int, total_steps: int, training: bool = True) -> torch.Tensor:
        if training or self.ending != "gates":
            return super().gate_values(step, total_steps, training)
        return self.final_scales().to(self.logits.device).float()  # evaluations see the test-time gates

    def final_scales(self) -> torch.Tensor | None:
        """ending=gates: the test-time gate of every head [H] (out of scope: 1); else None."""
        if self.ending != "gates":
            return None
        return self._scatter(self.gate.mean_gate(self.inside(self.logits.detach().cpu())))

    def _reached(self, eff: torch.Tensor) -> int:
        """Heads whose deterministic (test-time) gate is non-zero."""
        return int((self.gate.mean_gate(eff) > 0).sum())

    def extra_loss(self) -> torch.Tensor | float:
        if self.controller == "fixed":
            if self.penalty == "sum":  # the DSP repository's PyTorch copy
                return self.l0_penalty * self.gate.prob_open(self.inside(self.logits)).sum()
            # Voita et al.'s own code: each gated layer's sum of P(open), averaged over those layers
            p = self.gate.prob_open(self.logits) * self.eligible.to(self.logits.device, self.logits.dtype)
            per_block = [(x.sum(), bool(e.any())) for x, e in zip(self.space.split(p), self.space.split(self.eligible))]
            gated = [x for x, any_gated in per_block if any_gated]
            return self.l0_penalty * torch.stack(gated).mean()
        return 0.0  # the projection enforces E[L0] = K_t itself

    # ---- the end -----------------------------------------------------------------------------
    def final_mask(self, k: int) -> torch.Tensor:
        """Exactly k heads (top-k of log_alpha); records the K the gates had reached before."""
        log_alpha = self.inside(self.logits.detach().cpu())
        n = log_alpha.numel()
        if self.controller == "projection" and 0 < self.keep < n:
            reached = self._reached(self.effective(log_alpha, self.keep))
        elif self.controller == "projection":
            reached = self.keep
        else:
            reached = self._reached(log_alpha)
        self.k_reached = reached
        self._stats["k_reached"] = float(reached)
        if self.ending == "gates":  # the heads whose test-time gate is open, however many
            return (self.final_scales() > 0) & self.eligible | ~self.eligible
        return super().final_mask(k)

    def history(self) -> dict:
        return {**super().history(), "k_reached": self.k_reached, "controller": self.controller}

    # ---- resume ------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"shift": self.shift}

    def _load_extra_state(self, state: dict) -> None:
        self.shift = float(state.get("shift", 0.0))
