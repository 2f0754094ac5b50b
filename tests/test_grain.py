"""GRAIN and the distillation group: importance, schedule, budget, structure regularisation,
gradient separation, the distillation loss, and a run end to end on real rows."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import padded_batch, tiny_model
from omegaconf import OmegaConf

from prune_cli.distill import Distiller, hidden_loss, logit_loss
from prune_cli.gates import Gates
from prune_cli.methods.grain import GRAIN, density_at
from prune_cli.units import UnitSpace


def grain(space, **cfg):
    method = GRAIN(OmegaConf.create({"name": "grain", **cfg}), space, seed=0)
    return method


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.train()


def one_step(model, method, space, batch, distiller=None, grad_sep=True):
    """What the trainer does in one step, spelled out (forward, separated backward, observe)."""
    with Gates(model, space) as gates:
        gates.set_units(method.gate_values(0, 100, training=True))
        out = model(**batch, **(distiller.forward_kwargs() if distiller else {}))
        if distiller is None:
            out.loss.backward()
            method.observe_gradients()
        else:
            first, second, _ = distiller.losses(out, batch, out.loss)
            if grad_sep:
                first.backward(retain_graph=True)
                method.observe_gradients()
                second.backward()
            else:
                (first + second).backward()
                method.observe_gradients()
    model.zero_grad()


def test_importance_is_the_gate_gradient_and_grains_sum_of_grad_times_weight():
    model = no_dropout(tiny_model("bert"))
    space = UnitSpace.from_model(model)
    method = grain(space, beta=0.0, alpha=0.0)
    method.setup_units(space, ("qk", "vo", "ffn"), density=0.9)
    batch = {**padded_batch("bert"), "labels": torch.tensor([0, 1, 1])}
    one_step(model, method, space, batch)
    acc = {k: v.clone() for k, v in method._acc.items()}
    out = model(**batch)
    out.loss.backward()
    modules = dict(model.named_modules())
    for i, b in enumerate(space.blocks):
        sl = slice(space.dim_offsets[i], space.dim_offsets[i] + b.num_heads * b.head_dim)
        o, q = modules[b.o], modules[b.q]
        torch.testing.assert_close(acc["vo"][sl].abs().float(), (o.weight.grad * o.weight).sum(0).abs(),
                                   atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(acc["qk"][sl].abs().float(),
                                   ((q.weight.grad * q.weight).sum(1) + q.bias.grad * q.bias).abs(), atol=1e-6, rtol=1e-4)
    method.after_step(1, 100)  # beta 0: the running score IS this step's |dL/dgate|
    torch.testing.assert_close(method.ema["vo"], acc["vo"].abs())


def test_cubic_density_schedule_end_points_and_monotonicity():
    assert density_at(0.0, 0.1, 0.2, 0.4) == density_at(0.19, 0.1, 0.2, 0.4) == 1.0
    assert density_at(0.2, 0.1, 0.2, 0.4) == pytest.approx(1.0)
    assert density_at(0.4, 0.1, 0.2, 0.4) == density_at(1.0, 0.1, 0.2, 0.4) == 0.1
    values = [density_at(t / 100, 0.1, 0.2, 0.4) for t in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert density_at(0.3, 0.1, 0.2, 0.4) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)


def _simulate(alpha: float, steps: int = 60, density: float = 0.3):
    """GRAIN's loop on fixed noisy per-unit gradients: which structure do the masks end in?"""
    space = UnitSpace.from_model(tiny_model("bert"))
    method = grain(space, alpha=alpha, beta=0.9, p_start=0.1, p_end=0.6)
    method.setup_units(space, ("qk", "vo", "ffn"), density=density)
    g = torch.Generator().manual_seed(0)
    base = {k: torch.rand(space.size(k), generator=g, dtype=torch.float64) + 0.5 for k in method.kinds}
    for step in range(1, steps + 1):
        for k in method.kinds:
            method._acc[k] = base[k] * (1 + 0.2 * torch.rand(space.size(k), generator=g, dtype=torch.float64))
        method.after_step(step, steps)
    final = method.final_space()
    partial = sum(1 for i in range(len(space.blocks)) for _, _, v in final.block_layout(i)
                  if len(v) < space.blocks[i].head_dim)
    return final, partial, space


