"""APD: the allocation (exactly K, the optimum of its own objective), the recycling cost it is
built on, the fading gates, the lossless search (never the evaluation split), bad input, and a
run end to end on real rows."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import padded_batch, tiny_model
from omegaconf import OmegaConf

from prune_cli.gates import Gates
from prune_cli.methods.apd import APD, allocate, elimination
from prune_cli.methods.base import ScoreContext
from prune_cli.units import UnitSpace


def _apd(model, keep, eligible=None, schedule=None, **cfg):
    space = UnitSpace.from_model(model)
    apd = APD(OmegaConf.create({"name": "apd", **cfg}), space)
    apd.setup(keep=keep, eligible=space.kept("head") if eligible is None else eligible,
              schedule=OmegaConf.create(schedule or {"name": "linear", "warmup": 0.0, "anneal": 0.5}))
    return apd, space


def _batches(n=3):
    def batches():
        for s in range(n):
            b = padded_batch("bert", seed=s)
            yield {**b, "labels": torch.tensor([0, 1, 0])}
    return batches


def _prepare(model, keep, **kw):
    apd, space = _apd(model, keep, **kw)
    with Gates(model, space) as gates:
        apd.prepare(ScoreContext(model, gates, _batches(), space.kept("head"), space=space))
    return apd, space


def test_allocation_is_the_exact_optimum_and_sums_to_k():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        curves = [[0.0] + torch.rand(int(torch.randint(1, 5, (1,), generator=g)), generator=g).tolist()
                  for _ in range(4)]  # not monotone, not convex: the programme must not care
        total = sum(len(c) - 1 for c in curves)
        for remove in range(total + 1):
            counts = allocate(curves, remove)
            assert sum(counts) == remove
            brute = min(sum(c[r] for c, r in zip(curves, rs))
                        for rs in itertools.product(*[range(len(c)) for c in curves]) if sum(rs) == remove)
            assert sum(c[r] for c, r in zip(curves, counts)) == pytest.approx(brute)


@pytest.mark.parametrize("keep", [0, 1, 5, 11, 12])
def test_apd_keeps_exactly_k_heads_within_the_scope(keep):
    model = tiny_model("bert")
    apd, _space = _prepare(model, keep)
    assert int(apd.final_mask(keep).sum()) == keep
    assert sum(apd.report()["allocation"]) == keep
    eligible = torch.zeros(12, dtype=torch.bool)
    eligible[4:] = True  # layer 0 out of scope: never pruned
    apd, _ = _prepare(model, 6, eligible=eligible)
    mask = apd.final_mask(6)
    assert mask[:4].all() and int(mask[4:].sum()) == 6


def test_the_cost_is_what_the_kept_heads_cannot_take_over():
    """All heads kept: nothing is lost (the refit gives the output projection back). Fewer heads:
    the cost grows along the elimination, and removing everything costs the Fisher-weighted
    energy of the whole output."""
    model = tiny_model("bert")
    apd, space = _apd(model, 6)
    with Gates(model, space) as gates:
        stats = apd.measure(ScoreContext(model, gates, _batches(), space.kept("head"), space=space))
    name = "bert.encoder.layer.1.attention.self"
    st = stats[name]
    all_features = torch.arange(32)
    assert st.cost(all_features) <= 1e-10 * float((st.fisher * st.energy).sum())
    w = model.bert.encoder.layer[1].attention.output.dense.weight.double()
    torch.testing.assert_close(st.refit(all_features), w, atol=1e-4, rtol=0)  # float32 outputs, ~70 tokens
    order, costs = elimination(st, 4, 8, [0, 1, 2, 3])
    assert sorted(order) == [0, 1, 2, 3] and all(b >= a - 1e-12 for a, b in itertools.pairwise(costs))
    assert costs[-1] == pytest.approx(float((st.fisher * st.energy).sum()) / st.tokens)


def test_chosen_heads_fade_with_the_schedule_and_the_peers_train_against_zero():
    model = tiny_model("bert")
    apd, _ = _prepare(model, 6)
    removed = ~apd.keep_mask
    first, mid, late = (apd.gate_values(s, 101, training=True) for s in (0, 25, 60))
    assert first[removed].eq(1).all() and late[removed].eq(0).all()
    assert 0 < float(mid[removed][0]) < 1 and mid[apd.keep_mask].eq(1).all()
    assert apd.gate_values(0, 101, training=False)[removed].eq(0).all()  # evaluations see the pruned model
    assert apd.hard_gates()[removed].eq(0).all()


def _real_cfg(*overrides):
    from hydra import compose, initialize_config_module
    from test_pipeline import RTE

    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=[
            "model=minilm", "task=rte", f"task.data_dir={RTE}", "task.max_train_samples=40",
            "task.max_eval_samples=8", "task.max_length=32", "trainer.batch_size=8", "trainer.max_steps=2",
            "trainer.progress_bar=false", "logger.mode=disabled", "method=apd", *overrides])


def test_lossless_search_reads_only_the_holdout_carved_from_training_rows(tmp_path, monkeypatch, tokenizer):
    """Every row any metric is computed on during the run is a training row held out before the
    dense fine-tune -- never an evaluation row -- and the search reports the heads it pruned."""
    from prune_cli.pipeline import Pipeline
    from prune_cli.tasks import get_task
    from prune_cli.tasks.glue import GlueTask

    cfg = _real_cfg("method.tolerance=0.05", "method.holdout=10", "pipeline=[finetune,prune_joint]",
                    "export_model=false")
    seen = []
    original = GlueTask.predict

    def spy(self, model, tok, dataset, accelerator, batch_size):
        seen.extend(tuple(r) for r in dataset["input_ids"])
        return original(self, model, tok, dataset, accelerator, batch_size)

    monkeypatch.setattr(GlueTask, "predict", spy)
    metrics = Pipeline(cfg, tmp_path / "run").run()
    splits = get_task(cfg.task, seed=cfg.seed).splits(tokenizer)
    train = {tuple(r) for r in splits.train["input_ids"]}
    evaluation = {tuple(r) for r in splits.eval["validation"]["input_ids"]} - train
    assert seen and set(seen) <= train and not set(seen) & evaluation
    assert len(set(seen)) <= 10  # the holdout only
    stage = metrics["stages"][1]
    lossless = stage["lossless"]
    assert lossless["removed"] == 72 - stage["heads_kept"] and "holdout_trained" in lossless
    assert lossless["holdout_rows"] == 10
    ok = [s for s in lossless["search"] if s["metric"] >= lossless["floor"]]
    assert max(s["removed"] for s in ok) == lossless["removed"]


def test_a_tolerance_below_the_holdout_noise_is_warned_about_before_training(caplog):
    """0.01 on 100 held-out rows (the setting whose search swung from 17 to 63 heads) warns and
    names the rows that would resolve it; 0.01 on 2,500 rows and 0.1 on 100 do not."""
    from prune_cli.methods.apd.holdout import coarse_holdout

    with caplog.at_level("WARNING"):
        assert coarse_holdout(0.01, 100)
    assert "method.tolerance=0.01" in caplog.text and "2500 rows" in caplog.text
    assert not coarse_holdout(0.01, 2500) and not coarse_holdout(0.1, 100)


@pytest.mark.parametrize("args, expected", [
    (["method.tolerance=1.5"], "method.tolerance=1.5: a relative metric drop in [0, 1)"),
    (["method.tolerance=0.01", "heads=36"], "heads=36: no budget with method.tolerance=0.01"),
    (["method.tolerance=0.01", "task=conll2003"], "method.tolerance=0.01: null with task=conll2003"),
    (["method.tolerance=0.01", "method.holdout=0"], "method.holdout=0: a fraction of the training rows"),
    (["method=michel", "heads=36", "distill=peer", "pipeline=[prune,finetune,evaluate]"],
     "distill.teacher=None: a folder holding the fine-tuned dense teacher"),
])
def test_bad_apd_input_is_one_line_and_exit_2(tmp_path, args, expected):
    from test_cli import DATA, prune_run

    if not any(a.startswith("method=") for a in args):
        args = ["method=apd", *args]
    res = prune_run(["model=minilm", "task=rte", f"data_root={DATA}", *args, "logger.mode=disabled",
                     f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_apd_end_to_end_on_real_rows(tmp_path):
    """prune-run method=apd heads=36: the dense fine-tune (the peers' teacher), heads fading while
    their layers distil into the kept ones, exactly 36 heads exported, and the model reloads."""
    from test_cli import DATA, prune_run

    run = tmp_path / "run"
    res = prune_run(["model=minilm", "task=rte", f"data_root={DATA}", "method=apd", "heads=36",
                     "task.max_train_samples=32", "task.max_eval_samples=16", "task.max_length=32",
                     "trainer.max_steps=4", "trainer.batch_size=8", "trainer.log_every=1",
                     "trainer.progress_bar=false", "logger.mode=disabled", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["finetune", "prune_joint", "evaluate", "export"]
    assert metrics["heads_kept"] == 36 and sum(metrics["stages"][1]["allocation"]) == 36
    assert (run / "teacher" / "config.json").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    peer = [row["prune_joint/kd_peer"] for row in log if "prune_joint/kd_peer" in row]
    assert peer and max(peer) > 0
    from prune_cli.heads import HeadSpace
    from prune_cli.surgery import load_pruned

    assert HeadSpace.from_model(load_pruned(run / "model")).total == 36
