"""The Markdown tables of the report: metric per method and budget, what density runs left,
and what each method cost.

Each cell is mean +- sample std over seeds with n, because fine-tuning BERT on the small GLUE
sets varies notably with the random seed alone (Dodge et al., 2020, "Fine-Tuning Pretrained
Language Models: Weight Initializations, Data Orders, and Early Stopping", arXiv:2002.06305): one
seed's number, without its spread, cannot be set beside a paper's.
"""

from __future__ import annotations

from collections import defaultdict

from prune_cli.reports.runs import budget_of


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
        out.append("| method | " + " | ".join(budget_label(c, density_task) for c in columns) + " |")
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


def cell(values: list[float]) -> str:
    """'75.5 +- 0.8 (n=3)': mean, sample standard deviation, count; one value alone as it is."""
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def _column(run: dict, density_task: bool) -> tuple[str, float]:
    """The table column of a run: its budget, except that in a task with density runs a dense run
    (the teacher) sits at density 100 %."""
    key = budget_of(run)
    if density_task and key[0] == "heads" and run["heads_kept"] == run["heads_total"] \
            and run.get("density") in (None, 1.0):
        return "density", 1.0
    return key


def budget_label(key: tuple[str, float], density_task: bool) -> str:
    """A column header: '10 %' for a density, the heads kept as a number (with 'heads' where the
    task's other columns are densities, so the two kinds cannot be read for one another)."""
    kind, value = key
    if kind == "density":
        return f"{100 * value:g} %"
    return f"{value} heads" if density_task else str(value)
