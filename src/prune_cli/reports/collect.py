"""Turn a folder of prune-run runs (a `multirun/...` sweep, or several) into the paper-style
table and curve: primary metric against heads kept, one row/line per method.

    prune-report multirun/2026-11-23_10-00-00 --out results/dsp_curve
    python scripts/collect_runs.py multirun/2026-11-23_10-00-00 --out results/dsp_curve   # the same

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
import json
from pathlib import Path

from prune_cli.reports.bootstrap import BOOTSTRAPS
from prune_cli.reports.compare import comparison_table
from prune_cli.reports.plots import plot
from prune_cli.reports.published import load_published, paper_table, prunable_share, published_source
from prune_cli.reports.runs import find_runs
from prune_cli.reports.tables import compute_table, structure_table, table


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
    parser.add_argument("--llm", action="store_true",
                        help="the LLM table (scripts/llm_grid.sh's records: one folder per cell, one run per score) "
                        "in LLM-Pruner's layout, with --published's LLM tables (llm_pruner.yaml, flap.yaml) beside it")
    parser.add_argument("--llm-without", default="", metavar="TASK[,TASK]",
                        help="with --llm: zero-shot tasks left out of the mean accuracy and of every comparison "
                        "of it (e.g. boolq, whose yes/no bias swings a small model's mean); the table still "
                        "prints them")
    args = parser.parse_args(argv)
    if args.llm:
        from prune_cli.reports.llm import ZEROSHOT, report

        without = [t for t in args.llm_without.split(",") if t]
        for task in without:
            if task not in ZEROSHOT:
                parser.error(f"--llm-without={task!r}: not a zero-shot task (one of {', '.join(ZEROSHOT)})")
        average = tuple(t for t in ZEROSHOT if t not in without)
        if not average:
            parser.error(f"--llm-without={args.llm_without!r}: leaves no task to average")
        source = published_source(args.published) if args.published else None
        md, rows = report(args.roots[0], source, args.resamples, average)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        print(md)
        print(f"wrote {args.out}.md, .json ({len(rows)} rows)")
        return
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
    published = load_published(published_source(args.published)) if args.published else None
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
