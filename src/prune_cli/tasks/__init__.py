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
}


def get_task(cfg: DictConfig) -> Task:
    family = cfg.get("family")
    if family not in FAMILIES:
        raise ConfigError("task.family", family, f"one of {sorted(FAMILIES)}")
    module, cls = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["FAMILIES", "Splits", "Task", "get_task"]
