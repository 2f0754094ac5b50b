"""Task metrics on many bootstrap resamples at once.

A resample is a vector of draw counts over the examples, so every metric that is a function of
sums over examples -- accuracy, binary F1, Matthews correlation, Pearson's r, Spearman's rho (via
ranks from the counts), CoNLL's micro entity F1 (per-sentence counts: seqeval's entities never
cross a sentence) and SQuAD EM / F1 (the mean of per-question scores) -- is one matrix product
with the (R, n) count matrix instead of R calls of the task's metric: 1,000 resamples of a GLUE
dev set take milliseconds, not minutes. Each formula is the one the task itself computes
(prune_cli.tasks: scikit-learn's `f1_score` / `matthews_corrcoef` and scipy's `pearsonr` /
`spearmanr`, as Hugging Face's GLUE metric; seqeval, github.com/chakki-works/seqeval; the official
SQuAD evaluation script, rajpurkar.github.io/SQuAD-explorer); `paired_bootstrap` checks each
against the task's metric on the full sample and falls back to calling the task where they differ.
"""

from __future__ import annotations

import functools

import numpy as np


class Resamples:
    """R bootstrap resamples of n examples: `idx` (R, n), the examples drawn; `counts` (R, n), how
    often each example was drawn in each resample -- a metric that is a function of sums over the
    examples (counts, sums of products, per-sentence entity counts) is a matrix product with it."""

    def __init__(self, idx):
        self.idx = np.asarray(idx)
        self.n = self.idx.shape[1]

    @functools.cached_property
    def counts(self) -> np.ndarray:
        r, n = self.idx.shape
        flat = (self.idx + n * np.arange(r)[:, None]).ravel()
        return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)

    def constant(self, values: np.ndarray) -> np.ndarray:
        """(R,) bool: the resample drew one value only (a correlation is then defined as 0)."""
        drawn = values[self.idx]
        return drawn.min(axis=1) == drawn.max(axis=1)


def _divide(a, b) -> np.ndarray:
    """a / b, 0 where b is 0 (sklearn's zero_division=0, the task code's `x / y if y else 0.0`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _accuracy(p, y):
    right = (np.asarray(p) == np.asarray(y)).astype(np.float64)
    return lambda rs: rs.counts @ right / rs.n


def _f1(p, y):
    """Binary F1 of class 1 as sklearn computes it: 2 tp / (gold positives + predicted positives)."""
    p, y = np.asarray(p), np.asarray(y)
    if not set(np.unique(np.concatenate([p, y])).tolist()) <= {0, 1}:
        return None  # not a binary task: sklearn's own call, one resample at a time
    tp, true, pred = ((p == 1) & (y == 1)).astype(float), (y == 1).astype(float), (p == 1).astype(float)
    return lambda rs: _divide(2.0 * (rs.counts @ tp), 1.0 * (rs.counts @ true) + rs.counts @ pred)


def _matthews(p, y):
    """Matthews correlation (binary or multiclass) as sklearn computes it from the confusion sums."""
    p, y = np.asarray(p), np.asarray(y)
    classes = np.unique(np.concatenate([p, y]))
    right = (p == y).astype(float)
    true = np.stack([(y == c).astype(float) for c in classes], axis=1)  # (n, classes)
    pred = np.stack([(p == c).astype(float) for c in classes], axis=1)

    def on(rs):
        t, q, s = rs.counts @ true, rs.counts @ pred, float(rs.n)
        cov_tp = (rs.counts @ right) * s - (t * q).sum(axis=1)
        cov_pp, cov_tt = s**2 - (q * q).sum(axis=1), s**2 - (t * t).sum(axis=1)
        both = cov_pp * cov_tt
        return np.divide(cov_tp, np.sqrt(both), out=np.zeros_like(both), where=both != 0)

    return on


def _weighted_correlation(w: np.ndarray, x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """Pearson's r per row of weights `w` (R, n) between x and y ((n,) or (R, n), centred near 0)."""
    def total(v):
        return w @ v if v.ndim == 1 else (w * v).sum(axis=1)

    sx, sy = total(x), total(y)
    cxy = total(x * y) - sx * sy / n
    vxx, vyy = total(x * x) - sx * sx / n, total(y * y) - sy * sy / n
    both = vxx * vyy
    r = np.divide(cxy, np.sqrt(np.maximum(both, 0.0)), out=np.zeros_like(cxy), where=both > 0)
    return np.clip(r, -1.0, 1.0)


