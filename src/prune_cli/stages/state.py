"""What the stages share: the run's `State` (checkpointed after every stage) and `Runner`, the part
of the run a stage may use.

A stage module is one function, `run(runner, state, index) -> dict` (the stage's record in
metrics.json); it reads and updates `state` and calls the runner's services (training, evaluation,
surgery), never the runner's resume or output machinery. `Runner` lists those services so that a
stage reads as a paragraph of the method it implements and the runner (prune_cli.pipeline) stays a
loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from prune_cli.units import UnitSpace


@dataclass
class State:
    model: torch.nn.Module
    tokenizer: object
    space: UnitSpace  # dense index of every unit kind + what the model holds now (heads.json speaks in it)
    mask: torch.Tensor  # bool [H]: kept heads (heads with a value dimension left)
    scores: torch.Tensor | dict | None = None  # [H], or {kind: scores} when units smaller than heads are ranked
    evals: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    params_dense: int = 0
    teacher: str | None = None  # folder of the fine-tuned dense teacher (distill=...)
    curve: list = field(default_factory=list)  # prune_curve: the metrics after each share of heads gated off

    def to_json(self) -> dict:
        return {
            "mask": self.mask.int().tolist(),
            "scores": None if self.scores is None else (
                {k: v.double().tolist() for k, v in self.scores.items()} if isinstance(self.scores, dict)
                else self.scores.double().tolist()),
            "evals": self.evals,
            "stages": self.stages,
            "params_dense": self.params_dense,
            "teacher": self.teacher,
            "curve": self.curve,
        }

    @classmethod
    def from_json(cls, saved: dict, model, tokenizer) -> State:
        """The state a committed stage left (progress.json), around the model folder it names."""
        space = UnitSpace.from_model(model)  # the record in its config: what the stages left
        state = cls(model, tokenizer, space, space.kept("head"))
        scores = saved["scores"]
        if isinstance(scores, dict):
            state.scores = {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}
        else:
            state.scores = None if scores is None else torch.tensor(scores, dtype=torch.float64)
        state.evals, state.stages, state.params_dense = saved["evals"], saved["stages"], saved["params_dense"]
        state.teacher = saved.get("teacher")
        state.curve = saved.get("curve", [])
        return state


class Runner(Protocol):
    """The run as a stage sees it (prune_cli.pipeline.Pipeline implements it)."""

    cfg: Any  # the composed config (DictConfig)
    plan: Any  # validate.Plan: stages, budget (keep / density / units), epochs per stage
    task: Any  # tasks.base.Task
    splits: Any  # the task's tokenised splits (train, eval)
    holdout: Any  # lossless mode (method.tolerance): rows carved from train before anything trains
    pruner: Any  # methods.base.Pruner of method=
    accelerator: Any
    logger: Any  # tracking.RunLogger
    cache: Any  # run_cache.RunCache: the sweep cache of dense fine-tunes and one-shot scores
    main: bool  # the process that writes
    run_dir: Path
    ckpt_dir: Path

    def say(self, line: str) -> None:
        """One line on stderr for the user."""

    def fit(self, state: State, index: int, name: str, epochs=None, distill: bool = True, **kw) -> dict:
        """Train `state.model` with the trainer settings (and `distill=`), resumable mid-stage."""

    def epochs(self, index: int, given=None):
        """The epochs of the training stage at `index` (its share of trainer.total_epochs)."""

    def evaluate(self, state: State, stage: str) -> dict:
        """The task's metrics on the evaluation split, logged and kept in state.evals."""

    def apply(self, state: State, target: UnitSpace) -> dict:
        """Remove physically what `target` does not keep; heads_kept and params."""

    def score_batches(self, state: State) -> Callable:
        """A fresh pass over the training batches, in order, on the model's device."""

    def agreed(self, compute: Callable):
        """`compute()` on every process, rank 0's result for all."""

    def cached_scores(self, state: State, compute: Callable):
        """One-shot scores from the sweep cache, or computed (and agreed) and stored there."""

    def holdout_metric(self, state: State) -> Callable[[], float]:
        """The primary metric on the carved hold-out rows (lossless mode)."""

    def outcome(self, state: State) -> dict:
        """What the model is and scores (metrics.json's head and the model card)."""
