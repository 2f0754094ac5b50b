"""A run folder belongs to its run (issue 32): a finished run is never run over (the same command
says it is done, other settings are refused, `+overwrite=true` moves the old results aside), a
second process is locked out, a stale lock is taken over, every step is logged once after any
resume, and a refusal inside Hydra leaves no folder behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import TINY, prune_run

RUN = [*TINY, "method=none", "export_model=false", "logger.mode=disabled"]


def snapshot(run: Path) -> dict:
    """Every file of a run folder: its bytes and modification time."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def lock(run: Path, pid: int) -> Path:
    path = run / ".prune-run" / "lock"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def cfg_of(*overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.slow
def test_a_finished_run_is_never_run_over(tmp_path):
    """One finished run, then: the same command (done, exit 0, not a byte or mtime changed); another
    seed (one line naming it, exit 2, unchanged); the pipeline itself after Hydra rewrote .hydra/
    (done / refused, .hydra/ put back); a live lock (refused); `+overwrite=true` over a stale lock
    (taken over with a warning, the old results in previous-<time>/)."""
    run = tmp_path / "run"
    first = prune_run([*RUN, "seed=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    before = snapshot(run)
    assert {"metrics.json", "log.jsonl", ".hydra/config.yaml", ".prune-run/config.yaml"} <= set(before)
    assert not (run / ".prune-run" / "lock").exists()

    again = prune_run([*RUN, "seed=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    (line,) = lines(again.stdout)
    assert "done before" in line and f"accuracy={metrics['primary']}" in line and str(run) in line
    assert snapshot(run) == before

    other = prune_run([*RUN, "seed=2", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert other.returncode == 2 and len(lines(other.stderr)) == 1, other.stderr[-2000:]
    assert "seed=2 where the run has seed=1" in other.stderr and "+overwrite=true" in other.stderr
    assert snapshot(run) == before

    # inside Hydra (a folder Hydra named itself, or a sweep job): .hydra/ is already rewritten
    from prune_cli.errors import ConfigError
    from prune_cli.pipeline import Pipeline

    (run / ".hydra" / "config.yaml").write_text("rewritten by Hydra\n")
    pipeline = Pipeline(cfg_of(*RUN, "seed=1"), run)
    assert pipeline.run() == metrics and pipeline.done_before == metrics
    (run / ".hydra" / "config.yaml").write_text("rewritten by Hydra\n")
    with pytest.raises(ConfigError, match="seed=3 where the run has seed=1"):
        Pipeline(cfg_of(*RUN, "seed=3"), run).run()
    assert snapshot(run) == before

    held = lock(run, os.getpid())  # a live process holds the folder
    busy = prune_run([*RUN, "seed=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert busy.returncode == 2 and len(lines(busy.stderr)) == 1, busy.stderr[-2000:]
    assert f"in use by pid {os.getpid()} on {socket.gethostname()}" in busy.stderr
    held.unlink()
    assert snapshot(run) == before

    stale = dead_pid()
    lock(run, stale)
    redo = prune_run([*RUN, "seed=2", "+overwrite=true", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert f"took over the lock of pid {stale}" in redo.stderr
    (previous,) = run.glob("previous-*")
    assert (previous / "metrics.json").read_bytes() == before["metrics.json"][0]
    assert (previous / "log.jsonl").read_bytes() == before["log.jsonl"][0]
    assert (previous / ".hydra" / "config.yaml").read_bytes() == before[".hydra/config.yaml"][0]
    assert json.loads((run / "metrics.json").read_text())["seed"] == 2
    assert not (run / ".prune-run" / "lock").exists() and not (run / "checkpoints").exists()
    steps = [json.loads(r)["step"] for r in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [json.loads(r)["step"] for r in before["log.jsonl"][0].decode().splitlines()]


DRIVER_RUN = [*(o for o in RUN if not o.startswith("trainer.max_steps=")), "trainer.max_steps=3",
              "trainer.save_every=1", "trainer.log_every=1"]


@pytest.mark.slow
def test_every_step_is_logged_once_after_resumes(tmp_path):
    """SIGKILLed after step 2 was logged (its checkpoint: step 1), then after the evaluate stage
    logged its row but before it was committed (the stage redone from the last commit, at the
    same global step): the finished log.jsonl holds each loss row and the evaluation once."""
    from test_training_exact import DRIVER

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    run = tmp_path / "cut"
    for kill in ("step:2", "commit:1", "none:0"):
        res = subprocess.run([sys.executable, str(script), str(run), kill, json.dumps(DRIVER_RUN)], env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == (0 if kill == "none:0" else -signal.SIGKILL), (kill, res.stderr[-2000:])
        if kill != "step:2":  # the killed process's lock: stale, taken over
            assert "took over the lock of pid" in res.stderr, res.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "finetune/loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [3]
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)
    assert json.loads((run / "metrics.json").read_text())["stages"][0]["steps"] == 3


@pytest.mark.slow
def test_a_refusal_inside_hydra_leaves_no_folder_behind(tmp_path):
    """heads=360 passes the command-line checks and is refused by validate() once Hydra has made
    the run folder: a new folder (given, with new parents, or Hydra's dated one) goes; one that
    held something before keeps it, and keeps no .hydra/ of the refused command."""
    bad = [*RUN, "method=random", "heads=360"]
    given = tmp_path / "new" / "parents" / "run"
    res = prune_run([*bad, f"hydra.run.dir={given}"], cwd=tmp_path)
    assert res.returncode == 2 and len(lines(res.stderr)) == 1 and "heads=360" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "new").exists()

    res = prune_run(bad, cwd=tmp_path)  # outputs/rte/random/<time>/
    assert res.returncode == 2 and len(lines(res.stderr)) == 1, res.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = prune_run([*bad, f"hydra.run.dir={mine}"], cwd=tmp_path)
    assert res.returncode == 2 and len(lines(res.stderr)) == 1, res.stderr[-2000:]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_the_lock_knows_a_gone_holder(monkeypatch, capsys, tmp_path):
    """Stale: a dead pid on this host, a reused pid (another start time), an earlier start of
    this SLURM job (a requeue, on any node). Held: a live pid, another node, a job's other process."""
    from prune_cli import rundir
    from prune_cli.errors import ConfigError

    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    here = socket.gethostname()
    me = os.getpid()
    assert rundir._gone({"pid": dead_pid(), "host": here}) == "no longer running"
    assert rundir._gone({"pid": me, "host": here}) is None
    assert rundir._gone({"pid": me, "host": here, "started": rundir._start_time(me)}) is None
    assert "another process" in rundir._gone({"pid": me, "host": here, "started": -1})
    assert rundir._gone({"pid": me, "host": "node-elsewhere"}) is None
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert "requeued" in rundir._gone({"pid": 5, "host": "node-elsewhere", "slurm_job": "77", "slurm_restart": 0})
    assert rundir._gone({"pid": 5, "host": "node-elsewhere", "slurm_job": "77", "slurm_restart": 1}) is None

    rundir.acquire(tmp_path)
    assert json.loads((tmp_path / ".prune-run" / "lock").read_text())["pid"] == me
    with pytest.raises(ConfigError, match=f"in use by pid {me}"):
        rundir.acquire(tmp_path)  # (any process but the holder: here the holder itself asks again)
    rundir.release(tmp_path)
    assert not (tmp_path / ".prune-run").exists()
    lock(tmp_path, dead := dead_pid())
    rundir.acquire(tmp_path)
    assert f"took over the lock of pid {dead}" in capsys.readouterr().err
    assert json.loads((tmp_path / ".prune-run" / "lock").read_text())["pid"] == me
    rundir.release(tmp_path)


def test_a_resumed_logger_cuts_the_rows_after_its_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from prune_cli.tracking import RunLogger

    cfg = OmegaConf.create({"logger": {"mode": "disabled"}})
    log = RunLogger(cfg, tmp_path)
    for step in (1, 2, 2, 3):
        log.step = step
        log.log({"x": step})
    log.finish()
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"step": 4, "x"')  # a kill in the middle of a row

    def steps():
        return [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]

    log = RunLogger(cfg, tmp_path)
    assert log.rows == 4
    log.resume(2, rows=2)  # the checkpoint came after the first row of step 2
    log.resume(2, rows=3)  # a later one found on the way wins
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 4  # nothing cut before something is logged again
    log.log({"x": 3}, step=3)
    log.finish()
    assert steps() == [1, 2, 2, 3] and log.rows == 4

    log = RunLogger(cfg, tmp_path)
    log.resume(2)  # a checkpoint from before the row count: the rows after its step go
    log.finish()
    assert steps() == [1, 2, 2]
