"""APD, Automatic Peer Distillation (Li et al., IJCAI 2023), as described in the paper's abstract; the
details are ours (no code is public; every decision and its reason: docs/methods/apd.md).

The method's two parts (allocation, peer distillation) and the learner that runs them, kept
together here so that the paper's code reads in one place:

* `allocation`: which heads each layer loses (per-layer cost of dropping heads, greedy elimination
  inside a layer, an exact dynamic programme across layers);
* `peer`: the peer-distillation loss (`distill=peer`), the kept heads of a layer trained to give the
  dense layer's output;
* `method`: the `APD` learner the pipeline runs (measures the model, fades the chosen heads out,
  the lossless search).

The names other modules use are re-exported here; `peer` is imported by `prune_cli.distill` directly.
"""

from __future__ import annotations

from prune_cli.methods.apd.allocation import LayerStats, allocate, elimination, head_features
from prune_cli.methods.apd.method import APD

__all__ = ["APD", "LayerStats", "allocate", "elimination", "head_features"]
