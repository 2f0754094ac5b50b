"""Turn a folder of prune-run runs (a `multirun/...` sweep, or several) into the paper-style
table and curve: primary metric against heads kept, one row/line per method.

    python scripts/collect_runs.py multirun/2026-11-23_10-00-00 --out results/dsp_curve

writes `<out>.md` (one table per task), `<out>.json` (every run's numbers) and `<out>.png`
(one panel per task, metric vs % of heads kept -- or of weights, for density runs -- mean +- std
over seeds, in the style of the DSP paper's figure 2; with `--published`, the papers' points
of the same task and metric are drawn over it).
A method's label includes its regime when it has one (dsp/joint, dsp/pipelined).
A prune_curve run (Michel's figure: one fine-tuned model evaluated after each 5 % of heads removed,
no retraining) gives one row per point, labelled `<method>/curve` (`--baseline random/curve`
compares two orders at every point from curve_predictions.json).
`--baseline METHOD` adds a paired bootstrap of every method against METHOD at each budget
(`<out>_bootstrap.json`): by default two-level, the seeds and the evaluation examples both
resampled (`--bootstrap examples`: the examples only, as before), with the number of distinct
masks among each side's seeds (1: the seeds sample fine-tuning, not masks).
"""

from __future__ import annotations

import argparse
import functools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

# Task families whose metrics.json already holds percentages (official SQuAD EM/F1, sacreBLEU);
# every other primary metric is a fraction and is shown x100.
PERCENT_FAMILIES = {"squad", "translation"}


def find_runs(roots: list[Path], label_keys: tuple[str, ...] = ()) -> list[dict]:
    """One record per finished run (a folder holding metrics.json) under `roots`; `label_keys`
    (config keys, e.g. distill.name) are added to the label of a method whose runs differ in them,
    so ablations of one method (apd with distill=none) get rows of their own."""
    runs = []
    for root in roots:
        for metrics_file in sorted(root.rglob("metrics.json")):
            if any(part.startswith("previous-") for part in metrics_file.relative_to(root).parts[:-1]):
                continue  # results a rerun with +overwrite=true replaced (kept, not counted)
            run_dir = metrics_file.parent
            metrics = json.loads(metrics_file.read_text())
            if metrics.get("primary") is None and not metrics.get("curve"):
                continue  # evaluated nothing (SMP's meta-training run): no cell of any table
            cfg_file = run_dir / ".hydra" / "config.yaml"
            cfg = OmegaConf.load(cfg_file) if cfg_file.is_file() else OmegaConf.create({})
            method = metrics.get("method") or OmegaConf.select(cfg, "method.name", default="?")
            regime = OmegaConf.select(cfg, "method.regime", default=None)
            if regime and OmegaConf.select(cfg, "method.pipelines", default=None) is not None and not cfg.get("pipeline"):
                method = f"{method}/{regime}"
            labels = {key: OmegaConf.select(cfg, key, default=None) for key in label_keys}
            record = {
                "run": str(run_dir),
                "task": metrics.get("task"),
                "method": method,
                "heads_kept": metrics.get("heads_kept"),
                "heads_total": metrics.get("heads_total"),
                "metric": metrics.get("primary_metric"),
                "value": metrics.get("primary"),
                "scale": 1.0 if OmegaConf.select(cfg, "task.family", default=None) in PERCENT_FAMILIES else 100.0,
                "params": metrics.get("params"),
                "seed": metrics.get("seed"),
                "wall_time_s": metrics.get("wall_time_s"),
                "compute": metrics.get("compute"),
                "model": metrics.get("model"),
                "density": metrics.get("density"),
                "density_target": OmegaConf.select(cfg, "density", default=None),
                "heads_left": metrics.get("heads_left"),
                "params_encoder": metrics.get("params_encoder"),
                "bench": _bench(run_dir, metrics),
                "eval": metrics.get("eval") or {},
                "tolerance": OmegaConf.select(cfg, "method.tolerance", default=None),
            }
            record["labels"] = labels
            runs.extend(_curve_points(record, metrics) if metrics.get("curve") else [record])
    return _label(runs, label_keys)


