"""End to end through the real `prune-run` command: real MiniLM, real RTE rows, real W&B offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RTE = DATA / "glue" / "RTE"

# debug=tiny (conf/debug/tiny.yaml): MiniLM, 32 training rows, the first 24 evaluation rows, 2 steps
# of batch 8, no progress bar; the data is each test's own
TINY = ["debug=tiny", "task=rte", f"task.data_dir={RTE}"]


def prune_run(args, cwd, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "prune_cli.cli", *args], cwd=cwd, env=env, check=False, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_michel_end_to_end_keeps_exactly_k_heads(tmp_path):
    run_dir = tmp_path / "run"
    res = prune_run([*TINY, "method=michel", "heads=36", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    heads = json.loads((run_dir / "heads.json").read_text())
    assert heads["heads_total"] == 72 and heads["heads_kept"] == 36
    assert sum(map(sum, heads["mask"])) == 36
    assert len(heads["blocks"]) == 6 and all(len(s) == 12 for s in heads["scores"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "rte" and metrics["primary_metric"] == "accuracy"
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    assert metrics["heads_kept"] == 36 and metrics["params"] < metrics["params_dense"]
    assert (run_dir / "heads.png").stat().st_size > 1000

    from prune_cli.heads import HeadSpace
    from prune_cli.surgery import count_params, load_pruned

    model = load_pruned(run_dir / "model")
    assert HeadSpace.from_model(model).total == 36
    assert count_params(model) == metrics["params"]

    offline_runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1 and offline_runs[0].stat().st_size > 0
    assert not (run_dir / "checkpoints").exists()  # a finished run cleans its resume state


@pytest.mark.parametrize(
    "args, expected",
    [
        (["method=nope"], "method=nope: unknown option; one of"),
        (["model=minilm", "method=michel", "heads=200"], "heads=200: 0..72: minilm has 72 heads"),
        (["model=minilm", "method=michel", "heads=-1"], "heads=-1"),
        (["model=minilm", "method=michel", "heads=1.5"], "heads=1.5: a whole number"),
        (["model=minilm", "method=michel", "sparsity=1.0"], "sparsity=1.0: a fraction of heads to remove in [0, 1)"),
        (["model=minilm", "method=michel", "heads=36", "sparsity=0.5"], "give heads= OR sparsity=, not both"),
        (["task=rte", "task.data_dir=/nonexistent/RTE", "method=michel", "heads=10"], "task.data_dir"),
        (["model=bert-base-uncased", "method=michel", "heads=10"], "model='google-bert/bert-base-uncased'"),
        (["model=minilm", "model.path=/nonexistent/model", "method=michel", "heads=10"], "model.path"),
        (["no_such_key=1"], "no_such_key"),
        (["model=minilm", "method=voita", "heads=10", "method.controller=pid"], "method.controller='pid': one of"),
        (["model=minilm", "method=taylor", "density=0.1", "heads=36"], "density=0.1: give density= OR heads="),
        (["model=minilm", "method=michel", "density=0.5"], "units='dims_ffn': heads: method=michel ranks whole"),
        (["model=minilm", "method=taylor", "density=0.1", "units=heads"], "density=0.1: >= 0.667 with units=head"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
    res = prune_run([*args, "logger.mode=disabled", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert expected in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=bert-base-uncased", "task=rte", f"task.data_dir={RTE}", "method=michel", "heads=10"],
         "model='google-bert/bert-base-uncased': a model in the local Hugging Face cache"),
        (["model=minilm", "task=sst2", "method=michel", "heads=10"], "task.data_dir=None: a local GLUE sst2 folder"),
    ],
)
def test_unreachable_hub_without_offline_flag_is_one_line_at_once(tmp_path, args, expected):
    """No HF_HUB_OFFLINE, no network (here: an endpoint that refuses connections): the Hub client
    would retry for a minute and end in a traceback; prune-run notices and says what to set."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"HF_ENDPOINT": "http://127.0.0.1:9", "WANDB_MODE": "disabled"})
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert "cannot be reached" in res.stdout  # said once, in the run's log


