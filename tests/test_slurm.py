"""Sweeps on a real SLURM cluster, through the project's own launcher config (conf/hydra/launcher/
slurm.yaml). They run whenever `sbatch` answers: `.ci/run` starts the one-node cluster of
../shared/slurm/start-local-cluster.sh first; elsewhere they are skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from test_cli import RTE, prune_run


def _cluster_answers() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _cluster_answers(), reason="no SLURM cluster answers")]

JOB = ["model=minilm", "task=rte", f"task.data_dir={RTE}", "task.max_train_samples=48", "task.max_eval_samples=16",
       "trainer.batch_size=4", "trainer.log_every=1", "trainer.save_every=0", "trainer.progress_bar=false",
       "logger.mode=disabled", "export_model=false", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3", "hydra.launcher.timeout_min=20"]


def test_a_sweep_runs_as_a_slurm_array_job(tmp_path):
    sweep = tmp_path / "sweep"
    res = prune_run(["-m", *JOB, "trainer.max_steps=2", "method=random", "heads=36,18", f"hydra.sweep.dir={sweep}"],
                    cwd=tmp_path, timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    jobs = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    kept = sorted(json.loads((sweep / j["folder"] / "metrics.json").read_text())["heads_kept"] for j in jobs)
    assert kept == [18, 36]
    assert list((sweep / ".submitit").iterdir())  # submitit's array job folders: it went through sbatch


def test_a_preempted_job_checkpoints_requeues_and_ends_like_an_uninterrupted_one(tmp_path):
    """Two identical jobs (they differ only in a logging tag); job 0 gets SLURM's preemption
    warning (scancel --signal=USR2) mid-training: it checkpoints that step, submitit requeues it,
    it resumes, and ends with the metrics and loss curve of job 1, which ran through."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        ["prune-run", "-m", *JOB, "trainer.max_steps=24", "method=none", "logger.tags=[a],[b]",
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    deadline, signalled = time.time() + 600, False
    while time.time() < deadline and not signalled:
        time.sleep(1)
        logs = sorted(sweep.glob("0_*/log.jsonl"))
        steps = [json.loads(line)["step"] for line in logs[0].read_text().splitlines()] if logs else []
        if steps and max(steps) >= 4:
            queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False).stdout
            job0 = next((j for j in queue.split() if j.endswith("_0")), None)
            if job0:
                subprocess.run(["scancel", "--signal=USR2", job0], check=True)
                signalled = True
    assert signalled, "job 0 never reached step 4"
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, (out[-3000:], err[-3000:])
    folders = sorted(p for p in sweep.iterdir() if p.name[0].isdigit())
    a, b = (json.loads((f / "metrics.json").read_text()) for f in folders)
    assert a["eval"] == b["eval"] and a["stages"][0]["train_loss"] == b["stages"][0]["train_loss"]
    losses = [[(r["step"], r["finetune/loss"]) for r in map(json.loads, (f / "log.jsonl").read_text().splitlines())
               if "finetune/loss" in r] for f in folders]
    # resumed AT the signalled step, not restarted: every step is logged once, as in job 1
    assert [s for s, _ in losses[0]] == [s for s, _ in losses[1]] == list(range(1, 25))
    assert losses[0] == losses[1]
    assert "preempted" not in json.loads((folders[0] / "status.json").read_text())["status"]


def test_a_job_of_two_tasks_is_one_run_of_two_processes(tmp_path):
    """`hydra.launcher.tasks_per_node=2`: SLURM starts the job twice (srun), the tasks join one
    process group (torch's variables from submitit) and train one run: global steps counted once,
    one log row a step, metrics.json from rank 0 saying 2 processes."""
    sweep = tmp_path / "sweep"
    res = prune_run(["-m", *JOB, "hydra.launcher.tasks_per_node=2", "trainer.max_steps=4", "method=dsp", "heads=36",
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    (job,) = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert job["status"] == "completed"
    metrics = json.loads((sweep / job["folder"] / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["heads_kept"] == 36
    assert metrics["stages"][0]["steps"] == 4 and metrics["stages"][0]["compute"]["examples"] == 4 * 2 * 4
    rows = [json.loads(line) for line in (sweep / job["folder"] / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "prune_joint/loss" in r] == [1, 2, 3, 4]
