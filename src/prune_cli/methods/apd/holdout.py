"""APD's lossless mode (Li et al., IJCAI 2023): rows carved from the training split before
anything trains, on which the method checks that a pruned model still scores what the dense one
did (`method.tolerance`), and the warning when that check is finer than the rows can resolve."""

from __future__ import annotations

import logging
import math

import torch

from prune_cli.errors import ConfigError


def carve(train, holdout, seed: int):
    """(rows to train on, rows held out): a seeded split of the training rows, `holdout` a
    fraction in (0, 1) or a row count. The held-out rows never train anything."""
    n = len(train)
    size = int(holdout) if holdout >= 1 else max(1, round(float(holdout) * n))
    if not 0 < size < n:
        raise ConfigError("method.holdout", holdout, f"between 1 and {n - 1} of the {n} training rows")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return train.select(sorted(order[size:])), train.select(sorted(order[:size]))


def coarse_holdout(tolerance: float, rows: int) -> bool:
    """Warn (before anything trains) when the lossless tolerance is below the noise of a metric on
    the held-out rows -- one standard error of an accuracy is up to 0.5/sqrt(rows): there the search
    follows which examples flip (measured on 100 rows: the heads removed went from 17 to 63 over
    three seeds of SST-2, docs/results/apd.md)."""
    noise = 0.5 / math.sqrt(rows)
    if tolerance >= noise:
        return False
    logging.getLogger(__name__).warning(
        "method.tolerance=%g is below the noise of a metric on the %d held-out rows (~0.5/sqrt(%d) = %.3f): "
        "the lossless search will follow noise; hold out %d rows or more (method.holdout=) or raise the tolerance",
        tolerance, rows, rows, noise, math.ceil(0.25 / tolerance**2))
    return True
