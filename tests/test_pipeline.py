"""Pipeline behaviour that needs no subprocess: resume after a crash, sweeps, determinism."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from prune_cli.pipeline import RUNNERS, Pipeline

ROOT = Path(__file__).resolve().parents[1]
RTE = ROOT.parent / "shared" / "data" / "glue" / "RTE"
MRPC = ROOT.parent / "shared" / "data" / "glue" / "MRPC"


def make_cfg(*overrides):
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=[
            "model=minilm", "task=rte", f"task.data_dir={RTE}", "task.max_train_samples=16",
            "task.max_eval_samples=16", "trainer.max_steps=2", "trainer.batch_size=8",
            "trainer.progress_bar=false", "logger.mode=disabled", *overrides,
        ])


@pytest.mark.slow
def test_crash_mid_run_resumes_without_redoing_finished_stages(tmp_path, monkeypatch):
    cfg = make_cfg("method=random", "heads=30", "export_model=false")
    calls = []
    original = RUNNERS["evaluate"]

    def crash_once(self, state, index):
        calls.append(index)
        if len(calls) == 1:
            raise RuntimeError("node died")
        return original(self, state, index)

    monkeypatch.setitem(RUNNERS, "evaluate", crash_once)
    with pytest.raises(RuntimeError, match="node died"):
        Pipeline(cfg, tmp_path).run()
    progress = json.loads((tmp_path / "checkpoints" / "progress.json").read_text())
    assert progress["done"] == 2 and sum(progress["mask"]) == 30  # finetune, prune, finetune done

    redone = []
    for name in ("finetune", "prune"):
        monkeypatch.setitem(RUNNERS, name, lambda self, s, i, n=name: redone.append(n))
    metrics = Pipeline(cfg, tmp_path).run()
    assert redone == []  # nothing before the crash point ran again
    assert metrics["heads_kept"] == 30 and [s["stage"] for s in metrics["stages"]][:3] == ["finetune", "prune", "finetune"]
    assert "accuracy" in metrics["eval"]


@pytest.mark.slow
def test_crash_mid_stage_resumes_from_the_step_checkpoint(tmp_path, monkeypatch):
    """A run killed inside a training stage continues from its last step checkpoint: same losses
    as an uninterrupted run, and the logged global step carries on instead of restarting at 0."""
    overrides = ("method=none", "export_model=false", "trainer.max_steps=4", "trainer.save_every=2",
                 "trainer.eval_every=3", "trainer.log_every=1", "trainer.batch_size=4")
    whole = Pipeline(make_cfg(*overrides), tmp_path / "whole").run()

    original = Pipeline.evaluate
    calls = []

    def die_at_first_eval(self, state, stage):
        calls.append(stage)
        if len(calls) == 1:
            raise RuntimeError("node died")
        return original(self, state, stage)

    monkeypatch.setattr(Pipeline, "evaluate", die_at_first_eval)
    with pytest.raises(RuntimeError, match="node died"):
        Pipeline(make_cfg(*overrides), tmp_path / "cut").run()
    assert (tmp_path / "cut" / "checkpoints" / "train-0.pt").is_file()
    resumed = Pipeline(make_cfg(*overrides), tmp_path / "cut").run()

    def losses(run):
        rows = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["finetune/loss"]) for r in rows if "finetune/loss" in r]

    cut = losses("cut")
    assert [s for s, _ in cut] == [1, 2, 3, 4]  # steps 1-3 before the crash; resumed at 2, step 3's row is redone
    assert dict(cut) == pytest.approx(dict(losses("whole")), abs=1e-6)
    assert resumed["eval"] == pytest.approx(whole["eval"])


@pytest.mark.slow
def test_same_seed_same_result(tmp_path):
    a = Pipeline(make_cfg("method=michel", "heads=20", "export_model=false"), tmp_path / "a").run()
    b = Pipeline(make_cfg("method=michel", "heads=20", "export_model=false"), tmp_path / "b").run()
    ha = json.loads((tmp_path / "a" / "heads.json").read_text())
    hb = json.loads((tmp_path / "b" / "heads.json").read_text())
    assert ha["mask"] == hb["mask"] and ha["scores"] == hb["scores"]
    assert a["eval"] == b["eval"] and a["stages"][0]["train_loss"] == b["stages"][0]["train_loss"]


@pytest.mark.slow
def test_multirun_sweep_writes_one_folder_per_job(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    res = subprocess.run(
        [sys.executable, "-m", "prune_cli.cli", "-m", "model=minilm", "task=mrpc", f"task.data_dir={MRPC}",
         "method=random,michel", "heads=18,54", "task.max_train_samples=16", "task.max_eval_samples=16",
         "trainer.max_steps=1", "trainer.batch_size=8", "trainer.progress_bar=false", "logger.mode=disabled",
         "export_model=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4
    seen = {(m["method"], m["heads_kept"]) for m in (json.loads(p.read_text()) for p in runs)}
    assert seen == {("random", 18), ("random", 54), ("michel", 18), ("michel", 54)}
    assert any("method=michel,heads=18" in str(p) or "heads=18,method=michel" in str(p) for p in runs)


def test_sweep_job_folder_names_stay_short_and_distinct():
    """Hydra names a job folder after all its overrides; with many of them the name passes the
    255-byte file-name limit and the job dies. The folder name is cut and made unique by a hash."""
    from prune_cli import _job_dirname

    assert _job_dirname(3, "heads=18,method=michel") == "3_heads=18,method=michel"
    assert _job_dirname(0, "") == "0"
    fixed = ",".join(f"trainer.key_{i}=value_{i}" for i in range(20))
    a, b = _job_dirname(0, f"heads=18,{fixed}"), _job_dirname(0, f"heads=36,{fixed}")
    assert len(a) <= 160 and len(b) <= 160 and a != b and a.startswith("0_heads=18,")
    assert _job_dirname(0, fixed + ",z=1") != _job_dirname(0, fixed + ",z=2")  # differ only past the cut


def test_collect_runs_shows_fractions_and_percentages_on_one_scale(tmp_path):
    """GLUE metrics are fractions, SQuAD EM/F1 and BLEU already percentages: the table shows both x1 in %."""
    from prune_cli.reports import find_runs, table

    for name, family, task, metric, value in [("a", "glue", "rte", "accuracy", 0.625),
                                              ("b", "translation", "multi30k_de_en", "bleu", 39.09)]:
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"task: {{name: {task}, family: {family}}}\nmethod: {{name: michel}}\n")
        (run / "metrics.json").write_text(json.dumps({
            "task": task, "method": "michel", "primary_metric": metric, "primary": value,
            "heads_kept": 36, "heads_total": 72}))
    text = table(find_runs([tmp_path]))
    assert "| michel | 62.5 |" in text and "| michel | 39.1 |" in text


def test_collect_runs_gives_mean_std_and_n_over_seeds(tmp_path):
    from prune_cli.reports import find_runs, table

    for seed, value in ((1, 0.70), (2, 0.74), (3, 0.72)):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "task": "rte", "method": "smp", "primary_metric": "accuracy", "primary": value, "seed": seed,
            "heads_kept": 36, "heads_total": 72}))
    (tmp_path / "meta").mkdir()  # a meta_train run: no final metric, no row
    (tmp_path / "meta" / "metrics.json").write_text(json.dumps({
        "task": "rte", "method": "smp", "primary_metric": "accuracy", "primary": None, "heads_kept": 72,
        "heads_total": 72}))
    text = table(find_runs([tmp_path]))
    assert "| smp | 72.0 ± 2.0 (n=3) |" in text and "| 72 |" not in text


def test_collect_runs_labels_ablations_by_config_keys(tmp_path):
    from prune_cli.reports import find_runs, table

    for name, method, distill, value in (("a", "apd", "peer", 0.70), ("b", "apd", "none", 0.60),
                                         ("c", "random", "none", 0.5)):
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"method:\n  name: {method}\ndistill:\n  name: {distill}\n")
        (run / "metrics.json").write_text(json.dumps({
            "task": "rte", "method": method, "primary_metric": "accuracy", "primary": value, "seed": 1,
            "heads_kept": 36, "heads_total": 72}))
    text = table(find_runs([tmp_path], ("distill.name", "method.tolerance")))
    assert "| apd distill=peer | 70.0 |" in text and "| apd distill=none | 60.0 |" in text
    assert "| random | 50.0 |" in text  # every random run has distill=none: nothing to tell apart


def test_collect_runs_sets_published_numbers_beside_ours(tmp_path):
    """published/ parses (every entry says paper, task, method, metric, budget, value), and the
    paper-vs-ours table matches runs by task, method and budget, says the model differs, and
    averages a lossless run's heads removed over tasks for the APD abstract's number."""
    from prune_cli.reports import find_runs, load_published, paper_table

    published = load_published(ROOT / "published")
    assert published and all({"paper", "task", "method", "metric", "budget", "value", "model"} <= set(p)
                              for p in published)
    runs = {"g1": ("grain", "sst2", 0.05, 72, None, 0.80), "g2": ("grain", "sst2", 0.0502, 70, None, 0.82),
            "far": ("grain", "sst2", 0.2, 72, None, 0.9), "whole": ("grain", "sst2", 0.05, 11, None, 0.5),
            "l1": ("apd", "rte", 0.6, 30, 0.01, 0.6),
            "l2": ("apd", "mrpc", 0.5, 24, 0.01, 0.8)}
    for name, (method, task, density, kept, tol, value) in runs.items():
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        units = "heads_ffn" if name == "whole" else "null"  # GRAIN's whole-heads ablation: not the paper's method
        (run / ".hydra" / "config.yaml").write_text(
            f"units: {units}\nmethod:\n  name: {method}\n  tolerance: {tol or 'null'}\n")
        (run / "metrics.json").write_text(json.dumps({
            "task": task, "model": "minilm", "method": method, "primary_metric": "accuracy", "primary": value,
            "eval": {"accuracy": value}, "seed": 1, "heads_kept": kept, "heads_total": 72, "density": density}))
    text, rows = paper_table(find_runs([tmp_path]), published)
    sst2 = next(r for r in rows if r["task"] == "sst2" and r["method"] == "grain" and r["budget"] == {"density": 0.05})
    assert sst2["n"] == 2 and sst2["ours"] == pytest.approx(81.0) and sst2["delta"] == pytest.approx(81.0 - 91.4)
    assert not sst2["setting_matches"] and "no: ours minilm, paper bert-base-uncased" in text
    apd = next(r for r in rows if r["method"] == "apd")
    assert apd["ours"] == pytest.approx((100 * 42 / 72 + 100 * 48 / 72) / 2) and "(lower bound)" in text
    one_paper = load_published(ROOT / "published" / "apd.yaml")  # a file alone: only that paper's numbers
    assert one_paper and {p["paper"] for p in one_paper} == {apd["paper"]}


def test_collect_runs_curve_has_seed_spread_and_the_published_points(tmp_path):
    """The K-curve plot: mean +- std over seeds per budget on a shared % axis, and the published
    points of the same task and metric over it (GRAIN's Table 1 at 5 % and 10 % density)."""
    from prune_cli.reports import find_runs, load_published, plot

    for density, values in ((0.05, (0.80, 0.84)), (0.1, (0.86, 0.88))):
        for seed, value in enumerate(values, 1):
            run = tmp_path / f"d{density}_s{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "config.yaml").write_text(f"density: {density}\n")
            (run / "metrics.json").write_text(json.dumps({
                "task": "sst2", "model": "minilm", "method": "grain", "primary_metric": "accuracy", "primary": value,
                "eval": {"accuracy": value}, "seed": seed, "heads_kept": 60, "heads_total": 72, "density": density}))
    # a run given heads= reports the density it left (36 of 72 heads: 0.83), but sits at 50 % of the heads
    (tmp_path / "heads36").mkdir()
    (tmp_path / "heads36" / "metrics.json").write_text(json.dumps({
        "task": "rte", "model": "minilm", "method": "apd", "primary_metric": "accuracy", "primary": 0.5,
        "eval": {"accuracy": 0.5}, "seed": 1, "heads_kept": 36, "heads_total": 72, "density": 0.833}))
    drawn = plot(find_runs([tmp_path]), tmp_path / "curve.png", load_published(ROOT / "published"))
    assert [x for x, *_ in drawn["rte"]["lines"]["apd"]] == [50.0]
    line = drawn["sst2"]["lines"]["grain"]
    assert [(x, round(m, 6), n) for x, m, _, n in line] == [(5.0, 82.0, 2), (10.0, 87.0, 2)]
    assert line[0][2] == pytest.approx((2 * 2.0 ** 2) ** 0.5)  # sample std of 80, 84
    assert sorted((x, v) for x, v, _ in drawn["sst2"]["published"]) == [(5.0, 91.4), (10.0, 91.9), (100.0, 92.9)]  # + teacher
    assert all("published, bert-base-uncased" in label for *_, label in drawn["sst2"]["published"])
    assert (tmp_path / "curve.png").stat().st_size > 5000


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused_and_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = RUNNERS["finetune"]

    def die(self, state, index):
        raise RuntimeError("node died")

    monkeypatch.setitem(RUNNERS, "finetune", die)
    with pytest.raises(RuntimeError, match="node died"):
        Pipeline(make_cfg("method=none", "trainer.lr=1e-4"), run).run()
    monkeypatch.setitem(RUNNERS, "finetune", original)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("what the run was started with\n")

    from prune_cli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.lr: 0.0001 -> 2e-05"):
        Pipeline(make_cfg("method=none", "trainer.lr=2e-5"), run).run()
    # through the CLI: refused before Hydra rewrites .hydra/config.yaml, one line, exit 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", "model=minilm", "task=rte", f"task.data_dir={RTE}",
                          "task.max_train_samples=16", "task.max_eval_samples=16", "trainer.max_steps=2",
                          "trainer.batch_size=8", "trainer.progress_bar=false", "method=none", "trainer.lr=3e-5",
                          f"hydra.run.dir={run}"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-2000:]
    assert "trainer.lr: 0.0001 -> 3e-05" in res.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == "what the run was started with\n"
    # the same settings resume it (the logger may change: it does not change results)
    metrics = Pipeline(make_cfg("method=none", "trainer.lr=1e-4", "logger=none"), run).run()
    assert metrics["stages"][0]["stage"] == "finetune"


