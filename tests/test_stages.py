"""One Stage table (prune_cli.stages) is what validation and the pipeline read: every stage the
pipeline can run is declared there and the other way round, and the epochs a stage is given are the
same whether or not `trainer.total_epochs` splits the budget (issue 33: a fine-tune after
`prune_curve` got `trainer.recovery_epochs` only when total_epochs was set)."""

from __future__ import annotations

import itertools

import pytest
from omegaconf import OmegaConf

from prune_cli.pipeline import RUNNERS
from prune_cli.stages import NAMES, PRUNING, STAGES, TRAINING, given_epochs
from prune_cli.validate import split_epochs


def test_every_stage_the_pipeline_runs_is_declared_once():
    runs = set(RUNNERS)
    assert runs == set(NAMES)
    assert set(PRUNING) <= {n for n, s in STAGES.items() if s.changes_model}
    assert set(TRAINING) <= {n for n, s in STAGES.items() if s.changes_model}


def cfg(**trainer):
    return OmegaConf.create({"trainer": {"epochs": 3, "recovery_epochs": 0.5, "total_epochs": None, **trainer},
                             "method": {"gate_epochs": 2}})


@pytest.mark.parametrize("stages", [list(p) for n in (2, 3, 4) for p in itertools.product(
    ["train", "finetune", "prune", "prune_curve", "prune_joint", "learn_gates"], repeat=n)
    if sum(s in PRUNING for s in p) == 1])
def test_a_stage_gets_the_same_epochs_with_and_without_a_total_budget(stages):
    fixed = {i: given_epochs(cfg(), stages, i) for i, s in enumerate(stages) if s in TRAINING}
    free = [i for i, e in fixed.items() if e is None]
    total = sum(e for e in fixed.values() if e is not None) + 1.5 * len(free)
    if not free and not fixed:
        return
    split = split_epochs(cfg(total_epochs=total), stages)
    for i, epochs in fixed.items():
        assert split[i] == pytest.approx(1.5 if epochs is None else epochs), (stages, i)


def test_a_finetune_after_any_pruning_stage_is_a_recovery():
    for stage in PRUNING:
        assert given_epochs(cfg(), ["finetune", stage, "finetune"], 2) == 0.5
        assert given_epochs(cfg(), ["finetune", stage, "finetune"], 0) is None
