"""The one protocol every pruning method speaks.

Two kinds, as in DESIGN.md:

* **scorers** (random, michel, ...) rank heads: `score(ctx)` returns one number per head (higher =
  more important). The `prune` stage keeps the top-K, in one shot or over several rounds that the
  schedule dictates, re-scoring with the already-pruned heads gated off.
* **learners** (dsp, ste, voita, ...) own trainable parameters that produce the gate values during
  training. The trainer calls the hooks below and never needs to know which method it is running.

Everything is in the flat head index of `prune_cli.heads.HeadSpace` (0..H-1, encoder self,
decoder self and cross-attention heads together), so one global top-K covers every architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class ScoreContext:
    """What a scorer may use. `batches` are TRAINING batches, never the evaluation split."""

    model: torch.nn.Module
    gates: Any  # prune_cli.gates.Gates installed on `model`
    batches: Callable[[], Iterable[dict]]  # a fresh pass over the training batches (on device)
    mask: torch.Tensor  # bool [H]: heads still kept (False = already pruned, gated to 0)
    accelerator: Any = None


class Pruner:
    kind: str = "scorer"  # "none" | "scorer" | "learner"
    #: pipeline used when the user does not give `pipeline=`
    default_pipeline: tuple[str, ...] = ("finetune", "prune", "finetune", "evaluate", "export")

    def __init__(self, cfg: DictConfig, space, seed: int = 0):
        self.cfg = cfg
        self.space = space
        self.seed = seed

    def setup(self, keep: int, eligible: torch.Tensor | None = None, schedule: DictConfig | None = None) -> None:
        """Called by the pipeline before training a learner: the number of heads to keep (within
        `eligible`, the heads that heads_scope lets the method prune; the others stay open) and
        the run's `schedule` config (how the budget falls to K during training)."""
        self.keep = keep
        self.eligible = eligible
        self.schedule = schedule

    # ---- scorers -------------------------------------------------------
    def score(self, ctx: ScoreContext) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a scorer")

    # ---- learners ------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters of the method itself (their own optimizer group)."""
        return []

    def lr(self) -> float | None:
        """Learning rate for `parameters()`; None = the trainer's."""
        return None

    def gate_values(self, step: int, total_steps: int, training: bool = True) -> torch.Tensor | None:
        """Gate values [H] for the next forward pass (None = all open). Called every step."""
        return None

    def extra_loss(self) -> torch.Tensor | float:
        """A term added to the task loss (e.g. an L0 penalty); 0.0 if none."""
        return 0.0

    def final_mask(self, k: int) -> torch.Tensor:
        """bool [H] with exactly `k` True: the heads to keep when training ends."""
        raise NotImplementedError(f"{type(self).__name__} is not a learner")

    def scores(self) -> torch.Tensor | None:
        """The per-head numbers recorded in heads.json (logits, scores...)."""
        return None

    def log_stats(self) -> dict[str, float]:
        """Per-step numbers for the logger (temperature, expected open gates, entropy...)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def top_k_mask(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """bool mask with exactly k True at the k largest scores (ties broken by lower index).

    `eligible` (bool) restricts the choice; heads outside it are never kept... unless the caller
    keeps them separately (heads_scope keeps out-of-scope heads).
    """
    scores = scores.detach().double().flatten()
    if eligible is not None:
        scores = torch.where(eligible, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    order = torch.argsort(-scores, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:k]] = True
    return mask