@pytest.mark.slow
def test_two_runs_started_together_get_two_folders(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = [sys.executable, "-m", "prune_cli.cli", "model=minilm", "task=rte", f"task.data_dir={RTE}",
            "task.max_train_samples=8", "task.max_eval_samples=8", "trainer.max_steps=1", "trainer.batch_size=8",
            "trainer.progress_bar=false", "method=none", "logger=none", "export_model=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = sorted((tmp_path / "outputs" / "rte" / "none").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


@pytest.mark.slow
def test_a_pruned_export_is_pruned_again_in_the_dense_index(tmp_path):
    """K-curves by chaining runs: 72 -> 36 (michel), 36 -> 18 (michel), 18 -> 9 (dsp), each from the
    previous export. Every run speaks in the dense index: heads_total 72, params_dense the dense
    model's, and each mask a subset of the previous one."""
    first = Pipeline(make_cfg("method=michel", "heads=36"), tmp_path / "a").run()
    runs = [("a", first)]
    for name, method, k in (("b", "michel", 18), ("c", "dsp", 9)):
        metrics = Pipeline(make_cfg(f"method={method}", f"heads={k}", f"model.path={tmp_path / runs[-1][0] / 'model'}"),
                           tmp_path / name).run()
        assert (metrics["heads_total"], metrics["heads_kept"]) == (72, k)
        assert metrics["params_dense"] == first["params_dense"] and metrics["params"] < runs[-1][1]["params"]
        runs.append((name, metrics))
    masks = [torch.tensor([x for block in json.loads((tmp_path / n / "heads.json").read_text())["mask"] for x in block])
             for n, _ in runs]
    assert [int(m.sum()) for m in masks] == [36, 18, 9]
    assert all(bool((later <= earlier).all()) for earlier, later in itertools.pairwise(masks))
    from prune_cli.heads import HeadSpace
    from prune_cli.surgery import load_pruned

    assert HeadSpace.from_model(load_pruned(tmp_path / "c" / "model")).total == 9


@pytest.mark.slow
@pytest.mark.parametrize("pruned", [True, False], ids=["pruned-export", "dense-export"])
def test_an_export_reused_for_other_labels_gets_a_new_head(tmp_path, capfd, pruned):
    from safetensors.torch import load_file

    method = ["method=random", "heads=40"] if pruned else ["method=none"]
    Pipeline(make_cfg(*method), tmp_path / "rte").run()
    saved = load_file(tmp_path / "rte" / "model" / "model.safetensors")
    capfd.readouterr()
    # MRPC: 2 labels too, but other ones: the RTE head would be silently reused as an MRPC head
    cfg = make_cfg("method=none", f"model.path={tmp_path / 'rte' / 'model'}", "task=mrpc", f"task.data_dir={MRPC}")
    from prune_cli.tasks import get_task

    task = get_task(cfg.task)
    model, _ = task.load_model(cfg.model)
    err = capfd.readouterr().err
    assert "prune-run: warning: model.path=" in err and "classifier is re-initialised" in err
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    assert not torch.equal(model.state_dict()["classifier.weight"], saved["classifier.weight"])
    assert torch.equal(model.state_dict()["bert.encoder.layer.5.output.dense.weight"],
                       saved["bert.encoder.layer.5.output.dense.weight"])
    # the same labels: the fine-tuned head is kept, no warning
    same = get_task(make_cfg("method=none", f"model.path={tmp_path / 'rte' / 'model'}").task)
    model, _ = same.load_model(make_cfg("method=none", f"model.path={tmp_path / 'rte' / 'model'}").model)
    assert "warning" not in capfd.readouterr().err
    assert torch.equal(model.state_dict()["classifier.weight"], saved["classifier.weight"])


def test_compute_accounting_per_stage_and_in_total(tmp_path):
    """metrics.json says what every stage computed: optimizer steps, epochs, examples, forward and
    backward passes (Michel's scoring pass included), and their sum."""
    metrics = Pipeline(make_cfg("method=michel", "heads=36", "export_model=false"), tmp_path).run()
    by = {s["stage"]: s["compute"] for s in metrics["stages"] if s["stage"] != "finetune"}
    first, second = [s["compute"] for s in metrics["stages"] if s["stage"] == "finetune"]
    assert second == first  # the recovery fine-tune: the same budget
    # 16 rows, batch 8: an epoch is 2 steps; max_steps=2
    assert first["optimizer_steps"] == 2 and first["epochs"] == 1.0 and first["examples"] == 16
    assert first["backward_passes"] == 2 and first["forward_passes"] == 2
    assert by["prune"]["forward_passes"] == 2 and by["prune"]["backward_passes"] == 2  # one pass, 2 batches
    assert by["prune"]["optimizer_steps"] == 0 and by["prune"]["forward_examples"] == 16
    assert by["evaluate"]["forward_passes"] >= 1 and by["evaluate"]["backward_passes"] == 0
    total = metrics["compute"]
    assert total["optimizer_steps"] == 4 and total["backward_passes"] == 6
    assert total["device"] == "cpu" and total["wall_time_s"] > 0


def test_paired_bootstrap_between_methods_on_the_same_examples(tmp_path):
    """A right on 80 % of 400 examples, B on 60 %, 3 seeds each: the delta is +20 points, its 95 %
    interval excludes 0 and p is tiny; B against an identical copy of itself: delta 0, p 1."""
    import numpy as np

    from prune_cli.reports import comparison_table, find_runs

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    for method, right in (("a", 0.8), ("b", 0.6), ("b_copy", 0.6)):
        for seed in (1, 2, 3):
            g = np.random.default_rng(seed)  # b and b_copy: the same predictions
            correct = g.random(400) < right if method != "a" else np.random.default_rng(seed + 9).random(400) < right
            preds = np.where(correct, labels, 1 - labels)
            run = tmp_path / f"{method}_{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "config.yaml").write_text(
                "task: {name: rte, family: glue, primary_metric: accuracy, metrics: [accuracy]}\n")
            (run / "metrics.json").write_text(json.dumps({
                "task": "rte", "method": method, "primary_metric": "accuracy", "primary": float(correct.mean()),
                "seed": seed, "heads_kept": 36, "heads_total": 72}))
            (run / "predictions.json").write_text(json.dumps({"splits": {"validation": {
                "prediction": preds.tolist(), "label": labels.tolist()}}}))
    text, rows = comparison_table(find_runs([tmp_path]), baseline="b", resamples=300)
    a = next(r for r in rows if r["method"] == "a")
    same = next(r for r in rows if r["method"] == "b_copy")
    assert 0.15 < a["delta"] < 0.25 and a["low"] > 0 and a["p"] < 0.01 and a["seeds"] == 3
    assert same["delta"] == 0 and same["p"] == 1.0
    assert "| rte | a | 36 | +" in text


def test_collect_runs_groups_density_runs_by_the_density_asked(tmp_path):
    """GRAIN-style runs leave a different number of heads per seed: the table's columns, the
    structure table and the bootstrap's pairs follow the density asked; the teacher sits at 100 %."""
    import numpy as np

    from prune_cli.reports import comparison_table, find_runs, structure_table, table

    labels = np.random.default_rng(0).integers(0, 2, 200)
    runs = {"teacher": ("none", None, 1, 72, 1.0, 0.9), "g1": ("grain", 0.1, 1, 55, 0.1, 0.8),
            "g2": ("grain", 0.1, 2, 52, 0.1001, 0.7), "h1": ("heads_ffn", 0.1, 1, 22, 0.1024, 0.6),
            "h2": ("heads_ffn", 0.1, 2, 21, 0.1020, 0.6), "g5": ("grain", 0.05, 1, 40, 0.05, 0.5)}
    for name, (method, asked, seed, heads, density, right) in runs.items():
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(
            "task: {name: sst2, family: glue, primary_metric: accuracy, metrics: [accuracy]}\n"
            f"density: {'null' if asked is None else asked}\n")
        correct = np.random.default_rng(seed).random(200) < right
        (run / "metrics.json").write_text(json.dumps({
            "task": "sst2", "method": method, "primary_metric": "accuracy", "primary": float(correct.mean()),
            "seed": seed, "heads_kept": 72, "heads_total": 72, "heads_left": heads, "density": density,
            "params_encoder": int(10.65e6 * density)}))
        (run / "predictions.json").write_text(json.dumps({"splits": {"validation": {
            "prediction": np.where(correct, labels, 1 - labels).tolist(), "label": labels.tolist()}}}))
        if method != "none":
            (run / "bench.json").write_text(json.dumps({"results": [{
                "variant": "run_model", "batch": 32, "seq_len": 128, "dtype": "float32", "device": "cpu",
                "speedup": 10 * density + seed, "flop_speedup": 1 / density}]}))
    found = find_runs([tmp_path])
    text = table(found)
    assert "| method | 100 % | 10 % | 5 % |" in text and "weights kept (density)" in text
    assert "| grain |  | " in text and "(n=2) |" in text.split("| grain |")[1].split("\n")[0]
    structure = structure_table(found)
    row = next(line for line in structure.splitlines() if "| heads_ffn | 10 %" in line)
    assert "| 2 | 21.5 (22, 21) | 0.1022 |" in row and "2.52x / 9.78x (2.02, 3.02)" in row
    _, rows = comparison_table(found, baseline="heads_ffn", resamples=50)
    grain = next(r for r in rows if r["method"] == "grain" and r["budget"] == "10 %")
    assert grain["seeds"] == 2  # paired across different heads left


def test_prune_curve_scores_once_and_evaluates_every_step_without_retraining(tmp_path):
    """Michel et al.'s figure from one run: 0, 25, 50, 75, 100 % of the heads gated off, each
    evaluated as it stands; the point at K equals the physically pruned model's evaluation."""
    cfg = make_cfg("method=michel", "heads=36", "curve_step=0.25", "export_model=false",
                   "pipeline=[finetune,prune_curve,evaluate]")
    metrics = Pipeline(cfg, tmp_path).run()
    curve = metrics["curve"]
    assert [p["heads_kept"] for p in curve] == [72, 54, 36, 18, 0]
    assert [p["fraction_pruned"] for p in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    at_k = curve[2]["metrics"]
    assert at_k["accuracy"] == metrics["eval"]["accuracy"] and abs(at_k["loss"] - metrics["eval"]["loss"]) < 1e-5
    assert metrics["heads_kept"] == 36 and (tmp_path / "curve.png").stat().st_size > 1000
    prune = next(s for s in metrics["stages"] if s["stage"] == "prune_curve")
    assert prune["compute"]["backward_passes"] == 2  # scored once: one pass over the 2 training batches
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum("curve/accuracy" in row for row in log) == 5
    # every point's per-example predictions, which the collector expands into `michel/curve` rows
    points = json.loads((tmp_path / "curve_predictions.json").read_text())["points"]
    assert [p["heads_kept"] for p in points] == [72, 54, 36, 18, 0]
    for point, step in zip(points, curve):
        split = next(iter(point["splits"].values()))
        assert np.mean(np.equal(split["prediction"], split["label"])) == pytest.approx(step["metrics"]["accuracy"])
    from prune_cli.reports import budget_x, find_runs, run_predictions

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # what prune-run's Hydra writes
    runs = find_runs([tmp_path])
    assert [(r["method"], r["heads_kept"]) for r in runs] == [("michel/curve", k) for k in (72, 54, 36, 18, 0)]
    assert [x for _, x in map(budget_x, runs)] == [100.0, 75.0, 50.0, 25.0, 0.0]  # on the heads axis
    assert run_predictions(runs[3])["prediction"] == next(iter(points[3]["splits"].values()))["prediction"]
