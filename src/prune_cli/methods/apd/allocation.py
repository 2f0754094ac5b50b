"""APD's allocation (Li et al., "Automatic Peer Distillation", IJCAI 2023; no public code, so
the details are ours: docs/methods/apd.md gives each decision and its reason).

The paper's abstract asks for an *automatic* choice of which heads each layer loses, with no
per-layer setting. This module is that choice as plain arithmetic over measured statistics, apart
from the model and the training loop so that it can be tested exactly:

* `LayerStats`: what a layer loses when it drops a set of heads is the part of its attention output
  that its remaining heads CANNOT take over -- the residual of the best linear recombination of the
  kept heads' context vectors (a least-squares refit of the output projection: the most peers can
  absorb without changing their attention), each output feature weighted by the mean squared loss
  gradient on it (a diagonal empirical Fisher, so the cost is a second-order loss change and layers
  compare in one unit);
* `elimination`: inside each layer, heads leave in greedy order of that cost (backward elimination:
  nested sets);
* `allocate`: across layers, an exact dynamic programme over the per-layer cost curves chooses how
  many each layer loses so that exactly K heads stay.
"""

from __future__ import annotations

import torch


class LayerStats:
    """Second moments of one attention block over training tokens: context Gram G = C^T C, C^T Y
    (Y the output projection's output without bias), per output feature sum Y^2 and the mean squared
    loss gradient phi."""

    def __init__(self, d_in: int, d_out: int, device):
        kw = {"dtype": torch.float64, "device": device}
        self.gram = torch.zeros(d_in, d_in, **kw)
        self.cross = torch.zeros(d_in, d_out, **kw)
        self.energy = torch.zeros(d_out, **kw)
        self.fisher = torch.zeros(d_out, **kw)
        self.tokens = 0

    def _solve(self, features: torch.Tensor) -> torch.Tensor:
        """The least-squares map [len(features), d_out] from those context features to Y (a tiny
        ridge keeps collinear contexts solvable)."""
        g = self.gram[features][:, features]
        ridge = 1e-9 * float(g.diagonal().mean().clamp_min(1e-30))
        return torch.linalg.solve(g + ridge * torch.eye(len(features), dtype=g.dtype, device=g.device),
                                  self.cross[features])

    def cost(self, features: torch.Tensor) -> float:
        """Fisher-weighted residual of Y after the best refit from the context `features` kept."""
        explained = (self.cross[features] * self._solve(features)).sum(0) if features.numel() \
            else torch.zeros_like(self.energy)
        residual = (self.energy - explained).clamp_min(0)
        return float((self.fisher * residual).sum() / max(self.tokens, 1))

    def refit(self, features: torch.Tensor) -> torch.Tensor:
        """Output-projection columns [d_out, len(features)] that best give Y from those features."""
        return self._solve(features).T


def elimination(stats: LayerStats, n_heads: int, head_dim: int, removable: list[int]) -> tuple[list[int], list[float]]:
    """Greedy backward elimination inside one block: (heads in the order they leave, cost after
    0, 1, ... of them have left). Only `removable` heads (positions in the block) may leave."""
    kept = list(range(n_heads))
    order, costs = [], [stats.cost(head_features(kept, head_dim))]
    candidates = list(removable)
    while candidates:
        trial = [(stats.cost(head_features([h for h in kept if h != c], head_dim)), c) for c in candidates]
        cost, best = min(trial)
        kept.remove(best)
        candidates.remove(best)
        order.append(best)
        costs.append(cost)
    return order, costs


def head_features(heads: list[int], head_dim: int) -> torch.Tensor:
    """The context-vector features (positions in the output projection's input) of `heads`."""
    return torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long)


def allocate(curves: list[list[float]], remove: int) -> list[int]:
    """How many heads each block loses: the exact minimum of sum_b curves[b][r_b] with
    sum_b r_b = `remove` (a dynamic programme over blocks; curves[b][r] is block b's cost after
    losing r heads)."""
    inf = float("inf")
    best = [0.0] + [inf] * remove  # best[j]: least cost of removing j heads from the blocks so far
    choice: list[list[int]] = []
    for curve in curves:
        new, pick = [inf] * (remove + 1), [0] * (remove + 1)
        for j in range(remove + 1):
            for r in range(min(len(curve) - 1, j) + 1):
                c = best[j - r] + curve[r]
                if c < new[j]:  # strict: ties keep the fewer removals from this block
                    new[j], pick[j] = c, r
        best = new
        choice.append(pick)
    if best[remove] == inf:
        raise ValueError(f"cannot remove {remove} heads: the blocks hold {sum(len(c) - 1 for c in curves)}")
    counts, j = [0] * len(curves), remove
    for b in range(len(curves) - 1, -1, -1):
        counts[b] = choice[b][j]
        j -= counts[b]
    return counts