def test_budget_is_exact_and_masks_only_shrink():
    final, _, space = _simulate(0.3)
    kept, dense = final.weights()
    assert 0 <= kept - 0.3 * dense < 2 * 32  # one unit of this model weighs 2 x hidden
    assert not (final.kept("qk") & ~final.kept("head")[space.head_of("qk")]).any()


def test_structure_regularisation_empties_heads_that_would_stay_partial():
    """Same gradients, same budget: without it every head of the 12 keeps a few dimensions; with
    tanh(D / 0.3) on the value scores, heads that started losing values lose them all."""
    with_reg, partial_with, _ = _simulate(0.3)
    without, partial_without, _ = _simulate(0.0)
    left_with, left_without = int(with_reg.kept("head").sum()), int(without.kept("head").sum())
    assert partial_without == left_without == 12
    assert left_with <= left_without - 4 and partial_with < partial_without, (left_with, partial_with)


def _distilled(hidden_weight: float, grad_sep: bool):
    torch.manual_seed(0)
    student = no_dropout(tiny_model("bert", seed=1))
    teacher = tiny_model("bert", seed=2)
    space = UnitSpace.from_model(student)
    method = grain(space, alpha=0.0, beta=0.0, grad_sep=grad_sep)
    method.setup_units(space, ("qk", "vo", "ffn"), density=0.9)
    cfg = OmegaConf.create({"name": "logits_hidden", "temperature": 8.0, "hidden_weight": hidden_weight})
    distiller = Distiller(cfg, teacher, student)
    with torch.no_grad():  # maps away from the identity, so the hidden loss has a gradient everywhere
        for m in distiller.maps:
            m.weight.mul_(0.7)
    one_step(student, method, space, {**padded_batch("bert"), "labels": torch.tensor([0, 1, 1])}, distiller, grad_sep)
    return {k: v.clone() for k, v in method._acc.items()}


def test_gradient_separation_keeps_importance_blind_to_the_hidden_loss():
    a, b = _distilled(1.0, True), _distilled(5.0, True)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    c, d = _distilled(1.0, False), _distilled(5.0, False)
    assert any(not torch.allclose(c[k], d[k]) for k in c)  # without it the hidden gradient leaks in


