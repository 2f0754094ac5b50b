"""Peer distillation (`distill=peer`, APD): 0 when nothing is pruned, gradients that stay in the
layer whose heads were removed, the same term for gated and physically removed heads, and a pin on
how transformers calls its attention blocks (the term reads and replaces their inputs)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHS, padded_batch, tiny_model
from omegaconf import OmegaConf

from prune_cli.distill import Distiller
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.methods.apd.peer import PeerLoss, block_widths, tap
from prune_cli.surgery import remove_heads
from prune_cli.units import UnitSpace

CFG = OmegaConf.create({"name": "peer", "peer_weight": 1.0, "hard_weight": 1.0, "logit_weight": 0.0})


def _peer(student, teacher, batch, gates=None, hard=None, space=None):
    distiller = Distiller(CFG, teacher, student, space=space or UnitSpace.from_model(student))
    out = student(**batch)
    _, second, parts = distiller.losses(out, batch, torch.tensor(0.0), student=student, gates=gates, hard=hard)
    return second, parts


def test_peer_loss_is_zero_when_no_head_is_pruned():
    teacher = tiny_model("bert")
    student = copy.deepcopy(teacher)
    batch = padded_batch("bert")
    loss, _ = _peer(student, teacher, batch)
    assert float(loss) == 0.0
    space = UnitSpace.from_model(student)
    with Gates(student, space) as gates:
        loss, _ = _peer(student, teacher, batch, gates=gates, hard=torch.ones(space.total), space=space)
    assert float(loss) == 0.0
    student.bert.encoder.layer[0].attention.self.query.weight.data.add_(0.1)  # trained away from the teacher:
    assert float(_peer(student, teacher, batch)[0]) == 0.0  # still nothing to recycle


def test_peer_gradient_reaches_only_the_kept_heads_of_that_layer_and_its_output_projection():
    teacher = tiny_model("bert").train(False)
    student = copy.deepcopy(teacher).train(False)
    batch = padded_batch("bert")
    space = UnitSpace.from_model(student)
    hard = torch.ones(space.total)
    hard[4 + 1] = 0  # layer 1, head 1 removed
    with Gates(student, space) as gates:
        gates.set(torch.full((space.total,), 0.5))  # the main pass's fading value: the peer pass uses 0/1
        loss, _ = _peer(student, teacher, batch, gates=gates, hard=hard, space=space)
        assert gates.current()["head"].eq(0.5).all()  # the fading gates are back after the peer pass
    assert float(loss.detach()) > 0
    student.zero_grad()
    loss.backward()
    d = 8
    layer = student.bert.encoder.layer[1].attention
    for name in ("query", "key", "value"):
        g = getattr(layer.self, name).weight.grad
        assert g[d:2 * d].abs().max() == 0  # the removed head learns nothing from its peers' term
        assert g[:d].abs().max() > 0 and g[2 * d:].abs().max() > 0
    g_o = layer.output.dense.weight.grad
    assert g_o[:, d:2 * d].abs().max() == 0 and g_o[:, :d].abs().max() > 0
    touched = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    allowed = {f"bert.encoder.layer.1.attention.{m}.{w}" for m in ("self.query", "self.key", "self.value",
                                                                   "output.dense") for w in ("weight", "bias")}
    assert touched and touched <= allowed


def test_gated_and_physically_removed_heads_give_the_same_peer_term():
    teacher = tiny_model("bert")
    batch = padded_batch("bert")
    keep = torch.ones(12, dtype=torch.bool)
    keep[[0, 6, 7]] = False
    gated = copy.deepcopy(teacher)
    space = UnitSpace.from_model(gated)
    with Gates(gated, space) as gates:
        a, _ = _peer(gated, teacher, batch, gates=gates, hard=keep.float(), space=space)
    pruned = copy.deepcopy(teacher)
    remove_heads(pruned, keep)
    pruned_space = UnitSpace.from_model(pruned)
    b, _ = _peer(pruned, teacher, batch, space=pruned_space)
    assert float(a.detach()) > 0
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_attention_block_is_called_with_its_input_states_where_the_taps_find_them(arch):
    """transformers' internals the peer term depends on: each attention block receives its input
    states as a 3-D tensor of the model width (positionally or by name) and calls its output
    projection; replacing those inputs by another model's reproduces that model's block outputs."""
    model = tiny_model(arch)
    other = tiny_model(arch, seed=1)
    batch = padded_batch(arch)
    blocks = block_widths(model, HeadSpace.from_model(model))
    with torch.no_grad(), tap(other, blocks) as seen_other:
        other(**batch)
    assert set(seen_other["inputs"]) == set(blocks) and all(seen_other["inputs"].values())
    replaced = copy.deepcopy(other)
    with torch.no_grad(), tap(replaced, blocks, inputs=seen_other["inputs"]) as seen:
        replaced(**batch)
    for name in blocks:  # same weights, same inputs: same outputs
        torch.testing.assert_close(seen["outputs"][name], seen_other["outputs"][name])
    peer = PeerLoss(other, model, UnitSpace.from_model(model))
    assert set(peer.blocks) == set(blocks)


@pytest.mark.parametrize("name", ["dsp", "voita", "ste"])
def test_learners_tell_the_peer_term_which_heads_they_keep_now(name):
    """With distill=peer a learner's layers distil into the heads of its current hard top-K_t."""
    from test_learners import learner

    space = UnitSpace.from_model(tiny_model("bert"))
    pruner = learner(name, space, keep=5)
    pruner.schedule = OmegaConf.create({"name": "linear", "warmup": 0.0, "anneal": 1.0})
    start, end = pruner.hard_gates(0, 11), pruner.hard_gates(10, 11)
    assert int(end.sum()) == 5 and set(end.tolist()) <= {0.0, 1.0}
    assert int(start.sum()) >= 5