def _label(runs: list[dict], label_keys: tuple[str, ...]) -> list[dict]:
    """Add to each method's label the `label_keys` whose value differs among that method's runs
    (apd distill=peer / distill=none); a key every run of the method shares (its default) is left out."""
    values = defaultdict(lambda: defaultdict(set))
    for r in runs:
        for key, value in r["labels"].items():
            values[r["method"]][key].add(str(value))
    for r in runs:
        suffix = ""
        for key in label_keys:
            value = r["labels"].get(key)
            if value is not None and len(values[r["method"]][key]) > 1:
                group, _, name = key.rpartition(".")
                suffix += f" {group if name == 'name' else name}={value}"
        r["method"] += suffix
    return runs


def _bench(run_dir: Path, metrics: dict) -> dict | None:
    """The run's bench stage, if it had one: the pruned model's measured and FLOP speedup over the
    dense model at the first timed setting (bench.json; metrics.json keeps only the measured one)."""
    rows = [r for r in (_read_json(run_dir / "bench.json") or {}).get("results", []) if r.get("variant") != "dense"]
    if rows:
        r = rows[0]
        return {"speedup": r["speedup"], "flop_speedup": r.get("flop_speedup"),
                "setting": f"b{r['batch']}x{r['seq_len']} {r['dtype']} {r['device']}"}
    for stage in metrics.get("stages") or []:
        if isinstance(stage.get("speedup"), dict) and stage["speedup"]:
            setting, speedup = next(iter(stage["speedup"].items()))
            return {"speedup": speedup, "flop_speedup": None, "setting": setting}
    return None


def budget_of(run: dict) -> tuple[str, float]:
    """The budget a run was given, the key runs are grouped and paired by: the requested density
    (GRAIN-style runs: their heads left vary by seed) or the heads kept."""
    if run.get("density_target") is not None:
        return "density", float(run["density_target"])
    return "heads", run["heads_kept"]


def _column(run: dict, density_task: bool) -> tuple[str, float]:
    """The table column of a run: its budget, except that in a task with density runs a dense run
    (the teacher) sits at density 100 %."""
    key = budget_of(run)
    if density_task and key[0] == "heads" and run["heads_kept"] == run["heads_total"] \
            and run.get("density") in (None, 1.0):
        return "density", 1.0
    return key


def _budget_label(key: tuple[str, float], density_task: bool) -> str:
    kind, value = key
    if kind == "density":
        return f"{100 * value:g} %"
    return f"{value} heads" if density_task else str(value)


def _curve_points(run: dict, metrics: dict) -> list[dict]:
    """A prune_curve run (Michel's figure) as one record per point, labelled `<method>/curve`:
    each point is the model evaluated WITHOUT retraining, so it gets rows of its own, apart from
    the same method fine-tuned after pruning; the run's final pruned evaluation repeats its point at K."""
    points = []
    for point in metrics["curve"]:
        points.append({**run, "method": run["method"] + "/curve", "heads_kept": point["heads_kept"],
                       "value": point["metrics"].get(run["metric"]), "eval": point["metrics"],
                       "curve_removed": point["removed"], "density": None, "params": None})  # gated, not cut
    return points


def table(runs: list[dict]) -> str:
    """Markdown: per task, methods as rows, heads kept as columns (mean +- sample std over seeds,
    and n, when a cell has several runs). Runs without a final metric (a meta_train run) are left out."""
    out = []
    by_task = defaultdict(list)
    for r in runs:
        if r["value"] is not None:
            by_task[r["task"]].append(r)
    for task, rows in sorted(by_task.items()):
        metric = rows[0]["metric"]
        density_task = any(budget_of(r)[0] == "density" for r in rows)
        keys = [_column(r, density_task) for r in rows]
        columns = sorted(set(keys), key=lambda k: (k[0] != "density", -k[1]))
        cells = defaultdict(list)
        for r, key in zip(rows, keys):
            cells[(r["method"], key)].append(r["scale"] * r["value"])
        what = "weights kept (density)" if density_task else f"heads kept of {rows[0]['heads_total']}"
        out.append(f"### {task} ({metric}, {what})\n")
        out.append("| method | " + " | ".join(_budget_label(c, density_task) for c in columns) + " |")
        out.append("|---|" + "---:|" * len(columns))
        for method in sorted({r["method"] for r in rows}):
            out.append(f"| {method} | " + " | ".join(cell(cells.get((method, c))) for c in columns) + " |")
        out.append("")
    return "\n".join(out)


