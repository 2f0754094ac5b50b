"""The training loop's mechanics, checked against what they must equal (torchtune-style):
gradient accumulation == one big batch, a resumed run == an uninterrupted one, the same seed ==
the same bits, gate learning without dropout, each stage its own data order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import group_cfg
from omegaconf import OmegaConf

from prune_cli.train import budget, make_accelerator, train

ROOT = Path(__file__).resolve().parents[1]
RTE = ROOT.parent / "shared" / "data" / "glue" / "RTE"


def tcfg(**kw):
    base = OmegaConf.to_container(group_cfg("trainer", "default"))
    base.update(epochs=2, batch_size=8, lr=1e-3, save_every=0, log_every=1, progress_bar=False)
    base.update(kw)
    return OmegaConf.create(base)


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0, token_labels: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, 99, (n, 10), generator=g)
        self.lengths = torch.randint(4, 11, (n,), generator=g)
        self.labels = torch.randint(0, 2, (n, 10) if token_labels else (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return i


def collate(data: Rows, seen: list | None = None):
    def fn(indices):
        if seen is not None:
            seen.append(list(indices))
        idx = torch.tensor(indices)
        mask = (torch.arange(10)[None] < data.lengths[idx, None]).long()
        labels = data.labels[idx].clone()
        if labels.dim() > 1:
            labels[mask == 0] = -100
        return {"input_ids": data.ids[idx], "attention_mask": mask, "labels": labels}
    return fn


def tiny(token_labels=False):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cls = tf.BertForTokenClassification if token_labels else tf.BertForSequenceClassification
    return cls(cfg)


@pytest.mark.parametrize("token_labels", [False, True], ids=["sequence", "token"])
def test_grad_accum_equals_one_big_batch(token_labels):
    """batch 8 x grad_accum 4 == batch 32, fp32, no dropout: 100 rows = 13 micro-batches an
    epoch, so every epoch ends in a window of ONE micro-batch of 4 rows (the big-batch run's
    last batch of 4): it must get a full step, not a quarter of one. Token labels weight each
    micro-batch by its labelled tokens, as the big batch's mean does."""
    data = Rows(100, token_labels=token_labels)
    models = {}
    for bs, accum in ((32, 1), (8, 4)):
        model = tiny(token_labels)
        cfg = tcfg(batch_size=bs, grad_accum=accum)
        assert budget(cfg, -(-100 // bs)).steps == 8  # 4 windows an epoch, 2 epochs
        train(model=model, dataset=data, collate_fn=collate(data), tcfg=cfg, accelerator=make_accelerator(cfg, 0),
              seed=0)
        models[accum] = model
    big, small = (dict(models[a].named_parameters()) for a in (1, 4))
    moved = max((big[k] - p).abs().max().item() for k, p in dict(tiny(token_labels).named_parameters()).items())
    assert moved > 1e-3  # training did move the weights
    worst = max((big[k] - small[k]).abs().max().item() for k in big)
    assert worst < 1e-6, f"accumulated and big-batch weights differ by {worst}"


def test_each_stage_has_its_own_data_order():
    """The pipeline seeds stage i with seed + i: a recovery fine-tune must not replay the first
    fine-tune's batches (accelerate's seedable sampler is re-seeded per call)."""
    data = Rows(24)
    cfg = tcfg(epochs=1, batch_size=8, lr=0.0)
    accelerator = make_accelerator(cfg, 42)
    orders = []
    for seed in (42, 43, 42):
        seen: list = []
        train(model=tiny(), dataset=data, collate_fn=collate(data, seen), tcfg=cfg, accelerator=accelerator, seed=seed)
        orders.append(seen)
    assert orders[0] != orders[1] and orders[0] == orders[2]


def test_gate_learning_stays_in_eval_mode_across_evaluations():
    """freeze_model (pipelined gate learning): no dropout in any training forward, also after a
    mid-stage evaluation (which used to switch the model back to train mode)."""
    from prune_cli.gates import Gates
    from prune_cli.heads import HeadSpace
    from prune_cli.methods import get_pruner

    data = Rows(32)
    model = tiny()
    space = HeadSpace.from_model(model)
    method = group_cfg("method", "dsp")
    pruner = get_pruner(method, space, 0)
    pruner.setup(keep=4, eligible=torch.ones(space.total, dtype=torch.bool), schedule=OmegaConf.create(
        group_cfg("schedule", "one_shot")))
    modes = []
    model.register_forward_pre_hook(lambda m, a: modes.append(m.training) if torch.is_grad_enabled() else None)

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            model(**collate(data)(list(range(4))))

    cfg = tcfg(epochs=1, batch_size=4, eval_every=2)
    with Gates(model, space) as gates:
        train(model=model, dataset=data, collate_fn=collate(data), tcfg=cfg, accelerator=make_accelerator(cfg, 0),
              seed=0, pruner=pruner, gates=gates, freeze_model=True, evaluate=evaluate)
    assert len(modes) == 8 and not any(modes)


# ------------------------------------------------------------------ resume, killed for real
DRIVER = textwrap.dedent('''
    """Run a pipeline and SIGKILL this very process at one point: after optimizer step N has been
    logged (`step:N`), or when stage I is about to be committed (`commit:I`); or send it SLURM's
    preemption warning, SIGUSR2, after step N (`signal:N`)."""
    import json, os, signal, sys
    from hydra import compose, initialize_config_module
    from prune_cli.pipeline import Pipeline
    from prune_cli.tracking import RunLogger

    run_dir, kill, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    what, _, at = kill.partition(":")
    log, commit = RunLogger.log, Pipeline._checkpoint

    def log_then_die(self, row, *a, **k):
        log(self, row, *a, **k)
        if what in ("step", "signal") and self.step == int(at) and any(key.endswith("/loss") for key in row):
            os.kill(os.getpid(), signal.SIGKILL if what == "step" else signal.SIGUSR2)

    def die_before_commit(self, state, index, *a, **k):
        if what == "commit" and index == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        return commit(self, state, index, *a, **k)

    RunLogger.log, Pipeline._checkpoint = log_then_die, die_before_commit
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    Pipeline(cfg, run_dir).run()
''')

RESUME = ["model=minilm", "task=rte", f"task.data_dir={RTE}", "task.max_train_samples=26", "task.max_eval_samples=16",
          "trainer.batch_size=4", "trainer.grad_accum=3", "trainer.epochs=2", "trainer.save_every=2",
          "trainer.log_every=1", "trainer.progress_bar=false", "logger.mode=disabled", "method=none"]


def _drive(tmp_path, run_dir, kill, overrides=RESUME):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(script), str(run_dir), kill, json.dumps(overrides)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _rows(run_dir):
    """log.jsonl without the values that differ between two equal runs (timings)."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith(("seconds", "_time", "runtime"))} for r in rows]


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["finetune/loss"]) for r in rows if "finetune/loss" in r]


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights_metrics_and_curves(tmp_path):
    """26 rows / batch 4 = 7 micro-batches an epoch = windows of 3, 3, 1 (grad_accum 3): 3 steps
    an epoch, 6 in all, dropout on. The run is SIGKILLed after step 3 (checkpoint at 2), then
    after step 5 (mid-epoch 2, checkpoint at 4), then between the end of training and the
    stage's commit; each restart resumes. Equal to the uninterrupted run: final weights, the
    evaluation, and the loss of every step in log.jsonl."""
    whole = _drive(tmp_path, tmp_path / "whole", "none:0")
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = tmp_path / "cut"
    for kill in ("step:3", "step:5", "commit:0"):
        res = _drive(tmp_path, cut, kill)
        assert res.returncode == -signal.SIGKILL, (kill, res.stderr[-2000:])
        assert (cut / "checkpoints").is_dir()
    res = _drive(tmp_path, cut, "none:0")
    assert res.returncode == 0, res.stderr[-2000:]

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", cut))
    assert a["eval"] == b["eval"] and a["stages"][0]["train_loss"] == b["stages"][0]["train_loss"]
    assert a["stages"][0]["steps"] == b["stages"][0]["steps"] == 6
    # the compute it reports is the uninterrupted run's: resumed stages do not forget what they did
    # before the kill (the redone part is counted once)
    assert [s["compute"] for s in a["stages"]] == [s["compute"] for s in b["stages"]]
    assert {k: v for k, v in a["compute"].items() if k != "wall_time_s"} == \
        {k: v for k, v in b["compute"].items() if k != "wall_time_s"}
    # logged: 1-3, then 3-5 (resumed at 2: its row of step 3 cut), then 5-6 (resumed at 4), then
    # nothing: the stage had ended and its end was saved, so it is not redone although its commit
    # never happened -- every step once, and every row as the uninterrupted run logged it
    want = dict(_losses(tmp_path / "whole"))
    assert [s for s, _ in _losses(cut)] == [1, 2, 3, 4, 5, 6]
    assert _rows(cut) == _rows(tmp_path / "whole")
    assert all(loss == want[s] for s, loss in _losses(cut))
    from safetensors.torch import load_file

    wa, wb = (load_file(d / "model" / "model.safetensors") for d in (tmp_path / "whole", cut))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_preemption_signal_checkpoints_that_step_and_the_rerun_continues_exactly(tmp_path):
    """SIGUSR2 (what SLURM sends before preempting or at the time limit) after step 3, with
    periodic checkpoints only every 2 steps: the run writes step 3's checkpoint at once and exits
    (128 + SIGUSR2); the rerun resumes AT step 3 (no step is trained twice) and ends equal to the
    uninterrupted run."""
    whole = _drive(tmp_path, tmp_path / "whole", "none:0")
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = tmp_path / "cut"
    res = _drive(tmp_path, cut, "signal:3")
    assert res.returncode == 128 + signal.SIGUSR2, res.stderr[-2000:]
    assert "stopped by a signal in stage finetune at step 3/6; its checkpoint is" in res.stderr  # one line says so
    saved = torch.load(cut / "checkpoints" / "train-0.pt", map_location="cpu", weights_only=False)
    assert saved["step"] == 3
    res = _drive(tmp_path, cut, "none:0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "prune-run: resuming stage finetune at step 3/6 from" in res.stderr
    assert [s for s, _ in _losses(cut)] == [1, 2, 3, 4, 5, 6]
    want = dict(_losses(tmp_path / "whole"))
    assert all(loss == want[s] for s, loss in _losses(cut))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", cut))
    assert a["eval"] == b["eval"]


@pytest.mark.slow
def test_same_seed_twice_gives_bit_identical_metrics(tmp_path):
    from hydra import compose, initialize_config_module

    from prune_cli.pipeline import Pipeline

    def run(name):
        with initialize_config_module("prune_cli.conf", version_base="1.3"):
            cfg = compose("config", overrides=[*RESUME[:-1], "method=random", "heads=40", "export_model=false",
                                               "trainer.max_steps=2"])
        Pipeline(cfg, tmp_path / name).run()
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics.pop("wall_time_s")
        metrics["compute"].pop("wall_time_s")  # the counts stay: the same work both times
        for stage in metrics["stages"]:
            stage.pop("seconds")
        return metrics

    assert run("a") == run("b")
