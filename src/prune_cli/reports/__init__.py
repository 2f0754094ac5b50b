"""The reports: run folders in, the tables, tests and curves of docs/results out.

They ship with the package (and `prune-report` runs them) because the numbers a user compares
with a paper are the product as much as the pruned model is. One module per step:

* `runs` -- run folders (or the records in docs/results/runs) as records, one per run or curve point;
* `tables` -- metric per method and budget (mean +- std over seeds), what density runs left, compute;
* `resampled` + `bootstrap` -- task metrics on many resamples at once, and the paired two-level
  (seeds and examples) bootstrap; `compare` -- every method against a baseline, with mask counts;
* `published` -- the papers' numbers (published/) beside ours; `plots` -- the curve;
* `collect` -- the `prune-report` command (also `python scripts/collect_runs.py`);
* `bench_records` -- recorded structures timed side by side (`python scripts/bench_records.py`).
"""

from prune_cli.reports.bootstrap import BOOTSTRAPS, paired_bootstrap
from prune_cli.reports.compare import comparison_table, distinct_masks
from prune_cli.reports.plots import budget_x, plot
from prune_cli.reports.published import load_published, paper_table, prunable_share, published_source
from prune_cli.reports.resampled import Resamples, resampled_metric
from prune_cli.reports.runs import budget_of, find_runs, read_json, run_predictions
from prune_cli.reports.tables import cell, compute_table, structure_table, table

__all__ = [
    "BOOTSTRAPS", "Resamples", "budget_of", "budget_x", "cell", "comparison_table", "compute_table",
    "distinct_masks", "find_runs", "load_published", "paired_bootstrap", "paper_table", "plot",
    "prunable_share", "published_source", "read_json", "resampled_metric", "run_predictions",
    "structure_table", "table",
]