def structure_table(runs: list[dict]) -> str:
    """Markdown, for density runs (GRAIN): what each method left at each density -- heads that
    still hold a value dimension, the achieved density, encoder parameters -- and, where the run had
    a bench stage, the pruned model's measured / FLOP speedup (means over seeds; per seed in brackets)."""
    rows = [r for r in runs if r["value"] is not None and budget_of(r)[0] == "density"]
    if not rows:
        return ""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"], budget_of(r)[1])].append(r)
    out = ["### what is left (density runs)\n",
           "| task | method | density asked | n | heads left | density | encoder params | speedup measured / FLOP | setting |",
           "|---|---|---:|---:|---|---:|---:|---|---|"]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    for (task, method, target), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][1])):
        group = sorted(group, key=lambda r: r["seed"] or 0)
        heads = [r["heads_left"] for r in group]
        heads_text = "" if None in heads else f"{mean(heads):.1f} ({', '.join(map(str, heads))})"
        density = mean(r["density"] for r in group)
        params = mean(r["params_encoder"] for r in group)
        benches = [r["bench"] for r in group if r.get("bench")]
        speed = ""
        if benches:
            measured, flops = mean(b["speedup"] for b in benches), mean(b["flop_speedup"] for b in benches)
            per_seed = ", ".join(f"{b['speedup']:.2f}" for b in benches)
            speed = f"{measured:.2f}x" + ("" if flops is None else f" / {flops:.2f}x") + f" ({per_seed})"
        out.append(f"| {task} | {method} | {100 * target:g} % | {len(group)} | {heads_text} | "
                   f"{'' if density is None else f'{density:.4f}'} | "
                   f"{'' if params is None else f'{params / 1e6:.2f}M'} | {speed} | "
                   f"{benches[0]['setting'] if benches else ''} |")
    return "\n".join(out) + "\n"


def compute_table(runs: list[dict]) -> str:
    """Markdown: what each method cost per run (metrics.json `compute`), mean over its runs;
    `received` adds what the run's cache hits cost when they were computed (compute `cached`: a
    dense fine-tune or scores shared through the sweep cache), i.e. the training its model got."""
    keys = ("optimizer_steps", "epochs", "received_epochs", "examples", "forward_passes", "backward_passes",
            "received_backward", "wall_time_s")
    by_method = defaultdict(dict)
    for r in runs:
        if r.get("compute"):  # by run folder: a curve run's points are one run
            c, cached = r["compute"], r["compute"].get("cached") or {}
            by_method[(r["task"], r["method"])][r["run"]] = {
                **c, "received_epochs": c.get("epochs", 0) + cached.get("epochs", 0),
                "received_backward": c.get("backward_passes", 0) + cached.get("backward_passes", 0)}
    by_method = {key: list(v.values()) for key, v in by_method.items()}
    if not by_method:
        return ""
    out = ["### compute per run (mean)\n", "| task | method | runs | " + " | ".join(keys) + " |",
           "|---|---|---:|" + "---:|" * len(keys)]
    for (task, method), rows in sorted(by_method.items()):
        means = [sum(r.get(k, 0) for r in rows) / len(rows) for k in keys]
        out.append(f"| {task} | {method} | {len(rows)} | " + " | ".join(
            f"{m:.2f}" if k in ("epochs", "received_epochs", "wall_time_s") else f"{m:.0f}" for k, m in zip(keys, means)) + " |")
    return "\n".join(out) + "\n"


@functools.cache
def _task_of(run_dir: str):
    from prune_cli.tasks import get_task

    return get_task(_config_of(run_dir).task)


def _task(run: dict):
    return _task_of(run["run"])


@functools.lru_cache(maxsize=64)
def _read_json(path: Path):
    """A run's predictions file, read once (a curve run's file serves each of its points)."""
    return json.loads(path.read_text()) if path.is_file() else None


def _predictions(run: dict):
    """The run's per-example predictions on its primary split (a curve point: that point's)."""
    curve = "curve_removed" in run
    record = _read_json(Path(run["run"]) / ("curve_predictions.json" if curve else "predictions.json"))
    if record is None:
        return None
    if curve:
        record = next((p for p in record["points"] if p["removed"] == run["curve_removed"]), None)
        if record is None:
            return None
    split = _task(run).primary_split()[0]  # the split the primary metric is read from (MNLI: matched or mm)
    return record["splits"][split if split in record["splits"] else next(iter(record["splits"]))]


