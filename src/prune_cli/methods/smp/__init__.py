"""SMP, Zhang et al., "Know What You Don't Need: Single-Shot Meta-Pruning for Attention Heads"
(AI Open 2021, arXiv:2011.03770; official code thunlp/SMP).

A small CNN (the *pruner*) looks at each head's attention map in the PRETRAINED model and scores
the head; trained once on the unlabelled text of several tasks, it then picks heads for a new task
before any fine-tuning. The method is three steps, one module each, so that the paper's code reads
in one place:

* `network`: the pruner network, the attention maps it reads and pruner.pt, the file it is kept in
  (shared by the two stages below);
* `meta_train`: the `meta_train` stage, which trains the network with the model frozen;
* `method`: the `SMP` scorer the `prune` stage runs (scores averaged over training examples, the
  paper's per-layer budget).

The names other modules use are re-exported here. `meta_train` is not: only its stage imports it
(`from prune_cli.methods.smp import meta_train` gives the module), and re-exporting its function of
the same name would hide the module.
"""

from __future__ import annotations

from prune_cli.methods.smp.method import BUDGETS, SMP
from prune_cli.methods.smp.network import (
    CHANNELS,
    FORMAT,
    MapScorer,
    attention_maps,
    eager_attention,
    fit_canvas,
    geometry,
    load_network,
    model_inputs,
    read_pruner,
    save_pruner,
)

__all__ = ["BUDGETS", "CHANNELS", "FORMAT", "SMP", "MapScorer", "attention_maps", "eager_attention", "fit_canvas",
           "geometry", "load_network", "model_inputs", "read_pruner", "save_pruner"]
