"""The task families' metrics as local Hugging Face `evaluate` modules, shipped in the package.

The Hub's metric scripts (`evaluate.load("glue", "mrpc")`) need the network; these folders are
the same kind of module and load from disk:

    import evaluate, prune_cli.metrics
    glue = evaluate.load(prune_cli.metrics.path("glue"), "mrpc")
    glue.compute(predictions=[1, 0, 1], references=[1, 1, 1])   # {"accuracy": ..., "f1": ...}

so a user can combine them (`evaluate.combine`), add batches, or publish them like any evaluate
metric. The tasks compute their evaluation metrics through them (`load`), so the numbers in
metrics.json are what these modules return. The arithmetic itself stays in one place, the task
modules (`prune_cli.tasks.glue.METRICS`, `squad.squad_metrics`, `conll.entity_metrics`,
`translation.corpus_bleu`): the module files are the evaluate-facing wrappers around it.
"""

from __future__ import annotations

import functools
from pathlib import Path

NAMES = ("glue", "squad", "seqeval", "sacrebleu")


def path(name: str) -> str:
    """The folder `evaluate.load` takes for one of NAMES."""
    if name not in NAMES:
        raise ValueError(f"no local metric {name!r}: one of {', '.join(NAMES)}")
    return str(Path(__file__).resolve().parent / name)


@functools.cache
def load(name: str, config_name: str | None = None):
    """The evaluate module, loaded once per process and kept in memory (no Arrow cache files:
    every compute() gets all its predictions at once)."""
    import evaluate

    return evaluate.load(path(name), config_name, keep_in_memory=True)
