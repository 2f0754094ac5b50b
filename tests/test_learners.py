"""Learned head selection (dsp, ste, voita) on tiny random BERT models: exact K, relaxation sums,
gradients through the gated model, Voita's controller, heads_scope, determinism, resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import group_cfg
from omegaconf import OmegaConf
from transformers import BertConfig, BertForSequenceClassification

from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.methods import get_pruner, top_k_mask
from prune_cli.methods.relaxed import HardConcrete, soft_top_k, straight_through_top_k
from prune_cli.methods.voita import solve_shift

LEARNERS = ("dsp", "ste", "voita")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: threads only add overhead on the team's shared 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bert(layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).eval()


def batch(seed: int = 0, n: int = 4, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 6:] = 0  # one padded row
    return {"input_ids": torch.randint(1, 60, (n, length), generator=g), "attention_mask": mask,
            "labels": torch.randint(0, 2, (n,), generator=g)}


def method_cfg(name: str, **overrides):
    cfg = group_cfg("method", name)
    return OmegaConf.merge(cfg, overrides)


def learner(name: str, space, keep: int, seed: int = 0, eligible=None, **overrides):
    pruner = get_pruner(method_cfg(name, **overrides), space, seed)
    pruner.setup(keep=keep, eligible=eligible)
    return pruner


def train_gates(model, pruner, steps: int = 4, freeze_model: bool = True):
    """A minimal version of the trainer's step: set gates, forward, loss + extra, backward, step."""
    space = HeadSpace.from_model(model)
    params = pruner.parameters() + ([] if freeze_model else list(model.parameters()))
    opt = torch.optim.Adam(params, lr=pruner.lr())
    with Gates(model, space) as gates:
        for step in range(steps):
            gates.set(pruner.gate_values(step, steps, training=True))
            loss = model(**batch(step)).loss + pruner.extra_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return pruner


# ------------------------------------------------------------------------------------ the math
@pytest.mark.parametrize("temperature", [1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-4, 1e-6, 1e-8])
@pytest.mark.parametrize("k", [1, 6, 11])
def test_soft_top_k_sums_to_k_at_every_temperature(temperature, k):
    g = torch.Generator().manual_seed(k)
    keys = torch.randn(12, generator=g, dtype=torch.float64) * 3
    relaxed = soft_top_k(keys, k, temperature)
    assert abs(float(relaxed.sum()) - k) < 1e-6
    # non-negative; (Xie & Ermon's relaxation may put more than 1 on a head at mid temperatures)
    assert bool((relaxed >= 0).all())
    if temperature <= 1e-4:  # cold: the relaxation IS the top-K indicator
        assert torch.allclose(relaxed, top_k_mask(keys, k).double(), atol=1e-6)


