"""Shared machinery of the learned head-selection methods (dsp, ste, voita).

Two parts:

1. **The math**, as plain functions on tensors, testable without a model:

   * `gumbel_noise` and `soft_top_k` — the Gumbel soft top-K relaxation of Xie & Ermon (2019,
     "Reparameterizable Subset Sampling via Continuous Relaxations") that DSP (Li, Cotterell &
     Sachan 2021) uses: perturb the logits with Gumbel noise once, then run K rounds of a tempered
     softmax; after each round the chosen mass is suppressed by adding log(1 - p) to the keys, so
     the next round picks "another" head. Every round is a softmax that sums to 1, so the relaxed
     K-hot vector sums to K exactly at any temperature (up to float rounding).
   * `straight_through_top_k` — an exact K-hot mask in the forward pass with the gradient of a
     surrogate (identity or a soft top-K) in the backward pass.
   * `HardConcrete` — the stretched-and-clipped binary concrete gate of Louizos, Welling & Kingma
     (2018, "Learning Sparse Neural Networks through L0 Regularization") that Voita et al. (2019)
     put on every head, with its closed-form probability of being non-zero (the L0 term).

2. **`GateLearner`**, the plumbing every learner shares: the heads_scope eligibility mask (heads
   outside it stay open at 1.0), the budget K_t of the sparsity schedule at step t, a private
   seeded noise generator (so the same seed gives bit-identical gates regardless of what else the
   program draws from torch's global RNG, and a resumed run continues the same noise stream),
   exactly-K `final_mask`, `to(device)` that keeps Parameter identity (the trainer builds its
   optimizer before moving the method), resumable `state_dict`, and a compact trajectory of the
   hard mask for `mask_trajectory.json`.

Method parameters are float64, as in the official DSP code (its head logits are a double
tensor): with ~100 heads they cost nothing, and the soft top-K at temperatures down to 1e-8 stays
finite. Gate values handed to the model are float32.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from prune_cli import schedules
from prune_cli.errors import ConfigError
from prune_cli.methods.base import Pruner, top_k_mask

_TINY = torch.finfo(torch.float64).tiny


# ---------------------------------------------------------------------------------------- math
def gumbel_noise(shape, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """Standard Gumbel(0, 1) samples, -log(-log U), drawn on the CPU from `generator`.

    CPU draws make the noise identical on every device (a CUDA generator gives a different stream).
    U is clamped away from 0 so the double log stays finite.
    """
    u = torch.rand(shape, generator=generator, dtype=dtype).clamp_(min=_TINY)
    return -torch.log(-torch.log(u))


def soft_top_k(keys: torch.Tensor, k: int, temperature: float, host_keys: np.ndarray | None = None) -> torch.Tensor:
    """Relaxed K-hot vector of `keys` (already noise-perturbed, or not): K successive softmaxes.

    Round j: p_j = softmax(keys_j / temperature); keys_{j+1} = keys_j + log(1 - p_j). The sum of the
    p_j is the relaxation; it sums to K and tends to the exact top-K indicator as the temperature
    goes to 0. At intermediate temperatures one head may hold more than 1 (the rounds can keep
    choosing it): only the sum and the two limits are exact. `1 - p` is clamped at the smallest
    positive double (as the official DSP code does) so a fully chosen entry gives a huge negative
    key instead of -inf, and no NaN gradient.

    `host_keys`: the values of `keys` already on the host (float64 numpy), when the caller has
    them; `keys` then only carries the gradient (any tensor whose d/dkeys is the identity, e.g.
    the logits when keys = logits + noise), and no device-to-host copy is made.
    """
    n = keys.numel()
    if k <= 0:
        return keys * 0.0  # keeps the graph (zero gradient) and the dtype/device
    if k >= n:
        return keys * 0.0 + 1.0
    if host_keys is None:
        host_keys = keys.detach().to("cpu", torch.float64).numpy()
    return _SoftTopK.apply(keys.to(torch.float64), int(k), float(temperature), host_keys)


def _soft_top_k_rounds(keys: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """The K softmaxes p_0..p_{K-1} of `soft_top_k` ([K, H], float64), in numpy: on ~100 values
    a numpy op costs ~1 us, a torch op ~7 us."""
    rounds = np.empty((k, keys.shape[-1]))
    for j in range(k):
        z = keys / temperature
        e = np.exp(z - z.max())
        p = e / e.sum()
        rounds[j] = p
        keys = keys + np.log(np.maximum(1.0 - p, _TINY))
    return rounds


def _inverse_complements(rounds: np.ndarray) -> np.ndarray:
    """1 / (1 - p_j) per round, 0 where the clamp of `1 - p` was active (no gradient flows there)."""
    one_minus = 1.0 - rounds
    return np.where(one_minus > _TINY, 1.0 / np.maximum(one_minus, _TINY), 0.0)


def _soft_top_k_backward(rounds: np.ndarray, inv: np.ndarray, g_total: np.ndarray, temperature: float) -> np.ndarray:
    """dL/dkeys of `soft_top_k` from its rounds p_0..p_{K-1}, their `_inverse_complements` and
    dL/dtotal: the recurrence in reverse. With g_j = dL/dkeys_{j+1} (g_K = 0):
        dL/dp_j      = dL/dtotal - g_j / (1 - p_j)
        dL/dkeys_j   = g_j + p_j * (dL/dp_j - <dL/dp_j, p_j>) / temperature
    """
    g = np.zeros_like(g_total)
    for j in range(len(rounds) - 1, -1, -1):
        g_p = g_total - g * inv[j]
        g = g + rounds[j] * (g_p - g_p @ rounds[j]) / temperature
    return g


def _device_backward(saved: torch.Tensor, g_total: torch.Tensor) -> torch.Tensor:
    """`_soft_top_k_backward` in torch ops, four kernels a round; `saved` = [rounds, inverse
    complements, rounds / temperature] stacked ([3, K, H]), so the temperature is data, not a
    constant (a captured CUDA graph replays it at every temperature)."""
    rounds, inv, scaled = saved[0], saved[1], saved[2]
    g = torch.zeros_like(g_total)
    for j in range(rounds.shape[0] - 1, -1, -1):
        g_p = torch.addcmul(g_total, g, inv[j], value=-1.0)
        g = torch.addcmul(g, scaled[j], g_p - torch.dot(g_p, rounds[j]))
    return g


class _GraphedBackward:
    """`_device_backward` captured once per (device, K, H) as a CUDA graph and replayed.

    DSP's step on a GPU is usually launch-bound at small models and batches: the ~4K kernels of
    the backward recurrence cost ~30 us of host time each (~4.5 ms a step at K=36), while the GPU
    work is a few microseconds. A replay is one launch. Inputs are copied into the graph's static
    buffers (device to device) at every call, so two soft top-Ks of the same K in one step cannot
    overwrite each other's saved rounds. If capture fails (an old driver, a capture already
    running), the eager ops are used from then on.
    """

    def __init__(self):
        self._graphs: dict = {}
        self.enabled = True

    def __call__(self, saved: torch.Tensor, g_total: torch.Tensor) -> torch.Tensor:
        if not self.enabled or torch.cuda.is_current_stream_capturing():
            return _device_backward(saved, g_total)
        key = (saved.device, tuple(saved.shape))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(saved, g_total)
            except RuntimeError as err:  # capture is an optimisation only; the eager path is exact too
                warnings.warn(f"soft top-K backward: CUDA graph capture failed ({err}); using eager kernels", stacklevel=2)
                self.enabled = False
                return _device_backward(saved, g_total)
        graph, static_saved, static_g, static_out = self._graphs[key]
        static_saved.copy_(saved)
        static_g.copy_(g_total)
        graph.replay()
        return static_out.clone()

    @staticmethod
    def _capture(saved: torch.Tensor, g_total: torch.Tensor):
        static_saved, static_g = saved.clone(), g_total.clone()
        side = torch.cuda.Stream(saved.device)
        side.wait_stream(torch.cuda.current_stream(saved.device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            _device_backward(static_saved, static_g)
        torch.cuda.current_stream(saved.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = _device_backward(static_saved, static_g)
        return graph, static_saved, static_g, static_out


_graphed_backward = _GraphedBackward()


class _SoftTopK(torch.autograd.Function):
    """`soft_top_k` with a hand-written backward.

    The relaxation is K rounds of ~7 element-wise ops on a vector of H (~100) heads. Left to
    autograd on a GPU that is hundreds of tiny kernels plus their graph bookkeeping per training
    step (+15-60 % step time on an H100 at K=36). Forward: the K rounds in numpy on the host (no
    graph; the [H] result and the saved rounds go to the device in two copies). Backward: on the
    CPU in numpy; on a GPU where the gradient is, as one CUDA-graph replay, with no copy to the
    host: a host copy there would stall the CPU until the whole backward pass has run, so the
    optimizer's kernels could no longer be queued behind it.
    """

    @staticmethod
    def forward(ctx, keys: torch.Tensor, k: int, temperature: float, host_keys: np.ndarray) -> torch.Tensor:
        rounds = _soft_top_k_rounds(np.asarray(host_keys, dtype=np.float64), k, temperature)
        inv = _inverse_complements(rounds)
        if keys.device.type == "cpu":
            ctx.rounds, ctx.inv, ctx.temperature = rounds, inv, temperature
        else:
            ctx.saved = torch.from_numpy(np.stack([rounds, inv, rounds / temperature])).to(keys.device)
        return torch.from_numpy(rounds.sum(0)).to(keys.device)

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        g_total = grad_total.detach().double()
        if grad_total.device.type == "cpu":  # numpy is ~5x faster than torch ops on ~100 values
            return torch.from_numpy(_soft_top_k_backward(ctx.rounds, ctx.inv, g_total.numpy(), ctx.temperature)), None, None, None
        if grad_total.device.type == "cuda":
            return _graphed_backward(ctx.saved, g_total), None, None, None
        return _device_backward(ctx.saved, g_total), None, None, None


def straight_through_top_k(keys: torch.Tensor, k: int, surrogate: torch.Tensor | None = None,
                           strict: bool = False) -> torch.Tensor:
    """Exactly-K 0/1 mask of `keys` forward; backward, the gradient of `surrogate` (default: the
    keys themselves, i.e. the identity straight-through estimator of the official DSP code's STE).

    `hard + s - s.detach()` is hard exactly in the forward pass (s - s is 0.0 in IEEE arithmetic)
    while d/ds of it is the identity. `strict`: the official code's forward rule (keys strictly
    above the (K+1)-th largest; with ties at the boundary fewer than K are open).
    """
    if strict and k < keys.numel():  # the official rule: above the (K+1)-th largest; ties keep fewer
        threshold = torch.topk(keys.detach().flatten(), k + 1).values[-1]
        hard = (keys.detach() > threshold).to(keys.dtype)
    else:
        hard = top_k_mask(keys, k).to(device=keys.device, dtype=keys.dtype)
    soft = keys if surrogate is None else surrogate
    return hard + (soft - soft.detach())


@dataclass(frozen=True)
class HardConcrete:
    """Hard-concrete gate: s = sigmoid((log u - log(1-u) + log_alpha) / beta), stretched to
    (gamma, zeta) and clipped to [0, 1], so a gate is exactly 0 or 1 with positive probability.

    Constants: Louizos et al. 2018 use beta=2/3, (gamma, zeta)=(-0.1, 1.1); Voita et al.'s code
    (lena-voita/the-story-of-heads, `ConcreteGate`) uses beta=0.33 with the same stretch limits.
    """

    beta: float = 0.33
    gamma: float = -0.1
    zeta: float = 1.1

    def sample(self, log_alpha: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """A reparameterised gate sample from uniforms `u` in (0, 1)."""
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return torch.clamp(s * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)

    def prob_open(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(gate != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)): the expected L0 per gate."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def mean_gate(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Noise-free gate (Louizos et al.'s test-time estimator)."""
        return torch.clamp(torch.sigmoid(log_alpha) * (self.zeta - self.gamma) + self.gamma, 0.0, 1.0)


