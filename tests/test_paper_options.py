"""The switches that turn our defaults into the official code's training setups (DSP's logit lr
schedule, clipping and pipelined dropout; Voita's own ending by lambda with fractional test-time
gates) and `trainer.total_epochs`, the equal budget for methods of different pipelines."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ENC_DEC, group_cfg, padded_batch, tiny_model
from omegaconf import OmegaConf
from test_cli import RTE, TINY, prune_run
from test_learners import batch, learner, tiny_bert

from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.methods import get_pruner
from prune_cli.surgery import remove_heads


def trainer_cfg(**overrides):
    return OmegaConf.merge(group_cfg("trainer", "default"),
                           {"batch_size": 4, "progress_bar": False}, overrides)


def rows(n: int = 12):
    data = batch(0, n=n)
    return [{k: v[i] for k, v in data.items()} for i in range(n)]


def stack(b):
    return {k: torch.stack([r[k] for r in b]) for k in b[0]}


def run_train(pruner, model=None, freeze_model=False, **tcfg):
    from prune_cli.train import make_accelerator, train

    model = model or tiny_bert()
    tcfg = trainer_cfg(**tcfg)
    with Gates(model, HeadSpace.from_model(model)) as gates:
        train(model=model, dataset=rows(), collate_fn=stack, tcfg=tcfg, accelerator=make_accelerator(tcfg, 0),
              seed=0, pruner=pruner, gates=gates, freeze_model=freeze_model)
    return model


# ------------------------------------------------------------------------------------------ DSP
@pytest.mark.parametrize("kind", ["constant", "model"])
def test_logit_lr_is_constant_or_follows_the_model_schedule(kind):
    from prune_cli.train import _param_groups, _scheduler

    model = tiny_bert()
    pruner = learner("dsp", HeadSpace.from_model(model), 6, lr_schedule=kind)
    tcfg = trainer_cfg(warmup_ratio=0.0, lr=1e-3)
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg, pruner, False), lr=1e-3)
    scheduler = _scheduler(optimizer, tcfg, 10, pruner)
    rates = []
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        rates.append([g["lr"] for g in optimizer.param_groups])
    model_lr = [r[0] for r in rates]
    logit_lr = [r[-1] for r in rates]
    assert model_lr == pytest.approx([1e-3 * (10 - s) / 10 for s in range(1, 6)])  # linear decay, no warm-up
    if kind == "model":  # the official DSP code: 0.5, decayed with the model's scheduler
        assert logit_lr == pytest.approx([0.5 * (10 - s) / 10 for s in range(1, 6)])
    else:
        assert logit_lr == [0.5] * 5


@pytest.mark.parametrize("clip_logits", [False, True])
def test_clip_logits_puts_the_logits_into_the_clipped_norm(clip_logits, monkeypatch):
    from accelerate import Accelerator

    seen = []
    original = Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, norm_type=2):
        parameters = list(parameters)
        seen.append({id(p) for p in parameters})
        return original(self, parameters, max_norm, norm_type)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    model = tiny_bert()
    pruner = learner("dsp", HeadSpace.from_model(model), 6, clip_logits=clip_logits)
    run_train(pruner, model, max_steps=2, max_grad_norm=1e-3)
    assert len(seen) == 2
    assert all((id(pruner.logits) in ids) == clip_logits for ids in seen)
    assert all(id(p) in ids for ids in seen for p in model.parameters())


def test_mixed_precision_norm_clips_float64_logits_with_float32_weights():
    """The logits are float64, the weights float32: one norm over both must still clip."""
    a = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(4))
    a.grad, b.grad = torch.full((3,), 3.0, dtype=torch.float64), torch.full((4,), 4.0)
    total = torch.nn.utils.clip_grad_norm_([a, b], 1.0)
    assert float(total) == pytest.approx((27 + 64) ** 0.5)
    assert float(torch.cat([a.grad.float(), b.grad]).norm()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("gate_dropout", [False, True])
def test_pipelined_gate_learning_keeps_dropout_on_when_asked(gate_dropout):
    model = tiny_bert()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    pruner = learner("dsp", HeadSpace.from_model(model), 6, gate_dropout=gate_dropout)
    before = [p.detach().clone() for p in model.parameters()]
    run_train(pruner, model, freeze_model=True, max_steps=2)
    assert modes and set(modes) == {gate_dropout}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # frozen either way


def test_logit_lr_null_is_the_model_lr():
    from prune_cli.train import _param_groups

    model = tiny_bert()
    pruner = learner("dsp", HeadSpace.from_model(model), 6, lr=None)
    groups = _param_groups(model, trainer_cfg(lr=3e-4), pruner, False)
    assert groups[-1]["method"] and groups[-1]["lr"] == 3e-4


@pytest.mark.parametrize("key, value", [("lr_schedule", "cosine"), ("clip_logits", "yes"), ("gate_dropout", 1)])
def test_bad_switches_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        learner("dsp", HeadSpace.from_model(tiny_bert()), 6, **{key: value})


# ---------------------------------------------------------------------------------------- Voita
def voita_by_lambda(space, log_alpha):
    pruner = get_pruner(OmegaConf.merge(group_cfg("method", "voita"),
                                        {"controller": "fixed", "ending": "gates"}), space, 0)
    pruner.setup(keep=None)
    with torch.no_grad():
        pruner.logits.copy_(log_alpha)
    return pruner


def test_test_time_gates_are_voitas_formula_and_zero_gates_are_removed():
    space = HeadSpace.from_model(tiny_bert())
    log_alpha = torch.tensor([-5.0, 0.0, 5.0, -2.0, 1.0, 3.0, -0.1, 2.5, -4.0, 0.4, -1.0, 7.0], dtype=torch.float64)
    pruner = voita_by_lambda(space, log_alpha)
    expected = (torch.sigmoid(log_alpha) * 1.2 - 0.1).clamp(0, 1)
    assert torch.allclose(pruner.final_scales(), expected)
    assert 0 < int(((expected > 0) & (expected < 1)).sum())  # some stay fractional
    mask = pruner.final_mask(None)
    assert torch.equal(mask, expected > 0) and pruner.k_reached == int((expected > 0).sum())
    # evaluations during training see the same fractional gates
    assert torch.allclose(pruner.gate_values(0, 10, training=False).double(), expected, atol=1e-7)


@pytest.mark.parametrize("arch", ["bert", "marian"])
def test_folded_test_time_gates_equal_the_gated_model_in_forward_and_cached_generation(arch):
    """Fractional gates folded into the output projections + zero-gate heads removed == the
    gated dense model: full forward passes and (encoder-decoder) cached greedy generation."""
    model = tiny_model(arch)
    space = HeadSpace.from_model(model)
    g = torch.Generator().manual_seed(3)
    log_alpha = torch.randn(space.total, generator=g, dtype=torch.float64) * 3
    pruner = voita_by_lambda(space, log_alpha)
    scales = pruner.final_scales()
    inputs = padded_batch(arch)
    with torch.no_grad(), Gates(model, space) as gates:
        gates.set(scales.float())
        want = model(**inputs)
        if arch in ENC_DEC:
            want_gen = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                      max_new_tokens=6, do_sample=False, num_beams=1)
    with Gates(model, space) as baked:
        baked.fold(scales)
    remove_heads(model, pruner.final_mask(None), space)
    assert HeadSpace.from_model(model).total == int((scales > 0).sum()) < space.total
    with torch.no_grad():
        got = model(**inputs)
        key = "logits"
        assert torch.allclose(got[key], want[key], atol=1e-5)
        if arch in ENC_DEC:
            got_gen = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                     max_new_tokens=6, do_sample=False, num_beams=1)
            assert torch.equal(got_gen, want_gen)


def test_ending_gates_needs_the_fixed_penalty():
    space = HeadSpace.from_model(tiny_bert())
    with pytest.raises(ConfigError, match="method.ending"):
        get_pruner(OmegaConf.merge(group_cfg("method", "voita"), {"ending": "gates"}), space, 0)


# ------------------------------------------------------------------------- the equal budget
def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("prune_cli.conf", version_base=None):
        return hydra_compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides, expected", [
    (["method=dsp", "heads=36"], {0: 4.0}),
    (["method=michel", "heads=36"], {0: 2.0, 2: 2.0}),
    (["method=random", "heads=36", "pipeline=[prune,finetune,evaluate,export]"], {1: 4.0}),
    (["method=dsp_pipelined", "heads=36"], {0: 4 / 3, 1: 4 / 3, 2: 4 / 3}),
    (["method=dsp_pipelined", "heads=36", "method.gate_epochs=1",
      "method.pipelines.pipelined=[finetune,learn_gates,evaluate,export]"], {0: 3.0, 1: 1.0}),
    (["method=michel", "heads=36", "trainer.recovery_epochs=1"], {0: 3.0, 2: 1.0}),
])
def test_total_epochs_is_split_over_the_training_stages(overrides, expected):
    from prune_cli.validate import split_epochs, validate

    cfg = compose("model=minilm", "task=rte", f"task.data_dir={RTE}", "trainer.total_epochs=4",
                  *overrides)
    plan = validate(cfg)
    assert plan.epochs == pytest.approx(expected) and split_epochs(cfg, plan.stages) == plan.epochs
    assert sum(plan.epochs.values()) == pytest.approx(4.0)


@pytest.mark.slow
def test_cli_voita_by_lambda_and_an_equal_budget_run(tmp_path):
    """Voita's own ending end to end on real RTE rows: no heads=, the kept heads are those whose
    test-time gate is open, the export reloads and evaluates as the run did; and a run of
    trainer.total_epochs records that many epochs over its stages."""
    bad = prune_run([*TINY, "method=voita", "method.controller=fixed", "method.ending=gates", "heads=36"], tmp_path)
    assert bad.returncode == 2 and "method.ending=gates" in bad.stderr.strip().splitlines()[-1]

    run_dir = tmp_path / "voita"
    res = prune_run([*TINY, "trainer.max_steps=null", "method=voita", "method.controller=fixed", "method.ending=gates", "method.lr=0.25", "method.init_scale=2.0",
                     "method.l0_penalty=0.5", "trainer.total_epochs=2", "trainer.eval_batch_size=24",
                     f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stage = next(s for s in metrics["stages"] if s["stage"] == "prune_joint")
    assert 0 < metrics["heads_kept"] == stage["k_reached"] < 72  # lambda pruned some heads, not a K
    epochs = [s["compute"]["epochs"] for s in metrics["stages"] if s.get("compute", {}).get("epochs")]
    assert sum(epochs) == pytest.approx(2.0)

    from prune_cli.surgery import load_pruned

    model = load_pruned(run_dir / "model")
    assert HeadSpace.from_model(model).total == metrics["heads_kept"]