def test_soft_top_k_is_uniform_when_hot_and_has_finite_gradients_when_cold():
    keys = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    hot = soft_top_k(keys, 4, 1e6)
    assert torch.allclose(hot, torch.full_like(hot, 4 / 12), atol=1e-5)
    (soft_top_k(keys, 4, 1e-8) * torch.arange(12.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(keys.grad).all()


def test_straight_through_is_hard_forward_identity_backward():
    keys = torch.tensor([0.3, -1.0, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    out = straight_through_top_k(keys, 2)
    assert out.tolist() == [1.0, 0.0, 1.0, 0.0]
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).sum().backward()
    assert keys.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_hard_concrete_is_exactly_zero_or_one_often_and_prob_open_matches_samples():
    gate = HardConcrete(beta=1 / 3)
    log_alpha = torch.full((200_000,), 0.4, dtype=torch.float64)
    u = torch.rand(log_alpha.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = gate.sample(log_alpha, u.clamp(1e-6, 1 - 1e-6))
    assert 0.1 < float((s == 0).double().mean()) and 0.3 < float((s == 1).double().mean())
    assert float((s > 0).double().mean()) == pytest.approx(float(gate.prob_open(log_alpha[:1])), abs=5e-3)


def test_solve_shift_hits_the_target_expected_count():
    a = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 4
    for target in (0.5, 3.0, 10.0, 19.5):
        s = solve_shift(a, 0.7, target)
        assert float(torch.sigmoid(a + s + 0.7).sum()) == pytest.approx(target, abs=1e-9)


# ----------------------------------------------------------------------- exactly K, every method
@pytest.mark.parametrize("name", ["dsp", "ste"])
@pytest.mark.parametrize("k", [1, 6, 11])
def test_dsp_and_ste_keep_exactly_k(name, k):
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    assert space.total == 12
    pruner = train_gates(model, learner(name, space, k), steps=3)
    mask = pruner.final_mask(k)
    assert mask.dtype == torch.bool and int(mask.sum()) == k
    assert torch.equal(mask, top_k_mask(pruner.scores(), k))  # the top-K logits
    train_values = pruner.gate_values(0, 3, training=True).detach()
    if name == "ste":  # the forward pass always sees a hard K-hot mask
        assert sorted(set(train_values.tolist())) == [0.0, 1.0] and int(train_values.sum()) == k
    else:
        assert float(train_values.double().sum()) == pytest.approx(k, abs=1e-5)
    eval_values = pruner.gate_values(2, 3, training=False)
    assert set(eval_values.tolist()) <= {0.0, 1.0} and int(eval_values.sum()) == k


def test_voita_ends_with_exactly_k_and_reports_the_k_it_reached():
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    for k in (1, 6, 11):
        pruner = train_gates(model, learner("voita", space, k), steps=3)
        assert int(pruner.final_mask(k).sum()) == k
        assert isinstance(pruner.k_reached, int) and 0 <= pruner.k_reached <= 12
        assert pruner.log_stats()["k_reached"] == pruner.k_reached
        assert pruner.history()["k_reached"] == pruner.k_reached


@pytest.mark.parametrize("name", LEARNERS)
def test_gradients_reach_the_logits_through_the_gated_model(name):
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    pruner = learner(name, space, 6)
    with Gates(model, space) as gates:
        gates.set(pruner.gate_values(0, 10, training=True))
        (model(**batch()).loss + pruner.extra_loss()).backward()
    (logits,) = pruner.parameters()
    assert logits.dtype == torch.float64 and logits.numel() == space.total
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", LEARNERS)
def test_heads_outside_scope_stay_open_and_do_not_count(name):
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    eligible = torch.zeros(12, dtype=torch.bool)
    eligible[4:] = True  # layer 0 out of scope
    pruner = learner(name, space, 3, eligible=eligible)
    values = pruner.gate_values(0, 5, training=True)
    assert values[:4].tolist() == [1.0] * 4
    assert float(values[4:].detach().double().sum()) == pytest.approx(3, abs=1e-5) or name == "voita"
    pruner = train_gates(model, pruner, steps=2)
    mask = pruner.final_mask(3)
    assert int(mask.sum()) == 3 and not bool(mask[:4].any())
    assert pruner.gate_values(1, 2, training=False)[:4].tolist() == [1.0] * 4


def test_too_many_heads_for_the_scope_is_a_config_error():
    space = HeadSpace.from_model(tiny_bert())
    pruner = get_pruner(method_cfg("dsp"), space, 0)
    with pytest.raises(ConfigError, match="heads"):
        pruner.setup(keep=9, eligible=torch.arange(12) >= 4)


# ----------------------------------------------------------------------------------- Voita toy
@pytest.mark.parametrize("k", [3, 12, 21])
def test_voita_controller_reaches_its_target_on_a_toy_problem(k):
    """24 heads; the 'task' rewards every open gate (weights in (0, 1)), so without the controller
    every gate opens. The controller must hold E[open] at K and end with K deterministic gates."""

    class Space:
        total = 24

    w = torch.rand(24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pruner = learner("voita", Space, k)
    opt = torch.optim.Adam(pruner.parameters(), lr=pruner.lr())
    steps = 300
    for step in range(steps):
        gates = pruner.gate_values(step, steps)
        assert pruner.log_stats()["expected_open"] == pytest.approx(k, abs=1e-6)
        loss = -(w * gates.double()).sum() + pruner.extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    mask = pruner.final_mask(k)
    assert int(mask.sum()) == k and pruner.k_reached == k
    if k == 12:  # chance would keep 6 of the 12 most useful gates
        assert int((mask & top_k_mask(w, k)).sum()) >= 9


def test_voita_fixed_penalty_closes_gates_and_reports_what_it_reached():
    class Space:
        total = 24

    pruner = learner("voita", Space, 5, controller="fixed", l0_penalty=1.0)
    opt = torch.optim.Adam(pruner.parameters(), lr=0.1)
    for step in range(200):
        pruner.gate_values(step, 200)
        opt.zero_grad()
        pruner.extra_loss().backward()  # the L0 term alone: every gate should close
        opt.step()
    assert int(pruner.final_mask(5).sum()) == 5 and pruner.k_reached == 0


# ------------------------------------------------------------------------- schedule + budget
def test_budget_schedule_drives_the_relaxation():
    space = HeadSpace.from_model(tiny_bert())
    pruner = get_pruner(method_cfg("dsp"), space, 0)
    pruner.setup(keep=2, schedule=OmegaConf.create({"name": "linear", "warmup": 0.0, "anneal": 1.0}))
    sums = [float(pruner.gate_values(t, 11).detach().double().sum()) for t in range(11)]
    assert sums[0] == pytest.approx(12) and sums[5] == pytest.approx(7, abs=1e-6) and sums[-1] == pytest.approx(2)
    assert int(pruner.final_mask(2).sum()) == 2


def test_dsp_temperature_anneals_from_tau_start_to_tau_end():
    space = HeadSpace.from_model(tiny_bert())
    pruner = learner("dsp", space, 6, tau_start=10.0, tau_end=0.1, cooldown_steps=4)
    taus = []
    for t in range(6):
        pruner.gate_values(t, 6)
        taus.append(pruner.log_stats()["temperature"])
    assert taus[0] == pytest.approx(10.0) and taus[2] == pytest.approx(1.0) and taus[4:] == [pytest.approx(0.1)] * 2
    stats = pruner.log_stats()
    assert {"temperature", "expected_open", "mask_entropy"} <= set(stats)


@pytest.mark.parametrize("name, key, value", [
    ("dsp", "tau_start", -1.0), ("dsp", "tau_schedule", "cosine"), ("dsp", "lr", 0),
    ("ste", "backward", "sideways"), ("voita", "controller", "pid"), ("voita", "gamma", 0.1),
])
def test_bad_method_keys_name_the_key(name, key, value):
    space = HeadSpace.from_model(tiny_bert(layers=2))
    with pytest.raises(ConfigError) as err:
        get_pruner(method_cfg(name, **{key: value}), space, 0)
    assert err.value.key == f"method.{key}"


# --------------------------------------------------------------------- determinism and resume
@pytest.mark.parametrize("name", LEARNERS)
def test_same_seed_bit_identical_logits(name):
    runs = []
    for seed in (7, 7, 8):
        model = tiny_bert(seed=0)
        space = HeadSpace.from_model(model)
        torch.manual_seed(seed * 100)  # the global RNG must not matter; the pruner's seed does
        runs.append(train_gates(model, learner(name, space, 6, seed=seed), steps=3).scores())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("name", LEARNERS)
def test_resume_from_state_dict_continues_the_same_noise(name):
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    a = train_gates(model, learner(name, space, 6, seed=3), steps=2)
    b = learner(name, space, 6, seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.scores(), b.scores())
    assert torch.equal(a.gate_values(5, 10).detach(), b.gate_values(5, 10).detach())
    assert a.history() == b.history()


def test_history_records_the_hard_mask_when_it_changes():
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    pruner = train_gates(model, learner("dsp", space, 6, lr=5.0), steps=6)
    trajectory = pruner.history()["trajectory"]
    assert trajectory[0]["step"] == 0
    assert all(len(entry["kept"]) == 6 for entry in trajectory)
    assert all(a["kept"] != b["kept"] for a, b in itertools.pairwise(trajectory))


# ------------------------------------------------------------------------------- method yamls
@pytest.mark.parametrize("name", LEARNERS)
def test_method_yamls_declare_a_learner_with_both_regimes(name):
    cfg = group_cfg("method", name)
    assert cfg.name == name and cfg.kind == "learner" and cfg.lr > 0 and cfg.regime == "joint"
    assert list(cfg.pipelines.joint) == ["prune_joint", "evaluate", "export"]
    assert list(cfg.pipelines.pipelined) == ["finetune", "learn_gates", "finetune", "evaluate", "export"]
    if name == "dsp":
        assert {"tau_start", "tau_end", "cooldown_steps"} <= set(cfg)
    if name == "voita":
        assert cfg.temperature == pytest.approx(1 / 3) and (cfg.gamma, cfg.zeta) == (-0.1, 1.1)


# ------------------------------------------------------------------------- with the real trainer
@pytest.mark.parametrize("freeze_model", [True, False])
def test_the_trainer_learns_the_gates_through_the_hooks(freeze_model):
    """prune_cli.train.train drives the hooks: own optimizer group, gates set every step, frozen
    model in the pipelined regime (learn_gates), trained model in the joint one (prune_joint)."""
    from prune_cli.train import make_accelerator, train

    tcfg = OmegaConf.merge(group_cfg("trainer", "default"),
                           {"max_steps": 3, "batch_size": 4, "progress_bar": False, "warmup_ratio": 0.0})
    data = batch(0, n=12)
    rows = [{k: v[i] for k, v in data.items()} for i in range(12)]
    model = tiny_bert()
    space = HeadSpace.from_model(model)
    pruner = learner("ste", space, 5)
    before_model = [p.detach().clone() for p in model.parameters()]
    before_logits = pruner.scores()
    with Gates(model, space) as gates:
        result = train(model=model, dataset=rows, collate_fn=lambda b: {k: torch.stack([r[k] for r in b]) for k in b[0]},
                       tcfg=tcfg, accelerator=make_accelerator(tcfg, 0), seed=0, pruner=pruner, gates=gates,
                       freeze_model=freeze_model)
        assert gates.values.tolist() == [1.0] * 12  # the trainer opens the gates when it is done
    assert result["steps"] == 3
    assert not torch.equal(pruner.scores(), before_logits)
    unchanged = all(torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert unchanged == freeze_model
    assert all(p.requires_grad for p in model.parameters())
    assert int(pruner.final_mask(5).sum()) == 5


def test_encoder_decoder_heads_compete_in_one_flat_top_k():
    """Encoder self, decoder self and cross heads: one logit each, one global K, gradients to all."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=20, decoder_ffn_dim=20, max_position_embeddings=32)
    model = BartForConditionalGeneration(config)
    space = HeadSpace.from_model(model)
    assert space.kinds() == {"encoder": 4, "decoder": 4, "cross": 4}
    pruner = learner("dsp", space, 5)
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(3, 40, (2, 7), generator=g), "labels": torch.randint(3, 40, (2, 5), generator=g)}
    with Gates(model, space) as gates:
        gates.set(pruner.gate_values(0, 10))
        model(**inputs).loss.backward()
    (logits,) = pruner.parameters()
    for block in space.blocks:  # every kind of block feeds its heads' logits
        assert float(logits.grad[block.offset : block.offset + block.num_heads].abs().sum()) > 0
    assert int(pruner.final_mask(5).sum()) == 5
    cross = space.scope_mask("cross")
    scoped = learner("dsp", space, 2, eligible=cross)
    assert int(scoped.final_mask(2).sum()) == 2 and not bool((scoped.final_mask(2) & ~cross).any())


@pytest.mark.parametrize("temperature", [5.0, 0.5, 0.05])
def test_soft_top_k_hand_written_backward_matches_autograd(temperature):
    """The CPU-side backward of soft_top_k equals autograd through the same recurrence."""
    from prune_cli.methods import relaxed

    g = torch.Generator().manual_seed(3)
    keys = torch.randn(12, generator=g, dtype=torch.float64)
    weights = torch.randn(12, generator=g, dtype=torch.float64)

    def reference(x):
        total = torch.zeros_like(x)
        for _ in range(5):
            p = torch.softmax(x / temperature, dim=-1)
            total = total + p
            x = x + torch.log(torch.clamp(1.0 - p, min=relaxed._TINY))
        return total

    a = keys.clone().requires_grad_(True)
    b = keys.clone().requires_grad_(True)
    out_a = soft_top_k(a, 5, temperature)
    out_b = reference(b)
    assert torch.allclose(out_a, out_b, atol=1e-12)
    (out_a * weights).sum().backward()
    (out_b * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: soft_top_k(x, 5, temperature), (keys.clone().requires_grad_(True),))
    # the device path (torch ops, used on GPUs) computes the same numbers as the numpy one
    rounds = relaxed._soft_top_k_rounds(keys.numpy(), 5, temperature)
    inv = relaxed._inverse_complements(rounds)
    as_numpy = relaxed._soft_top_k_backward(rounds, inv, weights.numpy(), temperature)
    saved = torch.from_numpy(np.stack([rounds, inv, rounds / temperature]))
    as_torch = relaxed._device_backward(saved, weights)
    assert torch.allclose(as_torch, torch.from_numpy(as_numpy), rtol=1e-12, atol=1e-14)


def test_ste_official_tie_rule_keeps_fewer_than_k_at_a_tie_and_exact_keeps_k():
    from prune_cli.methods.relaxed import straight_through_top_k

    keys = torch.tensor([3.0, 1.0, 1.0, 0.5, 2.0], requires_grad=True)
    exact = straight_through_top_k(keys, 3)
    official = straight_through_top_k(keys, 3, strict=True)
    assert exact.detach().tolist() == [1, 1, 0, 0, 1] and official.detach().tolist() == [1, 0, 0, 0, 1]
    assert straight_through_top_k(keys, 2, strict=True).detach().tolist() == [1, 0, 0, 0, 1]  # no tie: K
    official.sum().backward()
    assert keys.grad.tolist() == [1.0] * 5  # the identity straight-through gradient either way
    space = HeadSpace.from_model(tiny_bert())
    pruner = learner("ste", space, keep=5, ties="official")
    pruner.logits.data.fill_(0.0)  # all tied: the official rule opens none, ours opens K
    assert float(pruner.gate_values(0, 10).sum()) == 0
    assert float(learner("ste", space, keep=5).gate_values(0, 10).detach().sum()) == 5


def test_voita_layer_mean_penalty_is_the_per_layer_sum_averaged_over_gated_layers():
    space = HeadSpace.from_model(tiny_bert())
    eligible = torch.ones(12, dtype=torch.bool)
    eligible[:4] = False  # layer 0 not gated: it neither adds to the sum nor counts as a layer
    summed = learner("voita", space, keep=4, eligible=eligible, controller="fixed", l0_penalty=0.1)
    mean = learner("voita", space, keep=4, eligible=eligible, controller="fixed", l0_penalty=0.1,
                   penalty="layer_mean")
    mean.logits.data.copy_(summed.logits.data)
    p = mean.gate.prob_open(mean.logits.detach())
    torch.testing.assert_close(summed.extra_loss().detach(), 0.1 * p[4:].sum())
    torch.testing.assert_close(mean.extra_loss().detach(), 0.1 * (p[4:8].sum() + p[8:].sum()) / 2)


def test_michel_per_token_importance_sums_to_the_gate_gradient_and_bounds_it():
    """Per token, |sum_d grad * ctx| summed over tokens; its signed sum over the tokens is the gate's
    gradient, so the per-token score (x the token count) bounds |dL/dgate| from above."""
    from prune_cli.gates import Gates
    from prune_cli.methods.base import ScoreContext
    from prune_cli.methods.michel import per_token_importance

    model = tiny_bert()
    space = HeadSpace.from_model(model)
    b = batch(seed=3)
    pruner = get_pruner(method_cfg("michel", per_token=True, normalize_layers=False), space, 0)
    with Gates(model, space) as gates:
        ctx = ScoreContext(model, gates, lambda: iter([b]), torch.ones(12, dtype=torch.bool), space=space)
        per_token = per_token_importance(pruner, ctx) * int(b["attention_mask"].sum())
        g = torch.ones(12, requires_grad=True)
        gates.set(g)
        (grad,) = torch.autograd.grad(model(**b).loss, [g])
    assert (per_token >= grad.abs().double() - 1e-6).all() and (per_token > grad.abs().double() + 1e-6).any()
    assert torch.equal(pruner.score(ctx) > 0, torch.ones(12, dtype=torch.bool))
