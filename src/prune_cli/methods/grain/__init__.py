"""GRAIN, Yang et al., "Gradient-based Intra-attention Pruning on Pre-trained Language Models"
(ACL 2023, arXiv:2212.07634; official code airaria/GRAIN).

Kept together here so that the paper's code reads in one place:

* `method`: the `GRAIN` learner (running gradient importance of intra-head units, the cubic density
  schedule, structure regularisation);
* `factorize`: its embedding factorisation (`method.embed_rank`), applied at the start of the
  pruning stage.

What loading a factorised model needs (the config record, the two-factor module) is below the
methods, in `prune_cli.embeddings`.
"""

from __future__ import annotations

from prune_cli.methods.grain.factorize import factorize_embeddings
from prune_cli.methods.grain.method import GRAIN, density_at

__all__ = ["GRAIN", "density_at", "factorize_embeddings"]
