"""Launcher kept for the commands in README.md and docs/results/grain.md: recorded structures
timed side by side are `prune_cli.reports.bench_records` (same arguments and output). From a
checkout it runs that checkout's src/, installed or not."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prune_cli.reports.bench_records import main

if __name__ == "__main__":
    main()