def _metric(run: dict):
    """The run's primary metric as a function of (predictions, labels) on the split it is read
    from (MNLI's accuracy_mm: accuracy on the mismatched predictions), from its own task config."""
    task = _task(run)
    name = task.primary_split()[1]
    return lambda p, y: task.metric_on(p, y)[name]


def _resampled(run: dict):
    """The run's primary metric on many bootstrap resamples at once (`resampled_metric`), or None."""
    task = _task(run)
    return resampled_metric(task, task.primary_split()[1])


# ---------------------------------------------------------------------- the paired bootstrap
BOOTSTRAPS = {
    "two_level": "two-level bootstrap: seeds and examples resampled",
    "examples": "bootstrap of the evaluation examples: seeds paired, not resampled",
}


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


# ---------------------------------------------------------------------- distinct masks
def _structure(run: dict) -> str | None:
    """What a run kept, comparable across runs: heads.json's head mask and, for runs that pruned
    units (GRAIN), their per-head dimensions and FFN widths; a curve point (no mask of its own): the
    heads its order had removed there (the lowest `curve_removed` scores). None: not recorded."""
    heads = _read_json(Path(run["run"]) / "heads.json")
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


def comparison_table(runs: list[dict], baseline: str, resamples: int = 1000,
                     bootstrap: str = "two_level") -> tuple[str, list[dict]]:
    """Every method against `baseline` at the same task and budget (heads kept, or the density
    asked), paired by seed (`paired_bootstrap`), with the number of distinct masks among each side's seeds."""
    rows = []
    cells = defaultdict(dict)
    for r in runs:
        if r["value"] is not None and _predictions(r) is not None:
            cells[(r["task"], r["method"], budget_of(r))][r["seed"]] = r
    for (task, method, key), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2][0],
                                                                               -(kv[0][2][1] or 0))):
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
        pairs = [(_predictions(by_seed[s]), _predictions(base[s])) for s in seeds]
        result = paired_bootstrap(pairs, _metric(first), resamples, bootstrap=bootstrap, resampled=_resampled(first))
        rows.append({"task": task, "method": method, "heads_kept": first["heads_kept"],
                     "budget": _budget_label(key, False), "baseline": baseline, **result,
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


def load_published(source: Path) -> list[dict]:
    """Every entry of the YAML files in `source` (published/, or one file of it: a paper's numbers
    alone, where another paper's dense rows would stand beside runs of a different study), each with
    its file's provenance."""
    rows = []
    for path in [source] if source.is_file() else sorted(source.glob("*.yaml")):
        doc = OmegaConf.to_container(OmegaConf.load(path))
        settings = doc.get("setting") or {}
        for entry in doc.get("entries", []):
            rows.append({"paper": doc["paper"], "table": doc.get("table"), "model": doc.get("model"),
                         "read": doc.get("read"), "file": path.name,
                         "setting": settings.get(entry["method"]) or {}, **entry})
    return rows


def _matches(run: dict, budget: dict) -> bool:
    """Does `run` have the budget of a published entry? (density within 0.005, heads kept within 1 %
    of the heads, the lossless mode)."""
    if "density" in budget:
        dense = budget["density"] >= 1.0
        if dense:
            return run["density"] in (None, 1.0) and run["heads_kept"] == run["heads_total"]
        return run["density"] is not None and abs(run["density"] - budget["density"]) <= 0.005
    if "heads_kept_fraction" in budget:
        return bool(run["heads_total"]) and abs(run["heads_kept"] / run["heads_total"]
                                                 - budget["heads_kept_fraction"]) <= 0.01
    if budget.get("lossless"):
        return run.get("tolerance") is not None
    return False


def _has_setting(run: dict, setting: dict) -> bool:
    """Was `run` configured as the paper's method (the published file's `setting`: config keys ->
    values, e.g. GRAIN's units null, method.alpha 0.3)? Its ablations are not the paper's method;
    a key the run's config lacks is not held against it."""
    cfg = _config_of(run["run"])
    missing = object()
    return all(got is missing or str(got) == str(value) for key, value in setting.items()
               for got in [OmegaConf.select(cfg, key, default=missing)])


@functools.cache
def _config_of(run_dir: str):
    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else OmegaConf.create({})


def _ours(run: dict, metric: str):
    if metric == "heads_removed_pct":
        return 100.0 * (1 - run["heads_kept"] / run["heads_total"]) if run["heads_total"] else None
    value = run["eval"].get(metric, run["value"] if metric == run["metric"] else None)
    return None if value is None else run["scale"] * value


def paper_table(runs: list[dict], published: list[dict]) -> tuple[str, list[dict]]:
    """Markdown + rows: each published number beside ours at the same task, method and budget (mean
    over seeds; task "*" = mean over our tasks), the delta, and whether the setting matches."""
    rows = []
    ours_tasks = {r["task"] for r in runs}
    ours_methods = {r["method"].split()[0].split("/")[0] for r in runs}
    for pub in published:
        if pub["method"] not in ours_methods or (pub["task"] != "*" and pub["task"] not in ours_tasks):
            continue  # a published number with no run of ours to stand beside
        mine = [r for r in runs if r["method"].split()[0].split("/")[0] == pub["method"]
                and (pub["task"] == "*" or r["task"] == pub["task"]) and _matches(r, pub.get("budget") or {})
                and _has_setting(r, pub.get("setting") or {})]
        values = [v for v in (_ours(r, pub["metric"]) for r in mine) if v is not None]
        if pub["task"] == "*" and values:  # mean over tasks of the per-task means
            per_task = defaultdict(list)
            for r in mine:
                v = _ours(r, pub["metric"])
                if v is not None:
                    per_task[r["task"]].append(v)
            values = [sum(v) / len(v) for v in per_task.values()]
        models = sorted({str(r["model"]) for r in mine})
        ours = sum(values) / len(values) if values else None
        rows.append({**pub, "ours": ours, "n": len(values), "delta": None if ours is None else ours - pub["value"],
                     "our_models": models, "setting_matches": bool(models) and models == [pub["model"]]})
    if not rows:
        return "", rows
    out = ["### ours vs published\n",
           "| paper | table | task | method | budget | metric | published | ours | delta | n | same setting |",
           "|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        budget = ", ".join(f"{k} {v}" for k, v in (r.get("budget") or {}).items())
        bound = " (lower bound)" if r.get("bound") == "lower" else ""
        same = "yes" if r["setting_matches"] else (f"no: ours {'/'.join(r['our_models'])}, paper {r['model']}"
                                                   if r["our_models"] else "-")
        ours = "-" if r["ours"] is None else f"{r['ours']:.1f}"
        delta = "-" if r["delta"] is None else f"{r['delta']:+.1f}"
        out.append(f"| {r['paper']} | {r['table']} | {r['task']} | {r['method']} | {budget} | {r['metric']} | "
                   f"{r['value']:.1f}{bound} | {ours} | {delta} | {r['n']} | {same} |")
    return "\n".join(out) + "\n", rows


def prunable_share(runs: list[dict], published: list[dict], noticeable: float = 1.0) -> tuple[str, list[dict]]:
    """Markdown + rows: a paper's "up to X % of the heads can be pruned without a noticeable loss"
    (published entries with budget {no_noticeable_loss: true}; method `<method>/curve`, Michel et
    al.'s statements about their pruning curves) beside our prune_curve runs of that method and task
    (heads scored once, removed lowest score first, each point evaluated without retraining).

    Ours = the largest share of the heads removed up to which EVERY point of our curve -- the mean
    over seeds of the primary metric (x 100 for fractions) -- stays within `noticeable` points of the
    curve's own start (no head removed: the same fine-tuned models, dense); one line per task and
    model, with our value at the curve point nearest the published share."""
    rows = []
    points_word = "point" if noticeable == 1 else "points"
    for pub in published:
        if not (pub.get("budget") or {}).get("no_noticeable_loss"):
            continue
        curve = [r for r in runs if "curve_removed" in r and r["value"] is not None and r.get("heads_total")
                 and r["task"] == pub["task"] and r["method"].split()[0] == pub["method"]
                 and _has_setting(r, pub.get("setting") or {})]
        for model in sorted({str(r["model"]) for r in curve}):
            points = defaultdict(list)  # share of heads removed -> the seeds' values there
            total = {}
            for r in curve:
                if str(r["model"]) == model:
                    share = r["curve_removed"] / r["heads_total"]
                    points[share].append(r["scale"] * r["value"])
                    total[share] = (r["curve_removed"], r["heads_total"])
            if 0.0 not in points:
                continue  # no point without pruning: nothing to measure a loss from
            mean = {share: sum(values) / len(values) for share, values in points.items()}
            shares, dense = sorted(points), mean[0.0]
            ours = 0.0
            for share in shares:
                if mean[share] < dense - noticeable - 1e-9:
                    break
                ours = share
            later = [s for s in shares if s > ours]
            near = min(shares, key=lambda s: (abs(s - pub["value"] / 100), s))
            rows.append({"paper": pub["paper"], "table": pub.get("table"), "task": pub["task"],
                         "method": pub["method"], "published_model": pub["model"], "row": pub.get("row"),
                         "quote": pub.get("quote"), "published": pub["value"], "model": model,
                         "metric": curve[0]["metric"], "seeds": len(points[0.0]), "noticeable": noticeable,
                         "dense": dense, "ours": 100 * ours, "ours_removed": total[ours], "at_ours": mean[ours],
                         "next": None if not later else (100 * later[0], mean[later[0]]),
                         "at_published": (100 * near, total[near], mean[near])})
    if not rows:
        return "", rows
    out = ["### heads prunable without a noticeable loss: published vs ours\n",
           (f"ours = the largest share of heads removed up to which every point of our curve (heads scored once, "
            f"removed lowest score first, no retraining; mean over seeds of the primary metric) stays within "
            f"{noticeable:g} {points_word} of the same models with no head removed (dense).\n")]
    for r in rows:
        (removed, total), (near, (near_removed, _), at_near) = r["ours_removed"], r["at_published"]
        following = "" if r["next"] is None else f"; next point {r['next'][0]:.1f} %: {r['next'][1]:.1f}"
        out.append(
            f"* {r['task']}, {r['method']}, {r['model']} ({r['seeds']} seeds, {r['metric']}): published: up to "
            f"{r['published']:g} % of heads prunable on {r['task']} without noticeable loss ({r['paper']}, "
            f"{r['table']}: {r['row']}; {r['published_model']}); ours: the largest share within {noticeable:g} "
            f"{points_word} of dense ({r['dense']:.1f}) is {r['ours']:.1f} % ({removed} of {total} heads removed: "
            f"{r['at_ours']:.1f}{following}); at the published share (nearest point {near:.1f} %, {near_removed} of "
            f"{total} removed) ours is {at_near:.1f} ({at_near - r['dense']:+.1f}).")
        out.append(f"  quote: \"{r['quote']}\"")
    return "\n".join(out) + "\n", rows


def cell(values: list[float]) -> str:
    """'75.5 +- 0.8 (n=3)': mean, sample standard deviation, count; one value alone as it is."""
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def _budget_x(run: dict) -> tuple[str, float | None]:
    """Where a run sits on a curve: % of the weights kept for runs given a density (GRAIN), % of the
    model's heads kept for runs given heads (their achieved density is not their budget), 100 for a
    dense run on either axis -- shares, so models of different sizes (and the papers') share one axis."""
    total = run.get("heads_total")
    if run.get("density_target") is not None:
        return "density", 100.0 * (run["density"] if run.get("density") is not None else run["density_target"])
    if total and run.get("heads_kept") == total and run.get("density") in (None, 1.0):
        return "dense", 100.0
    return "heads", (100.0 * run["heads_kept"] / total if total and run.get("heads_kept") is not None else None)


def _drawn(pub: dict, rows: list[dict]) -> bool:
    """Is a published number drawn over a panel's lines? The paper's dense model (method none)
    always; a pruned model's number where a run of ours of that method stands at its budget as the
    paper's method (`_matches`, `_has_setting`: what `paper_table` sets side by side). Never a
    `variant` (another backbone, an ablation, w/o a component) nor a method with no run in the panel."""
    if pub.get("variant"):
        return False
    if pub["method"] == "none":
        return True
    return any(r["method"].split()[0].split("/")[0] == pub["method"] and _matches(r, pub.get("budget") or {})
               and _has_setting(r, pub.get("setting") or {}) for r in rows)


def plot(runs: list[dict], path: Path, published: list[dict] | None = None) -> dict:
    """One panel per task: the primary metric (mean +- sample std over seeds) against the share of
    heads (or weights) kept, one line per method; published points of the same task and metric
    drawn over it as crosses (those `_drawn` keeps), labelled with the paper's model. Returns what each panel shows:
    {task: {"lines": {method: [(x, mean, std, n)]}, "published": [(x, value, label)]}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.8), squeeze=False)
    drawn = {}
    for ax, task in zip(axes[0], tasks):
        panel = drawn[task] = {"lines": {}, "published": []}
        rows = [r for r in runs if r["task"] == task and r["value"] is not None and _budget_x(r)[1] is not None]
        kinds = {_budget_x(r)[0] for r in rows} - {"dense"} or {"heads"}
        for method in sorted({r["method"] for r in rows}):
            pts = defaultdict(list)
            for r in rows:
                if r["method"] == method:
                    pts[round(_budget_x(r)[1], 2)].append(r["scale"] * r["value"])
            xs = sorted(pts)
            means = [sum(pts[x]) / len(pts[x]) for x in xs]
            stds = [(sum((v - m) ** 2 for v in pts[x]) / (len(pts[x]) - 1)) ** 0.5 if len(pts[x]) > 1 else 0.0
                    for x, m in zip(xs, means)]
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=2, label=method)
            panel["lines"][method] = [(x, m, sd, len(pts[x])) for x, m, sd in zip(xs, means, stds)]
        metric = rows[0]["metric"] if rows else ""
        for pub in published or []:
            budget = pub.get("budget") or {}
            x = (100.0 * budget["density"] if "density" in budget and "density" in kinds
                 else 100.0 * budget["heads_kept_fraction"] if "heads_kept_fraction" in budget and "heads" in kinds
                 else None)
            if pub["task"] == task and pub["metric"] == metric and x is not None and _drawn(pub, rows):
                label = f"{pub['method']} (published, {pub['model']})"
                ax.plot([x], [pub["value"]], marker="x", color="black", linestyle="none", markersize=7, label=label)
                panel["published"].append((x, pub["value"], label))
        ax.set_title(task)
        ax.set_xlabel("% of weights kept (density)" if kinds == {"density"} else "% of heads kept")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one legend entry per published series
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument("--out", type=Path, default=Path("results/runs"), help="output path stem")
    parser.add_argument("--baseline", action="append", default=[],
                        help="method to compare every other with (paired bootstrap, from each run's "
                        "predictions.json); repeat it for one table per baseline "
                        "(e.g. --baseline random --baseline 'apd distill=peer')")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--bootstrap", choices=sorted(BOOTSTRAPS), default="two_level",
                        help="two_level: each resample draws the seeds and the evaluation examples; examples: "
                        "the examples only, every seed once (the tables before issue 31)")
    parser.add_argument("--label", default="", help="comma-separated config keys added to each method's label "
                        "(e.g. distill.name,method.tolerance: ablations of one method get their own rows)")
    parser.add_argument("--published", type=Path, help="folder of published numbers (published/), or one "
                        "paper's file of it: adds the paper-vs-ours table")
    parser.add_argument("--noticeable", type=float, default=1.0,
                        help="with --published: points (of the primary metric x 100) a prune curve may lose and "
                        "still count as 'no noticeable loss', for the published prunable shares (Michel et al.)")
    args = parser.parse_args(argv)
    runs = find_runs(args.roots, tuple(k for k in args.label.split(",") if k))
    if not runs:
        raise SystemExit(f"no metrics.json under {', '.join(map(str, args.roots))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = table(runs) + "\n" + structure_table(runs) + "\n" + compute_table(runs)
    if args.baseline:
        compared = []
        for baseline in args.baseline:
            text, rows = comparison_table(runs, baseline, args.resamples, args.bootstrap)
            md += "\n" + text
            compared += rows
        args.out.with_name(args.out.name + "_bootstrap.json").write_text(json.dumps(compared, indent=1))
    published = load_published(args.published) if args.published else None
    if published:
        text, rows = paper_table(runs, published)
        md += "\n" + text
        args.out.with_name(args.out.name + "_published.json").write_text(json.dumps(rows, indent=1))
        text, rows = prunable_share(runs, published, args.noticeable)
        if rows:
            md += "\n" + text
            args.out.with_name(args.out.name + "_prunable.json").write_text(json.dumps(rows, indent=1))
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    plot(runs, args.out.with_suffix(".png"), published)
    print(md)
    print(f"wrote {args.out}.md, .json, .png ({len(runs)} runs)")


if __name__ == "__main__":
    main()