def binary_entropy_bits(p: torch.Tensor) -> float:
    """Mean binary entropy (bits) of keep-probabilities: 1 = undecided, 0 = a hard mask."""
    p = p.detach().double().clamp(1e-12, 1 - 1e-12)
    h = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    return float(h.mean()) if h.numel() else 0.0


# ------------------------------------------------------------------------------- config helpers
def number(cfg: DictConfig, key: str, default, *, low=None, high=None, positive=False, integer=False):
    """Read a numeric method key with a one-line ConfigError naming `method.<key>` when it is bad."""
    value = cfg.get(key, default)
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and positive:
        ok = value > 0
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = " > 0" if positive else ""
        if low is not None or high is not None:
            bounds = f" in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"method.{key}", value, f"{kind}{bounds}")
    return int(value) if integer else float(value)


def flag(cfg: DictConfig, key: str, default: bool) -> bool:
    """`method.<key>` as a bool: true or false, nothing else."""
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"method.{key}", value, "true or false")
    return value


def choice(cfg: DictConfig, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = cfg.get(key, default)
    if value not in allowed:
        raise ConfigError(f"method.{key}", value, f"one of {', '.join(allowed)}")
    return value


# ------------------------------------------------------------------------------ shared learner
class GateLearner(Pruner):
    """Base of dsp, ste and voita: one float64 parameter per head (`self.logits`).

    Subclasses implement `_train_gates(step, total_steps, budget)` -> [n_eligible] gate values with
    gradient; everything else (scope, budget schedule, eval mask, final mask, resume) lives here.
    """

    kind = "learner"
    default_pipeline = ("prune_joint", "evaluate", "export")
    #: how many changes of the hard mask `history()` keeps (the newest win)
    HISTORY_LIMIT = 2000
    #: keys of the method yaml every learner reads
    INITS = ("uniform", "normal", "zeros")

    def __init__(self, cfg: DictConfig, space, seed: int = 0):
        super().__init__(cfg, space, seed)
        self.total = int(space.total)
        # null: the model's trainer.lr (IWSLT in the official DSP code, where fairseq's scheduler
        # sets every parameter group's rate)
        self._lr = None if "lr" in cfg and cfg.lr is None else number(cfg, "lr", 0.5, positive=True)
        # The official DSP code's training setup (rycolab/differentiable-subset-pruning), one switch
        # each (the defaults are ours):
        # the logits' lr decays with the model's schedule; their gradient joins the model's clip
        # norm; the pipelined gate learning keeps dropout on.
        self.lr_schedule = choice(cfg, "lr_schedule", "constant", ("constant", "model"))
        self.clip_logits = flag(cfg, "clip_logits", False)
        self.gate_dropout = flag(cfg, "gate_dropout", False)
        init = choice(cfg, "init", "uniform", self.INITS)
        scale = number(cfg, "init_scale", 0.5, low=0.0)
        generator = torch.Generator().manual_seed(int(seed))
        if init == "uniform":  # Xavier-uniform-like U(-a, a), as the official DSP/Voita code
            start = (torch.rand(self.total, generator=generator, dtype=torch.float64) * 2 - 1) * scale
        elif init == "normal":
            start = torch.randn(self.total, generator=generator, dtype=torch.float64) * scale
        else:
            start = torch.zeros(self.total, dtype=torch.float64)
        self.logits = torch.nn.Parameter(start)
        # noise has its own stream (seed + 1) so it does not depend on the init draw count
        self.generator = torch.Generator().manual_seed(int(seed) + 1)
        self.keep = None
        self.eligible = torch.ones(self.total, dtype=torch.bool)
        self.schedule = None
        self._stats: dict[str, float] = {}
        self._history: list[dict] = []
        self._last_mask: torch.Tensor | None = None

    # ---- wiring --------------------------------------------------------------------------
    def setup(self, keep: int, eligible: torch.Tensor | None = None, schedule: DictConfig | None = None) -> None:
        """`keep` heads within `eligible` (heads_scope); `schedule` = the run's `schedule` config
        (None = one_shot: the budget is K from the first step, as in the DSP paper)."""
        eligible = torch.ones(self.total, dtype=torch.bool) if eligible is None else eligible.detach().bool().cpu()
        if eligible.numel() != self.total:
            raise ValueError(f"eligible mask has {eligible.numel()} entries, the model has {self.total} heads")
        n = int(eligible.sum())
        keep = n if keep is None else keep  # no budget: the method decides (Voita's ending=gates)
        if not 0 <= int(keep) <= n:
            raise ConfigError("heads", keep, f"0..{n} (heads in scope)")
        self.keep, self.eligible = int(keep), eligible
        self.schedule = schedule if schedule is not None else OmegaConf.create({"name": "one_shot"})
        schedules.check(self.schedule)

    @property
    def n_eligible(self) -> int:
        return int(self.eligible.sum())

    def _require_setup(self) -> None:
        if self.keep is None:
            raise RuntimeError(f"{type(self).__name__}.setup(keep=...) must run before training")

    def budget(self, step: int, total_steps: int) -> int:
        """Heads kept (in scope) at `step`, from the sparsity schedule: n_eligible -> keep."""
        self._require_setup()
        return schedules.keep_at(self.schedule, step, total_steps, self.n_eligible, self.keep)

    def to(self, device) -> GateLearner:
        """Move in place: the trainer's optimizer already holds these Parameter objects."""
        for p in self.parameters():
            p.data = p.data.to(device)
        return self

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.logits]

    def lr(self) -> float | None:
        return self._lr

    # ---- the hooks the trainer calls -----------------------------------------------------
    def gate_values(self, step: int, total_steps: int, training: bool = True) -> torch.Tensor:
        self._require_setup()
        budget = self.budget(step, total_steps)
        if training:
            inside = self._train_gates(step, total_steps, budget)
            self._record(step, budget)
        else:
            inside = top_k_mask(self.inside(self.logits), budget).to(self.logits.device, torch.float64)
        return self._scatter(inside).float()

    def _train_gates(self, step: int, total_steps: int, budget: int) -> torch.Tensor:
        raise NotImplementedError

    def inside(self, values: torch.Tensor) -> torch.Tensor:
        """The entries of an [H] tensor that belong to in-scope heads."""
        return values if bool(self.eligible.all()) else values[self.eligible.to(values.device)]

    def _scatter(self, inside: torch.Tensor) -> torch.Tensor:
        """[n_eligible] values -> [H] with out-of-scope heads at 1.0 (keeps the gradient)."""
        if bool(self.eligible.all()):
            return inside
        eligible = self.eligible.to(inside.device)
        return torch.ones(self.total, dtype=inside.dtype, device=inside.device).masked_scatter(eligible, inside)

    def final_scales(self) -> torch.Tensor | None:
        """Gate values [H] the kept heads keep as multipliers after training (folded into the
        weights); None = a hard mask (every method but Voita's ending=gates)."""
        return None

    def final_mask(self, k: int) -> torch.Tensor:
        """Exactly k True: the k eligible heads with the largest learned logits."""
        return top_k_mask(self.logits.detach().cpu(), int(k), self.eligible)

    def scores(self) -> torch.Tensor:
        return self.logits.detach().cpu().clone()

    def log_stats(self) -> dict[str, float]:
        return dict(self._stats)

    # ---- trajectory of the hard mask (mask_trajectory.json) ------------------------------
    def _record(self, step: int, budget: int) -> None:
        host = getattr(self, "_host_logits", None)
        mask = top_k_mask(self.logits.detach().cpu() if host is None else host, budget, self.eligible)
        if self._last_mask is None or not torch.equal(mask, self._last_mask):
            self._last_mask = mask
            self._history.append({"step": int(step), "kept": mask.nonzero().flatten().tolist()})
            del self._history[: -self.HISTORY_LIMIT]

    def history(self) -> dict:
        """Every change of the deterministic top-K_t mask during training: [{step, kept}]."""
        return {"method": self.cfg.get("name"), "trajectory": list(self._history)}

    # ---- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "logits": self.logits.detach().cpu().clone(),
            "generator": self.generator.get_state(),
            "history": list(self._history),
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        with torch.no_grad():
            self.logits.data = state["logits"].to(self.logits.device, torch.float64)
        self.generator.set_state(state["generator"])
        self._history = list(state.get("history", []))
        self._last_mask = None
        if self._history:
            self._last_mask = torch.zeros(self.total, dtype=torch.bool)
            self._last_mask[self._history[-1]["kept"]] = True
        self._load_extra_state(state.get("extra") or {})

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass
