"""Task families, looked up by `task.family` so that importing one never imports the others."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from prune_cli.errors import ConfigError
from prune_cli.tasks.base import Splits, Task

FAMILIES = {
    "glue": "prune_cli.tasks.glue:GlueTask",
    "squad": "prune_cli.tasks.squad:SquadTask",
    "conll": "prune_cli.tasks.conll:ConllTask",
    "translation": "prune_cli.tasks.translation:TranslationTask",
    "lm": "prune_cli.tasks.lm:PerplexityTask",
    "zeroshot": "prune_cli.tasks.zeroshot:ZeroShotTask",
}


def get_task(cfg: DictConfig, seed: int = 0) -> Task:
    """The task of `cfg` (the task group); `seed`: the run's, which draws `max_train_samples` rows
    unless `task.subsample_seed` is given."""
    family = cfg.get("family")
    if family not in FAMILIES:
        raise ConfigError("task.family", family, f"one of {sorted(FAMILIES)}")
    module, cls = FAMILIES[family].split(":")
    task = getattr(importlib.import_module(module), cls)(cfg)
    task.seed = int(seed)
    return task


__all__ = ["FAMILIES", "Splits", "Task", "get_task"]
