"""Run folders as records: one dict per finished run (or per point of a prune curve), the unit
every table, test and plot of the report works on.

A run folder is what `prune-run` leaves behind: metrics.json (the numbers), .hydra/config.yaml
(the settings, for labels and the task's own metric), predictions.json / curve_predictions.json
(per-example predictions, for the paired bootstrap), heads.json (the kept structure) and bench.json.
The report reads only these files, so it works the same on a live sweep and on the records kept in
docs/results/runs (which keep no model).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

# Task families whose primary metric is shown as metrics.json holds it: percentages already
# (official SQuAD EM/F1, sacreBLEU) or no fraction at all (perplexity); every other primary metric
# is a fraction and is shown x100.
PERCENT_FAMILIES = {"squad", "translation", "lm"}


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
    rows = [r for r in (read_json(run_dir / "bench.json") or {}).get("results", []) if r.get("variant") != "dense"]
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


def _curve_points(run: dict, metrics: dict) -> list[dict]:
    """A prune_curve run (Michel et al., NeurIPS 2019, arXiv:1905.10650, figure 3) as one record per point, labelled `<method>/curve`:
    each point is the model evaluated WITHOUT retraining, so it gets rows of its own, apart from
    the same method fine-tuned after pruning; the run's final pruned evaluation repeats its point at K."""
    points = []
    for point in metrics["curve"]:
        points.append({**run, "method": run["method"] + "/curve", "heads_kept": point["heads_kept"],
                       "value": point["metrics"].get(run["metric"]), "eval": point["metrics"],
                       "curve_removed": point["removed"], "density": None, "params": None})  # gated, not cut
    return points


@functools.cache
def config_of(run_dir: str):
    """The run's composed config (.hydra/config.yaml, what prune-run's Hydra wrote), read once;
    empty where the folder has none (then every `OmegaConf.select` answers its default)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else OmegaConf.create({})


@functools.cache
def task_of(run_dir: str):
    """The run's task object, built from its own config: the split and metric the bootstrap
    recomputes are the ones the run reported, whatever the task's defaults are today."""
    from prune_cli.tasks import get_task

    return get_task(config_of(run_dir).task)


def run_task(run: dict):
    """`task_of` for a record (a curve point shares its run's task)."""
    return task_of(run["run"])


@functools.lru_cache(maxsize=64)
def read_json(path: Path):
    """A JSON file of a run (predictions, curve predictions, heads.json, bench.json), read once: a
    curve run's file serves each of its points. None where the run did not write it."""
    return json.loads(path.read_text()) if path.is_file() else None


def run_predictions(run: dict):
    """The run's per-example predictions on its primary split (a curve point: that point's)."""
    curve = "curve_removed" in run
    record = read_json(Path(run["run"]) / ("curve_predictions.json" if curve else "predictions.json"))
    if record is None:
        return None
    if curve:
        record = next((p for p in record["points"] if p["removed"] == run["curve_removed"]), None)
        if record is None:
            return None
    split = run_task(run).primary_split()[0]  # the split the primary metric is read from (MNLI: matched or mm)
    return record["splits"][split if split in record["splits"] else next(iter(record["splits"]))]