def test_online_logging_without_wandb_credentials_is_one_line(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    res = prune_run([*TINY, "method=random", "heads=10", "logger.mode=online", f"hydra.run.dir={tmp_path / 'run'}"],
                    cwd=tmp_path, env_extra=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "logger.mode='online': offline (then `wandb sync" in lines[0], res.stderr


def test_wrong_columns_named_before_model_loads(tmp_path):
    res = prune_run(["task=rte", f"task.data_dir={DATA / 'glue' / 'SST-2'}", "method=random", "heads=10",
                     "logger.mode=disabled"], cwd=tmp_path)
    assert res.returncode == 2 and "task.data_dir" in res.stderr and "Traceback" not in res.stderr


def test_cfg_job_prints_composed_config(tmp_path):
    res = prune_run(["--cfg", "job", "model=minilm", "task=sst2", "method=random", "sparsity=0.5"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sparsity: 0.5" in res.stdout and "name: random" in res.stdout and "name: sst2" in res.stdout


def test_relative_data_dir_resolves_against_launch_folder(tmp_path):
    """`task.data_dir=glue/RTE` means <where prune-run was started>/glue/RTE."""
    (tmp_path / "glue").mkdir()
    (tmp_path / "glue" / "RTE").symlink_to(RTE)
    run_dir = tmp_path / "run"
    res = prune_run(["debug=tiny", "task=rte", "task.data_dir=glue/RTE", "trainer.max_steps=1", "logger.mode=disabled",
                     "export_model=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "none" and metrics["heads_kept"] == 72 and "accuracy" in metrics["eval"]


@pytest.mark.slow
def test_demo_experiment_runs_from_any_folder_on_the_shipped_sample(tmp_path):
    """`prune-run experiment=demo` is the README's first command: it needs no ../shared, no Hub,
    only what the package ships (shortened here; the full demo is ~2 min on 2 cores)."""
    from prune_cli import _package_data

    sample = Path(_package_data("sst2_sample"))
    lines = {f: len((sample / f).read_text(encoding="utf-8").splitlines()) for f in ("train.tsv", "dev.tsv")}
    assert lines == {"train.tsv": 2001, "dev.tsv": 873}  # header + 2,000 / 872 sentences
    run_dir = tmp_path / "run"
    res = prune_run(["experiment=demo", "trainer.max_steps=2", "task.max_train_samples=32", "task.max_eval_samples=16",
                     "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["task"], metrics["method"], metrics["heads_kept"]) == ("sst2", "michel", 36)
    assert metrics["versions"]["transformers"] and metrics["device"] == "cpu"
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "${package_data:sst2_sample}" in config  # resolves to the installed package wherever it reruns


@pytest.mark.slow
def test_user_config_dir_adds_experiments_without_editing_the_package(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "my_curve.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /method: random\nheads: 12\n")
    (conf / "model").mkdir()
    (conf / "model" / "my_minilm.yaml").write_text(
        "defaults:\n  - minilm\n  - _self_\nname: my_minilm\n")
    run_dir = tmp_path / "run"
    res = prune_run(["--config-dir", str(conf), "experiment=my_curve", "model=my_minilm", *TINY,
                     "logger=none", "export_model=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["method"], metrics["heads_kept"], metrics["model"]) == ("random", 12, "my_minilm")
    res = prune_run([f"--config-dir={conf}", "experiment=nope"], cwd=tmp_path)
    shipped = [f.stem for f in (ROOT / "conf" / "experiment").glob("*.yaml")]
    assert res.returncode == 2 and f"one of {', '.join(sorted([*shipped, 'my_curve']))}" in res.stderr


@pytest.mark.slow
def test_density_run_prunes_every_kind_exactly_and_its_export_reloads(tmp_path):
    """density=0.3 with taylor scores: query/key, value/output dimensions and FFN neurons ranked
    together; the achieved density is within one unit of the target; the uneven export reloads
    with the analytical parameter count and runs again through model.path."""
    run_dir = tmp_path / "run"
    res = prune_run([*TINY, "method=taylor", "density=0.3", "method.score_batches=2", "task.subsample=first",
                     f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "density=0.3" in res.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    unit = 2 * 384  # every unit of MiniLM weighs a row + a column of width 384
    assert 0 <= metrics["weights_kept"] - 0.3 * metrics["weights_dense"] < unit
    assert metrics["density"] == pytest.approx(0.3, abs=unit / metrics["weights_dense"])
    units = json.loads((run_dir / "units.json").read_text())
    assert {"qk", "vo", "ffn"} <= set(units["scores"]) and units["heads_left"] == metrics["heads_left"]
    assert any(0 < v < 32 for b in units["blocks"] for v in b["vo"])  # heads pruned inside
    assert len({f["kept"] for f in units["ffns"]}) > 1  # FFN layers of unequal widths
    heads = json.loads((run_dir / "heads.json").read_text())
    assert heads["units"]["density"] == heads["density"] == metrics["density"]
    assert heads["params"] == metrics["params"] and heads["params_encoder"] == metrics["params_encoder"]
    assert heads["heads_left"] == metrics["heads_left"] < 72
    assert (run_dir / "units.png").stat().st_size > 1000

    from prune_cli.surgery import count_params, load_pruned
    from prune_cli.units import UnitSpace

    model = load_pruned(run_dir / "model")
    space = UnitSpace.from_model(model)
    assert space.weights()[0] == metrics["weights_kept"]
    assert count_params(model) == metrics["params"] == metrics["params_dense"] - space.removed_params()

    again = tmp_path / "again"  # the export as the start of a further prune: density counts from dense
    res = prune_run([*TINY, f"model.path={run_dir / 'model'}", "method=magnitude", "density=0.2",
                     f"hydra.run.dir={again}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    second = json.loads((again / "metrics.json").read_text())
    assert 0 <= second["weights_kept"] - 0.2 * second["weights_dense"] < unit
    assert second["weights_dense"] == metrics["weights_dense"] and second["params_dense"] == metrics["params_dense"]
    res = prune_run([*TINY, f"model.path={run_dir / 'model'}", "method=magnitude", "density=0.5",
                     "logger.mode=disabled", f"hydra.run.dir={tmp_path / 'up'}"], cwd=tmp_path)
    assert res.returncode == 2 and "density=0.5: <= 0.30" in res.stderr


def test_every_sweep_point_is_checked_before_anything_launches(tmp_path):
    """`-m ... heads=36,1000`: one line naming the bad point, exit 2, and no job folder at all."""
    sweep_dir = tmp_path / "sweep"
    res = prune_run(["-m", "model=minilm", "task=rte", f"task.data_dir={RTE}", "method=michel", "heads=36,1000",
                     "logger.mode=disabled", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sweep job 1 (heads=1000): heads=1000: 0..72" in lines[0], res.stderr
    assert not sweep_dir.exists()
    from prune_cli.cli import sweep_points

    points = sweep_points(["experiment=dsp_curve", "method=michel", "heads=9,18"])  # the command line wins
    assert points == [["experiment=dsp_curve", "method=michel", "heads=9"],
                      ["experiment=dsp_curve", "method=michel", "heads=18"]]
    assert len(sweep_points(["experiment=dsp_curve"])) == 30  # the experiment's own 6 methods x 5 budgets


@pytest.mark.slow
def test_a_failing_job_does_not_sink_the_sweep_and_a_rerun_redoes_only_it(tmp_path):
    """Two jobs, one with a model folder whose weights are missing (it passes the up-front checks,
    then fails to load): the other still finishes, the sweep writes summary.json/md, exits 1; the
    same command again skips the finished job and retries the other, which now succeeds."""
    import shutil

    from conftest import minilm_path

    good, bad = Path(minilm_path()), tmp_path / "broken"
    bad.mkdir()
    for f in good.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy2(f, bad / f.name)
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *TINY, "method=none", "trainer.max_steps=1", f"model.path={good},{bad}", "logger.mode=disabled",
            "export_model=false", f"hydra.sweep.dir={sweep_dir}"]
    res = prune_run(args, cwd=tmp_path)
    assert res.returncode == 1, (res.stdout[-2000:], res.stderr[-2000:])
    summary = json.loads((sweep_dir / "summary.json").read_text())["jobs"]
    assert [j["status"] for j in summary] == ["completed", "failed"]
    assert summary[0]["primary_metric"] == "accuracy" and "safetensors" in summary[1]["error"]
    assert "1/2 jobs completed" in res.stdout and (sweep_dir / "summary.md").is_file()
    first = (sweep_dir / summary[0]["folder"] / "metrics.json").stat().st_mtime_ns

    shutil.copy2(next(good.glob("*.safetensors")), bad)  # fixed: the rerun redoes only that job
    res = prune_run(args, cwd=tmp_path)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert "completed before" in res.stdout and "2/2 jobs completed" in res.stdout
    assert (sweep_dir / summary[0]["folder"] / "metrics.json").stat().st_mtime_ns == first
    assert [j["status"] for j in json.loads((sweep_dir / "summary.json").read_text())["jobs"]] == ["completed"] * 2


def test_a_hub_id_is_a_model_option(tmp_path):
    """`model=<owner>/<name>` needs no YAML: offline and uncached, one line naming that id."""
    res = prune_run(["model=Qwen/Qwen2.5-0.5B", "task=rte", f"task.data_dir={RTE}", "method=taylor", "heads=10"],
                    cwd=tmp_path, env_extra={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("prune-run: error: model='Qwen/Qwen2.5-0.5B': a model in")


def test_help_lists_the_options_a_user_can_choose(tmp_path):
    res = prune_run(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    task = next(line for line in res.stdout.splitlines() if line.startswith("task: "))
    assert "_glue" not in task and "wikitext2" in task and "zeroshot" in task
    assert "hydra/launcher: basic, local, parallel, slurm" in res.stdout
