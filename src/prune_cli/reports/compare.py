"""Every method against a baseline at the same task and budget: the bootstrap table, and how many
distinct structures each side's seeds kept.

The mask count matters for reading the test: a method whose mask does not depend on the seed
(SMP's pruner, Zhang et al., AI Open 2021, arXiv:2011.03770; the dense model) has one mask however
many seeds it ran, so its seeds sample fine-tuning noise only and the test says nothing about its
masks as a sample.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from prune_cli.reports.bootstrap import BOOTSTRAPS, paired_bootstrap
from prune_cli.reports.resampled import resampled_metric
from prune_cli.reports.runs import budget_of, read_json, run_predictions, run_task
from prune_cli.reports.tables import budget_label


def comparison_table(runs: list[dict], baseline: str, resamples: int = 1000,
                     bootstrap: str = "two_level") -> tuple[str, list[dict]]:
    """Every method against `baseline` at the same task and budget (heads kept, or the density
    asked), paired by seed (`paired_bootstrap`), with the number of distinct masks among each side's seeds."""
    rows = []
    cells = defaultdict(dict)
    for r in runs:
        if r["value"] is not None and run_predictions(r) is not None:
            cells[(r["task"], r["method"], budget_of(r))][r["seed"]] = r
    order = sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2][0], -(kv[0][2][1] or 0)))
    for (task, method, key), by_seed in tqdm(order, desc=f"bootstrap vs {baseline}", unit="cell", leave=False,
                                             disable=None):  # None: a bar on a terminal only
        base = cells.get((task, baseline, key)) or {}
        if method == baseline:
            continue
        if not base:  # the baseline at another budget (a dense run): compare with it
            found = [v for (t, m, _), v in cells.items() if t == task and m == baseline]
            base = found[0] if len(found) == 1 else {}
        seeds = sorted(set(by_seed) & set(base))
        if not seeds:
            continue
        first = by_seed[seeds[0]]
        pairs = [(run_predictions(by_seed[s]), run_predictions(base[s])) for s in seeds]
        result = paired_bootstrap(pairs, _metric(first), resamples, bootstrap=bootstrap, resampled=_resampled(first))
        rows.append({"task": task, "method": method, "heads_kept": first["heads_kept"],
                     "budget": budget_label(key, False), "baseline": baseline, **result,
                     "masks": distinct_masks([by_seed[s] for s in seeds]),
                     "baseline_masks": distinct_masks([base[s] for s in seeds]), "scale": first["scale"]})
    if not rows:
        return "", rows
    out = [f"### paired bootstrap vs {baseline} ({BOOTSTRAPS[bootstrap]}, {resamples} resamples)\n",
           "| task | method | budget | delta | 95 % interval | p | seeds | masks |",
           "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        k = r["scale"]
        masks = " / ".join("?" if m is None else str(m) for m in (r["masks"], r["baseline_masks"]))
        out.append(f"| {r['task']} | {r['method']} | {r['budget']} | {k * r['delta']:+.1f} | "
                   f"[{k * r['low']:+.1f}, {k * r['high']:+.1f}] | {r['p']:.3f} | {r['seeds']} | {masks} |")
    out.append("")
    out.append("masks: distinct kept structures (heads.json) among the seeds compared, method / baseline.")
    if any(1 in (r["masks"], r["baseline_masks"]) for r in rows):
        out.append("1 distinct mask: every seed kept the same structure, so for that side the test is over "
                   "fine-tuning noise and examples only (n = 1 mask): it says nothing about the method's mask "
                   "distribution.")
    if bootstrap == "two_level":
        out.append("Two-level bootstrap: each resample draws the seeds (A and B of a seed paired) and the "
                   "evaluation examples with replacement; with 3 seeds the seed level is a crude estimate.")
    return "\n".join(out) + "\n", rows


def _metric(run: dict):
    """The run's primary metric as a function of (predictions, labels) on the split it is read
    from (MNLI's accuracy_mm: accuracy on the mismatched predictions), from its own task config."""
    task = run_task(run)
    name = task.primary_split()[1]
    return lambda p, y: task.metric_on(p, y)[name]


def _resampled(run: dict):
    """The run's primary metric on many bootstrap resamples at once (`resampled_metric`), or None."""
    task = run_task(run)
    return resampled_metric(task, task.primary_split()[1])


def _structure(run: dict) -> str | None:
    """What a run kept, comparable across runs: heads.json's head mask and, for runs that pruned
    units (GRAIN), their per-head dimensions and FFN widths; a curve point (no mask of its own): the
    heads its order had removed there (the lowest `curve_removed` scores). None: not recorded."""
    heads = read_json(Path(run["run"]) / "heads.json")
    if heads is None:
        return None
    if "curve_removed" in run:
        scores, scope = heads.get("scores"), heads.get("heads_scope", "all")
        if scores is None or scope != "all":
            return None
        flat = np.concatenate([np.ravel(np.asarray(s, dtype=np.float64)) for s in scores])
        return json.dumps(sorted(np.argsort(flat, kind="stable")[: run["curve_removed"]].tolist()))
    return json.dumps({"mask": heads.get("mask"), "units": heads.get("units")}, sort_keys=True)


def distinct_masks(runs: list[dict]) -> int | None:
    """How many different structures (`_structure`) `runs` (a method's seeds) kept: 1 = the same
    mask in every seed (SMP's scores do not depend on the seed; the dense model), so its seeds
    sample fine-tuning, not masks. None when a run's structure is not recorded."""
    structures = [_structure(r) for r in runs]
    return None if not structures or None in structures else len(set(structures))
