"""The curve: metric against the share of heads (or weights) kept, one line per method, in the
style of DSP's figure 2 (Li, Cotterell, Sachan, TACL 2021, arXiv:2108.04657), with the papers'
points drawn over it where a run of ours stands at their budget as their method.

Shares, not counts, on the x axis: models of different sizes (MiniLM's 72 heads, BERT-base's 144)
and the papers' numbers then sit on one axis.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from prune_cli.reports.published import has_setting, matches_budget


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
        rows = [r for r in runs if r["task"] == task and r["value"] is not None and budget_x(r)[1] is not None]
        kinds = {budget_x(r)[0] for r in rows} - {"dense"} or {"heads"}
        for method in sorted({r["method"] for r in rows}):
            pts = defaultdict(list)
            for r in rows:
                if r["method"] == method:
                    pts[round(budget_x(r)[1], 2)].append(r["scale"] * r["value"])
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


def budget_x(run: dict) -> tuple[str, float | None]:
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
    paper's method (`matches_budget`, `has_setting`: what `paper_table` sets side by side). Never a
    `variant` (another backbone, an ablation, w/o a component) nor a method with no run in the panel."""
    if pub.get("variant"):
        return False
    if pub["method"] == "none":
        return True
    return any(r["method"].split()[0].split("/")[0] == pub["method"] and matches_budget(r, pub.get("budget") or {})
               and has_setting(r, pub.get("setting") or {}) for r in rows)