def test_distillation_loss_is_zero_for_the_teacher_itself_and_its_gradient_is_right():
    teacher = tiny_model("bert")
    batch = padded_batch("bert")
    cfg = OmegaConf.create({"name": "logits_hidden", "temperature": 8.0})
    distiller = Distiller(cfg, teacher, teacher)
    out = teacher(**batch, output_hidden_states=True)
    first, second, _ = distiller.losses(out, batch, torch.tensor(0.0))
    assert float(first.detach()) == pytest.approx(0.0, abs=1e-7) and float(second.detach()) == pytest.approx(0.0, abs=1e-10)
    g = torch.Generator().manual_seed(0)
    t_logits = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])

    def token_kd(s):
        return logit_loss(type("O", (), {"logits": s})(), type("O", (), {"logits": t_logits})(), 8.0, mask)

    s = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(token_kd, (s,))
    t_states = [torch.randn(3, 4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    maps = torch.nn.ModuleList([torch.nn.Linear(6, 6).double() for _ in range(2)])
    states = [torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda *x: hidden_loss(x, t_states, [0, 2], maps, mask), tuple(states))


def test_grain_end_to_end_on_real_rows(tmp_path):
    """prune-run method=grain density=... on real SST-2 rows: a teacher stage, pruning while the
    student trains with distillation, an export at the requested density that reloads."""
    import json

    from test_cli import DATA, prune_run

    run = tmp_path / "run"
    res = prune_run(["model=minilm", "task=sst2", f"data_root={DATA}", "method=grain", "density=0.3",
                     "task.max_train_samples=48", "task.max_eval_samples=32", "trainer.max_steps=6",
                     "trainer.batch_size=16", "trainer.progress_bar=false", "logger.mode=disabled",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["teacher", "prune_joint", "evaluate", "export"]
    assert 0 <= metrics["weights_kept"] - 0.3 * metrics["weights_dense"] < 2 * 384
    assert metrics["stages"][1]["steps_pruned"] >= 1
    assert (run / "teacher" / "config.json").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("prune_joint/kd_hidden" in row for row in log) and any("prune_joint/density" in row for row in log)
    from prune_cli.surgery import count_params, load_pruned

    assert count_params(load_pruned(run / "model")) == metrics["params"]


def test_embedding_factorisation_saves_and_reloads(tmp_path):
    from prune_cli.embeddings import FactorizedEmbedding
    from prune_cli.methods.grain.factorize import factorize_embeddings
    from prune_cli.surgery import count_params, load_pruned, save_pruned

    model = tiny_model("bert")
    batch = padded_batch("bert")
    ref = model(**batch).logits
    full = factorize_embeddings(tiny_model("bert"), 31)  # rank d-1 of a 32-wide table: nearly exact
    assert (full(**batch).logits - ref).abs().max() < 0.05
    small = factorize_embeddings(tiny_model("bert"), 8)
    assert isinstance(small.get_input_embeddings(), FactorizedEmbedding)
    assert count_params(small) == count_params(model) - 99 * 32 + 99 * 8 + 8 * 32
    save_pruned(small, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m", type(small))
    assert torch.equal(loaded(**batch).logits, small.eval()(**batch).logits)


def test_a_resumed_grain_continues_exactly():
    """The pruner's checkpoint (running scores, masks) restores the run: interrupted at step 20
    and resumed, it ends with the masks and scores of the uninterrupted run."""
    import copy

    def run(stop=None, state=None):
        space = UnitSpace.from_model(tiny_model("bert"))
        method = grain(space, beta=0.9, p_start=0.1, p_end=0.6)
        method.setup_units(space, ("qk", "vo", "ffn"), density=0.3)
        if state is not None:
            method.load_state_dict(copy.deepcopy(state))
        g = torch.Generator().manual_seed(0)
        grads = [{k: torch.rand(space.size(k), generator=g, dtype=torch.float64) for k in method.kinds}
                 for _ in range(40)]
        for step in range(1 if state is None else 21, 41):
            method._acc = {k: v.clone() for k, v in grads[step - 1].items()}
            method.after_step(step, 40)
            if step == stop:
                return method.state_dict()
        return method

    whole = run()
    resumed = run(state=run(stop=20))
    assert whole.final_space() == resumed.final_space()
    for k in whole.ema:
        assert torch.equal(whole.ema[k], resumed.ema[k])


@pytest.mark.parametrize("head", ["qa", "token", "regression"])
def test_logit_distillation_covers_every_task_head(head):
    """Spans (start and end over the real positions), tokens (per real token), regression (MSE):
    0 when the student predicts what the teacher does, positive and differentiable otherwise."""
    from types import SimpleNamespace

    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    if head == "qa":
        def out(seed):
            r = torch.Generator().manual_seed(seed)
            return SimpleNamespace(start_logits=torch.randn(2, 5, generator=r, requires_grad=True),
                                   end_logits=torch.randn(2, 5, generator=r, requires_grad=True))
    elif head == "token":
        def out(seed):
            return SimpleNamespace(logits=torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(seed),
                                                      requires_grad=True))
    else:
        def out(seed):
            return SimpleNamespace(logits=torch.randn(2, 1, generator=torch.Generator().manual_seed(seed),
                                                      requires_grad=True))
    teacher = out(1)
    assert float(logit_loss(out(1), teacher, 8.0, mask).detach()) == pytest.approx(0.0, abs=1e-6)
    student = out(2)
    loss = logit_loss(student, teacher, 8.0, mask)
    loss.backward()
    grads = [t.grad for t in vars(student).values()]
    assert float(loss.detach()) > 0 and all(gr is not None and gr.abs().sum() > 0 for gr in grads)
    if head != "regression":  # padding positions get no gradient
        assert all(gr[1, 3:].abs().sum() == 0 for gr in grads)


# ---- fidelity to the official code (airaria/GRAIN), issue 31 ----------------------------------

def test_hidden_term_is_the_sum_of_the_per_layer_mses_as_the_official_code_adds_them():
    torch.manual_seed(0)
    student, teacher = tiny_model("bert", seed=1).eval(), tiny_model("bert", seed=2).eval()
    batch = {**padded_batch("bert"), "labels": torch.tensor([0, 1, 1])}
    cfg = {"name": "logits_hidden", "temperature": 8.0, "logit_weight": 0.0, "hidden_weight": 1.0}
    summed = Distiller(OmegaConf.create(cfg), teacher, student)
    averaged = Distiller(OmegaConf.create({**cfg, "hidden_reduce": "mean"}), teacher, student)
    out = student(**batch, output_hidden_states=True)
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True)
    per_layer = [hidden_loss(out.hidden_states, t.hidden_states, [layer], [m], batch["attention_mask"])
                 for layer, m in zip(summed.layers, summed.maps)]
    assert len(per_layer) >= 2
    _, second, _ = summed.losses(out, batch, out.loss)
    _, second_mean, _ = averaged.losses(out, batch, out.loss)
    torch.testing.assert_close(second, sum(per_layer))
    torch.testing.assert_close(second, second_mean * len(per_layer))


def test_hidden_maps_train_as_the_official_code_trains_them():
    """Weight decay 0, a constant lr (no warm-up, no decay) and outside the gradient clip."""
    from prune_cli.train import _param_groups, _scheduler

    student, teacher = tiny_model("bert", seed=1), tiny_model("bert", seed=2)
    distiller = Distiller(OmegaConf.create({"name": "logits_hidden", "hidden_weight": 1.0}), teacher, student)
    tcfg = OmegaConf.create({"weight_decay": 0.01, "lr": 1e-4, "warmup_ratio": 0.1, "lr_scheduler": "linear"})
    groups = _param_groups(student, tcfg, None, False, distiller)
    maps = [g for g in groups if g["params"][0] is next(distiller.maps.parameters())]
    assert len(maps) == 1 and maps[0]["weight_decay"] == 0.0 and maps[0]["clip"] is False
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    schedule = _scheduler(optimizer, tcfg, 100)
    for _ in range(50):
        optimizer.step()
        schedule.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[groups.index(maps[0])] == 1e-4 and lrs[0] < 1e-4  # the model's lr decays, the maps' does not


def _run_random(importance: str, alpha: float = 0.3, steps: int = 96, density: float = 0.1):
    space = UnitSpace.from_model(tiny_model("bert"))
    method = grain(space, alpha=alpha, beta=0.998, importance=importance)
    method.setup_units(space, ("qk", "vo", "ffn"), density=density)
    history = []
    for step in range(1, steps + 1):
        method.after_step(step, steps)
        history.append(method.ema["vo"].clone())
    return method, history


def test_random_ablation_redraws_every_step_with_the_regulariser_and_empties_heads():
    """The official random ablation (a fresh draw per kept unit every step, structure
    regularisation on) leaves far fewer heads than one fixed draw at the same density."""
    method, history = _run_random("random")
    assert not torch.equal(history[0], history[1])  # a new draw every step
    fixed, fixed_history = _run_random("random_fixed")
    assert torch.equal(fixed_history[0], fixed_history[-1])
    heads_random = int(method.final_space().kept("head").sum())
    heads_fixed = int(fixed.final_space().kept("head").sum())
    assert heads_random < heads_fixed, (heads_random, heads_fixed)
    again, _ = _run_random("random")  # seeded by (seed, step): a rerun (or a resume) draws the same
    assert again.final_space() == method.final_space()


def test_pruned_units_scores_are_frozen():
    space = UnitSpace.from_model(tiny_model("bert"))
    method = grain(space, alpha=0.3, beta=0.9, p_start=0.1, p_end=0.6)
    method.setup_units(space, ("qk", "vo", "ffn"), density=0.3)
    for step in range(1, 40):
        for k in method.kinds:
            method._acc[k] = torch.rand(space.size(k), dtype=torch.float64) + 0.5
        before = {k: v.clone() for k, v in method.ema.items()}
        gone = {k: ~method.current.kept(k) for k in method.kinds}
        method.after_step(step, 60)
        for k in method.kinds:
            assert torch.equal(method.ema[k][gone[k]], before[k][gone[k]])
    assert any(g.any() for g in gone.values())


def test_official_schedule_rounding_prunes_at_integer_steps_and_stops_above_the_target():
    space = UnitSpace.from_model(tiny_model("bert"))
    method = grain(space, schedule_rounding="official")
    method.setup_units(space, ("qk", "vo", "ffn"), density=0.1)
    T, dense = 96, method.dense_weights
    start, end = int(0.2 * T), int(0.4 * T)
    assert [t for t in range(1, T + 1) if method.budget(t, T) is not None] == list(range(start + 1, end))
    last = 0.1 + 0.9 / (end - start) ** 3
    assert method.final_budget(T) == pytest.approx(last * dense, abs=1)
    exact = grain(space)
    exact.setup_units(space, ("qk", "vo", "ffn"), density=0.1)
    assert exact.final_budget(T) == pytest.approx(0.1 * dense, abs=1)


def test_a_non_finite_gradient_step_changes_no_weight_and_no_score_and_is_counted():
    """A NaN in one step's gradient (what an fp16 overflow gives): the trainer skips it, the
    weights and GRAIN's scores stay as they were, and the count is in the result."""
    from test_training_exact import Rows, collate, tcfg

    from prune_cli.train import make_accelerator, train

    data = Rows(32)
    model = tiny_model("bert")
    space = UnitSpace.from_model(model)
    method = grain(space, beta=0.9, alpha=0.3, p_start=0.5, p_end=0.9)
    method.setup_units(space, ("qk", "vo", "ffn"), density=0.5)
    poison = {"step": 0}
    snapshots = []

    def hook(module, args, output):  # the 3rd forward pass returns NaN
        poison["step"] += 1
        return output * float("nan") if poison["step"] == 3 else output

    def after(step, total, _orig=method.after_step):
        _orig(step, total)
        snapshots.append(({k: v.clone() for k, v in model.state_dict().items()},
                          {k: v.clone() for k, v in method.ema.items()}))

    method.after_step = after
    handle = model.bert.encoder.layer[0].output.dense.register_forward_hook(hook)
    cfg = tcfg(epochs=1, batch_size=4, save_every=0)
    with Gates(model, space) as gates:
        result = train(model=model, dataset=data, collate_fn=collate(data), tcfg=cfg,
                       accelerator=make_accelerator(cfg, 0), seed=0, pruner=method, gates=gates)
    handle.remove()
    assert result["nonfinite_steps"] == 1 and method.steps_skipped == 1
    (w2, s2), (w3, s3) = snapshots[1], snapshots[2]
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
    assert all(torch.equal(s2[k], s3[k]) for k in s2)
    assert not all(torch.equal(snapshots[3][0][k], w3[k]) for k in w3)  # training goes on after it
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_run_that_stays_non_finite_stops_with_one_line():
    from test_training_exact import Rows, collate, tcfg

    from prune_cli.errors import Diverged
    from prune_cli.train import make_accelerator, train

    data = Rows(64)
    model = tiny_model("bert")
    cfg = tcfg(epochs=1, batch_size=4, lr=1e30, max_grad_norm=0.0, max_nonfinite_steps=3)
    with pytest.raises(Diverged, match=r"diverged in stage train at step \d+: the gradient has been non-finite"):
        train(model=model, dataset=data, collate_fn=collate(data), tcfg=cfg, accelerator=make_accelerator(cfg, 0),
              seed=0)
