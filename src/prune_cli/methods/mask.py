"""A given head mask as the method: the heads kept by another run (its heads.json), or the heads it
removed (`method.invert`). Not a paper's method but the control a comparison of methods needs:
"is it the mask or the method?" -- e.g. SMP's mask against its inverse under the same per-layer
budget and the same fine-tune, or a published mask reproduced on another seed's fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prune_cli.errors import ConfigError
from prune_cli.methods.base import Pruner, ScoreContext


class GivenMask(Pruner):
    kind = "scorer"

    def mask(self) -> torch.Tensor:
        """bool [H] of the heads this method keeps, in the flat dense index."""
        from hydra.utils import to_absolute_path

        given = self.cfg.get("heads")
        if not given:
            raise ConfigError("method.heads", given, "the heads.json of a run whose kept heads to keep "
                              "(method.invert=true: the heads it removed)")
        path = Path(to_absolute_path(str(given)))
        try:
            record = json.loads(path.read_text())
            kept = torch.tensor([bool(x) for row in record["mask"] for x in row])
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError("method.heads", str(given), "a heads.json written by a prune-run run") from None
        if kept.numel() != self.space.total:
            raise ConfigError("method.heads", str(given), f"a heads.json of a model with {self.space.total} heads "
                              f"(this one has {kept.numel()})")
        return ~kept if bool(self.cfg.get("invert", False)) else kept

    def check_run(self, cfg, stages: list[str], keep: int | None, in_scope: int) -> None:
        wanted = int(self.mask().sum())
        if keep is not None and keep != wanted:
            raise ConfigError("heads", cfg.get("heads") if cfg.get("heads") is not None else keep,
                              f"{wanted}: the number of heads {cfg.method.heads} "
                              f"{'removed' if cfg.method.get('invert') else 'kept'}")
        if cfg.get("schedule", {}).get("name", "one_shot") != "one_shot":
            raise ConfigError("schedule", cfg.schedule.name, "one_shot with method=mask (the mask is given whole)")

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        return self.mask().double()
