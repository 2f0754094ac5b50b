"""Launcher kept for the commands in README.md, docs/results and the grid scripts: the collector
is `prune_cli.reports` (installed as `prune-report`, same arguments and output). From a checkout
it runs that checkout's src/, installed or not."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prune_cli.reports.collect import main

if __name__ == "__main__":
    main()
