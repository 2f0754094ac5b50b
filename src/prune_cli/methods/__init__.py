"""Pruning methods, looked up by `method.name`; importing one never imports the others."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Pruner, ScoreContext, select_units, top_k_mask

METHODS = {
    "none": "prune_cli.methods.baselines:NoPruning",
    "random": "prune_cli.methods.baselines:RandomScores",
    "mask": "prune_cli.methods.mask:GivenMask",
    "michel": "prune_cli.methods.michel:MichelImportance",
    "magnitude": "prune_cli.methods.magnitude:Magnitude",
    "taylor": "prune_cli.methods.taylor:Taylor",
    "dsp": "prune_cli.methods.dsp:DSP",
    "ste": "prune_cli.methods.ste:STE",
    "voita": "prune_cli.methods.voita:Voita",
    "grain": "prune_cli.methods.grain:GRAIN",
    "smp": "prune_cli.methods.smp:SMP",
    "apd": "prune_cli.methods.apd:APD",
}


def get_pruner(cfg: DictConfig, space, seed: int) -> Pruner:
    name = cfg.get("name")
    if name not in METHODS:
        raise ConfigError("method", name, f"one of {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, space, seed)


__all__ = ["METHODS", "Pruner", "ScoreContext", "get_pruner", "select_units", "top_k_mask"]