def _pearson(p, y):
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    pc, yc = p - p.mean(), y - y.mean()

    def on(rs):
        r = _weighted_correlation(rs.counts, pc, yc, rs.n)
        return np.where(rs.constant(p) | rs.constant(y), 0.0, r)

    return on


def _ranks(values: np.ndarray, rs: Resamples) -> np.ndarray:
    """(R, n): each example's rank among the examples a resample drew (ties: the mean rank, as
    scipy's rankdata), from the draw counts alone: the values below it plus (its group's count + 1) / 2."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    groups = np.add.reduceat(rs.counts[:, order], np.flatnonzero(new), axis=1)  # (R, distinct values)
    rank = np.cumsum(groups, axis=1) - groups + (groups + 1) / 2
    out = np.empty_like(rs.counts)
    out[:, order] = rank[:, np.cumsum(new) - 1]
    return out


def _spearman(p, y):
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def on(rs):
        middle = (rs.n + 1) / 2
        r = _weighted_correlation(rs.counts, _ranks(p, rs) - middle, _ranks(y, rs) - middle, rs.n)
        return np.where(rs.constant(p) | rs.constant(y), 0.0, r)

    return on


def _entity_scores(p, y, name: str, tags: tuple):
    """CoNLL's micro entity scores from per-sentence counts (seqeval's entities never cross a
    sentence: conll.sentence_counts), summed over each resample's sentences."""
    from prune_cli.tasks.conll import sentence_counts

    counts = np.array([sentence_counts(tuple(g), tuple(q), tags) for g, q in zip(y, p)], dtype=np.float64)

    def on(rs):
        right, predicted, gold, words_right, words = (rs.counts @ counts).T
        precision, recall = _divide(right, predicted), _divide(right, gold)
        scores = {"precision": precision, "recall": recall, "accuracy": _divide(words_right, words),
                  "f1": _divide(2 * precision * recall, precision + recall)}
        return scores[name]

    return on


def _squad_scores(p, y, name: str, version_2: bool):
    """SQuAD EM / F1 (0-100): the mean of per-question scores (squad.example_scores)."""
    from prune_cli.tasks.squad import example_scores

    column = {"exact_match": 0, "f1": 1}[name]
    scores = np.array([example_scores(q, tuple(g), version_2)[column] for q, g in zip(p, y)], dtype=np.float64)
    return lambda rs: 100.0 * (rs.counts @ scores) / rs.n


GLUE_RESAMPLED = {"accuracy": _accuracy, "f1": _f1, "matthews_correlation": _matthews,
                  "pearson": _pearson, "spearmanr": _spearman}


def resampled_metric(task, name: str):
    """`(predictions, labels) -> (Resamples -> (R,) metric values)`: the task's metric `name` on every
    resample at once, from counts and sums (GLUE's metrics), per-sentence entity counts (CoNLL) or
    per-question scores (SQuAD); the factory may answer None for predictions it cannot take (F1 of
    a non-binary task). None: no such form, the task's `metric_on` is called once per resample."""
    from prune_cli.tasks.conll import ConllTask
    from prune_cli.tasks.glue import GlueTask
    from prune_cli.tasks.squad import SquadTask

    if isinstance(task, ConllTask) and name in ("precision", "recall", "f1", "accuracy"):
        return functools.partial(_entity_scores, name=name, tags=tuple(task.labels))
    if isinstance(task, SquadTask) and name in ("exact_match", "f1"):
        return functools.partial(_squad_scores, name=name, version_2=task.version_2)
    if isinstance(task, GlueTask):
        return GLUE_RESAMPLED.get(name)
    return None
