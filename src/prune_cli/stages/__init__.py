"""Every stage a pipeline may hold, and its properties, declared once.

Validation (which pipelines are allowed, how `trainer.total_epochs` is split) and the pipeline
(which stages change the model, how long a fine-tune trains) read this table, so a property cannot
drift between them: before it existed, a fine-tune after `prune_curve` trained
`trainer.recovery_epochs` when `trainer.total_epochs` was set and `trainer.epochs` when it was not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    #: trains the model the run evaluates (the `teacher` stage trains another one, `meta_train` SMP's
    #: pruner network with the model frozen)
    trains: bool = False
    #: leaves the run's model different from what it got (a checkpoint of the model follows it)
    changes_model: bool = False
    #: removes heads or units (at most one per pipeline)
    prunes: bool = False
    #: runs in one process only (timing, SMP's pruner training)
    single_process: bool = False


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("teacher"),
    Stage("meta_train", single_process=True),
    Stage("train", trains=True, changes_model=True),
    Stage("finetune", trains=True, changes_model=True),
    Stage("prune", changes_model=True, prunes=True),
    Stage("prune_curve", changes_model=True, prunes=True),
    Stage("prune_joint", trains=True, changes_model=True, prunes=True),
    Stage("learn_gates", trains=True, changes_model=True, prunes=True),
    Stage("evaluate"),
    Stage("export"),
    Stage("bench", single_process=True),
)}
NAMES = tuple(STAGES)
PRUNING = tuple(n for n, s in STAGES.items() if s.prunes)
TRAINING = tuple(n for n, s in STAGES.items() if s.trains)
CHANGING = tuple(n for n, s in STAGES.items() if s.changes_model)


def given_epochs(cfg, stages: list[str], index: int):
    """The epochs the config gives the training stage at `index` itself, or None (then it gets
    `trainer.epochs`, or its share of `trainer.total_epochs`): `method.gate_epochs` for
    learn_gates, `trainer.recovery_epochs` for a fine-tune after a pruning stage (any of them)."""
    stage = stages[index]
    if stage == "learn_gates":
        return cfg.method.get("gate_epochs")
    if is_recovery(stages, index):
        return cfg.trainer.get("recovery_epochs")
    return None


def is_recovery(stages: list[str], index: int) -> bool:
    """A fine-tune after a pruning stage (any of them): it trains `trainer.recovery_epochs`, and
    LoRA adapters instead of every weight when `trainer.recovery_lora.r` is set."""
    return stages[index] == "finetune" and any(STAGES[s].prunes for s in stages[:index])
