"""Sweeps that survive their failures: each job records how it ended, the sweep says what happened.

* A job of a `-m` sweep that fails (any exception, a bad input found late, a model that does not
  load) writes `status.json` (`failed` + the error's last line) in its folder and returns, so the
  other jobs still run; a job that finishes writes `completed` + its primary metric.
* When the sweep ends, `SweepSummary` (a Hydra callback, run by the launching process whatever
  the launcher) writes `<sweep>/summary.json` and `summary.md` (one row per job: its overrides,
  status, primary metric or error) and prints the table; `prune-run` then exits 1 if a job failed.
* The same command again (same `hydra.sweep.dir`) skips the jobs that completed and reruns the
  others; an interrupted one resumes from its checkpoints, as any run does. A completed job whose
  settings are not the ones its folder's run finished with (an experiment file edited since) is
  refused, its folder untouched, and `prune-run` exits 2; `+overwrite=true` reruns such jobs.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback

STATUS = "status.json"
_failed: list[str] = []  # jobs of the last sweep of this process that failed (read by cli.main)
_refused: list[str] = []  # jobs whose folder holds a finished run with other settings (cli.main: exit 2)


def finished(run_dir: Path) -> dict | None:
    """The status of a job folder that completed before (None if it did not)."""
    path = Path(run_dir) / STATUS
    if not path.is_file() or not (Path(run_dir) / "metrics.json").is_file():
        return None
    status = json.loads(path.read_text())
    return status if status.get("status") == "completed" else None


def record(run_dir: Path, status: str, overrides: list[str], **fields) -> None:
    from prune_cli import distributed
    from prune_cli.report import write_json

    if not distributed.is_main():  # a job of several processes: rank 0 speaks for it
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / STATUS, {"status": status, "overrides": list(overrides), **fields})


def refused(num, overrides: list[str], err: Exception) -> None:
    """A job whose folder holds a run that finished with other settings: said, not run, and its
    folder -- status.json included -- left as that run wrote it."""
    import sys

    _refused.append(str(num))
    print(f"prune-run: error: job {num} ({' '.join(overrides)}): {err}", file=sys.stderr)


def error_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1]}" if text else type(err).__name__


def summarize(sweep_dir: Path) -> list[dict]:
    """One row per job folder of `sweep_dir` (in job order)."""
    rows = []
    for path in Path(sweep_dir).glob(f"*/{STATUS}"):
        status = json.loads(path.read_text())
        num = path.parent.name.split("_", 1)[0]
        rows.append({"job": int(num) if num.isdigit() else path.parent.name, "folder": path.parent.name, **status})
    return sorted(rows, key=lambda r: (not isinstance(r["job"], int), r["job"] if isinstance(r["job"], int) else 0,
                                       r["folder"]))


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from prune_cli.report import write_json

        sweep_dir = Path(str(config.hydra.sweep.dir))
        from prune_cli import distributed

        rows = summarize(sweep_dir)
        failed = [r for r in rows if r["status"] != "completed"]
        _failed[:] = [str(r["job"]) for r in failed]
        if not rows or not distributed.is_main():  # torchrun ... -m: every rank ran the sweep, one reports
            return
        write_json(sweep_dir / "summary.json", {"jobs": rows})
        lines = ["| job | overrides | status | primary metric or error |", "|---|---|---|---|"]
        for r in rows:
            result = (f"{r.get('primary_metric')}={r.get('primary')}" if r["status"] == "completed"
                      else r.get("error", ""))
            lines.append(f"| {r['job']} | {' '.join(r.get('overrides', []))} | {r['status']} | {result} |")
        table = "\n".join(lines) + "\n"
        (sweep_dir / "summary.md").write_text(table)
        print(f"prune-run: sweep {sweep_dir}: {len(rows) - len(failed)}/{len(rows)} jobs completed"
              + (f", {len(failed)} failed (rerun the same command to retry them)" if failed else ""))
        print(table, end="")
