"""Several processes, one run (torchrun, 2 CPU processes on gloo), against the one-process run.

MiniLM with dropout switched off in a copy of its config: then the only difference between 2
processes of batch 4 and 1 process of batch 8 is the order of floating-point sums (each half
padded to its own length, gradients averaged by DDP), so the runs agree to ~1e-5 step by step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import minilm_path
from test_cli import RTE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("minilm_no_dropout")
    shutil.copytree(minilm_path(), folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _job(model: Path, batch: int) -> list[str]:
    return ["model=minilm", f"model.path={model}", "task=rte", f"task.data_dir={RTE}", "task.max_train_samples=64",
            "task.max_eval_samples=32", "task.max_length=32", f"trainer.batch_size={batch}", "trainer.epochs=1",
            "trainer.log_every=1", "trainer.save_every=2", "trainer.lr=1e-4", "trainer.progress_bar=false",
            "logger.mode=offline", "method=dsp", "heads=36"]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def _torchrun(*args, cwd, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", *map(str, args)], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _curve(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["prune_joint/loss"] for r in rows if "prune_joint/loss" in r}


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, no_dropout):
    one = subprocess.run([sys.executable, "-m", "prune_cli.cli", *_job(no_dropout, 8), f"hydra.run.dir={tmp_path / 'one'}"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun("-m", "prune_cli.cli", *_job(no_dropout, 4), cwd=tmp_path)  # no hydra.run.dir: rank 0's for both
    assert two.returncode == 0, two.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]  # ONE run folder for both processes
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "one", run))

    # the budget is counted in global optimizer steps: 64 rows / (2 x 4) = 8 steps, like 64 / 8
    assert [s["steps"] for s in b["stages"] if "steps" in s] == [s["steps"] for s in a["stages"] if "steps" in s] == [8]
    assert b["stages"][0]["compute"]["examples"] == a["stages"][0]["compute"]["examples"] == 64  # both processes' rows
    assert b["processes"] == 2 and "processes" not in a
    ca, cb = _curve(tmp_path / "one"), _curve(run)
    assert sorted(cb) == sorted(ca) == list(range(1, 9))  # rank 0 alone logged: one row a step
    assert cb == pytest.approx(ca, rel=1e-4)
    # the learner's logits stay in sync (else DDP would train models with different heads): same K heads
    assert json.loads((run / "heads.json").read_text())["mask"] == json.loads((tmp_path / "one" / "heads.json").read_text())["mask"]
    assert b["heads_kept"] == 36 and b["eval"] == pytest.approx(a["eval"], abs=1 / 32 + 1e-9)
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run, not one per process
    assert (run / ".hydra" / "config.yaml").is_file() and not (run / "checkpoints").exists()


DRIVER = textwrap.dedent('''
    """torchrun target: the pipeline, with SLURM's preemption warning (SIGUSR2) sent to rank 1 ONLY
    after optimizer step N (argv[2] = N, 0 = never)."""
    import json, os, signal, sys
    from hydra import compose, initialize_config_module
    from prune_cli import distributed
    from prune_cli.pipeline import Pipeline
    from prune_cli.tracking import RunLogger

    run_dir, at, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    log = RunLogger.log

    def log_then_signal(self, row, *a, **k):
        log(self, row, *a, **k)
        if at and self.step == at and os.environ["RANK"] == "1" and any(key.endswith("/loss") for key in row):
            os.kill(os.getpid(), signal.SIGUSR2)

    RunLogger.log = log_then_signal
    distributed.init()
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    Pipeline(cfg, run_dir).run()
''')


def test_a_signal_to_one_process_stops_all_at_that_step_and_the_rerun_continues_exactly(tmp_path, no_dropout):
    """Rank 1 alone gets SIGUSR2 after step 3 (checkpoints every 2): both processes stop at step 3
    with its checkpoint (every rank's generators in it), the rerun resumes there and ends like the
    uninterrupted two-process run: same loss every step, same heads, same evaluation."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    job = json.dumps(_job(no_dropout, 4))
    whole = _torchrun(script, tmp_path / "whole", 0, job, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    stopped = _torchrun(script, cut, 3, job, cwd=tmp_path)
    assert stopped.returncode != 0  # the processes ended as Preempted: 128 + SIGUSR2 / SIGTERM
    assert re.search(r"exitcode\s*:\s*14[03]", stopped.stderr), stopped.stderr[-3000:]
    import torch

    saved = torch.load(cut / "checkpoints" / "train-0.pt", map_location="cpu", weights_only=False)
    assert saved["step"] == 3 and len(saved["rng_ranks"]) == 2
    resumed = _torchrun(script, cut, 0, job, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(_curve(cut)) == list(range(1, 9))  # 1-3, then 4-8: no step trained twice
    assert _curve(cut) == pytest.approx(_curve(tmp_path / "whole"), rel=1e-6, abs=1e-7)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", cut))
    assert a["eval"] == b["eval"]
    assert json.loads((cut / "heads.json").read_text())["mask"] == json.loads((tmp_path / "whole" / "heads.json").read_text())["mask"]


def test_stages_that_run_in_one_process_are_refused_under_several(tmp_path):
    res = _torchrun("-m", "prune_cli.cli", "model=minilm", "method=smp", "pipeline=[meta_train]",
                    "method.meta_tasks=[rte]", f"data_root={RTE.parents[1]}", f"hydra.run.dir={tmp_path / 'm'}",
                    cwd=tmp_path, timeout=300)
    assert res.returncode != 0
    assert "pipeline=['meta_train']: meta_train runs in one process" in res.stderr, res.stderr[-2000:]
