"""The paired bootstrap of one method against another, over seeds and evaluation examples.

Why two levels: a pruned model's score varies with its seed (the mask, where the method's mask
depends on it, and the fine-tuning) as well as with the evaluation sample, and a paired bootstrap
over examples alone (Koehn, 2004, "Statistical Significance Tests for Machine Translation
Evaluation", EMNLP) treats the seeds as fixed: its interval says nothing about another seed. Here
each resample draws the seeds (a method and its baseline paired by seed) and the examples (one
draw of examples serves every seed: they are crossed, not nested), resampling at both levels as in
Davison & Hinkley's bootstrap for data with more than one source of variation (1997, "Bootstrap
Methods and their Application", section 3.8). The examples-only test stays available as
`bootstrap="examples"`.
"""

from __future__ import annotations

import numpy as np

from prune_cli.reports.resampled import Resamples

BOOTSTRAPS = {
    "two_level": "two-level bootstrap: seeds and examples resampled",
    "examples": "bootstrap of the evaluation examples: seeds paired, not resampled",
}


def paired_bootstrap(pairs: list[tuple[dict, dict]], metric, resamples: int = 1000, seed: int = 0,
                     bootstrap: str = "two_level", resampled=None) -> dict:
    """Paired bootstrap of method A against B: `pairs` = [(predictions of A, of B)] per seed, on the
    same examples; `metric(predictions, labels)` is the task's own. delta = mean over seeds of
    metric(A) - metric(B); the observed one is on every example and every seed once.

    Each resample draws n example indices with replacement (one draw for every seed and both
    methods: the examples are crossed with the seeds); `bootstrap="two_level"` also draws the
    seeds with replacement (A and B of a seed stay paired; a seed drawn twice counts twice), so
    the interval holds the spread between seeds -- fine-tuning noise, and different masks where
    a method's mask depends on the seed -- and not only the examples'; `"examples"` keeps every
    seed once (the collector's test before issue 31). The examples drawn are the same in both
    (`default_rng(seed)`, as before), the seeds come from a stream of their own.

    `resampled`: `resampled_metric`'s factory, the metric on all resamples at once; it is checked
    against `metric` on the full sample, and the resamples fall back to calling `metric` where it
    is None or disagrees. Returns the observed delta, its 95 % percentile interval, the two-sided
    p-value of delta = 0, the seeds and examples."""
    if bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap must be one of {sorted(BOOTSTRAPS)}, not {bootstrap!r}")

    def examples(values: list):  # one entry per example: a number, or a sentence's tags (CoNLL)
        if values and isinstance(values[0], (list, tuple)):
            out = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                out[i] = v
            return out
        return np.asarray(values)

    if any(a["label"] != pairs[0][0]["label"] or b["label"] != pairs[0][0]["label"] for a, b in pairs):
        raise ValueError("paired bootstrap needs runs evaluated on the same examples")
    labels = examples(pairs[0][0]["label"])
    preds = [(examples(a["prediction"]), examples(b["prediction"])) for a, b in pairs]
    observed = float(np.mean([metric(pa, labels) - metric(pb, labels) for pa, pb in preds]))

    n, k = len(labels), len(preds)
    draws = Resamples(np.random.default_rng(seed).integers(0, n, (resamples, n)))
    everything = Resamples(np.arange(n)[None, :])

    def on_resamples(p) -> np.ndarray:
        fast = resampled(p, labels) if resampled is not None else None
        if fast is not None and not np.isclose(fast(everything)[0], metric(p, labels), rtol=1e-9, atol=1e-12):
            fast = None  # not the task's metric on these predictions: trust the task's
        if fast is None:
            return np.array([metric(p[i], labels[i]) for i in draws.idx], dtype=np.float64)
        return fast(draws)

    diffs = np.stack([on_resamples(pa) - on_resamples(pb) for pa, pb in preds], axis=1)  # (resamples, seeds)
    if bootstrap == "examples":
        deltas = diffs.mean(axis=1)
    else:
        picks = np.random.default_rng([seed, 1]).integers(0, k, (resamples, k))
        weights = np.stack([np.bincount(row, minlength=k) for row in picks]).astype(np.float64)
        deltas = (weights * diffs).sum(axis=1) / k
    p = min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
    return {"delta": observed, "low": float(np.percentile(deltas, 2.5)), "high": float(np.percentile(deltas, 97.5)),
            "p": float(p), "seeds": k, "examples": n, "bootstrap": bootstrap, "resamples": resamples}
