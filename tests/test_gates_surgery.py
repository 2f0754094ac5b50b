"""The invariants everything else relies on, on tiny random models of every supported family:
a 0/1 gate equals physical removal, gated-off heads learn nothing, a pruned checkpoint
round-trips with the analytical parameter count, and open gates change nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHS, ENC_DEC, padded_batch, tiny_model

from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.surgery import count_params, load_pruned, remove_heads, save_pruned


def random_mask(space: HeadSpace, seed: int) -> torch.Tensor:
    """Random keep mask with the first block fully removed and the last block fully kept."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(space.total, generator=g) > 0.5
    parts = space.split(mask)
    parts[0][:] = False
    parts[-1][:] = True
    return mask


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_gate_equals_surgery(arch, attn):
    model = tiny_model(arch, attn)
    space = HeadSpace.from_model(model)
    assert space.total == (12 if arch not in ENC_DEC else 24)
    batch = padded_batch(arch)
    for seed in range(3):
        mask = random_mask(space, seed)
        with Gates(model, space) as gates:
            gates.set(mask.float())
            gated = outputs(model, batch)
        pruned = copy.deepcopy(model)
        new_space = remove_heads(pruned, mask, space)
        assert new_space.total == int(mask.sum())
        assert [list(b.heads) for b in new_space.blocks] == [
            [h for h, k in zip(b.heads, m) if k] for b, m in zip(space.blocks, space.split(mask))
        ]
        diff = (outputs(pruned, batch) - gated).abs().max().item()
        assert diff < 1e-5, f"{arch}/{attn} seed {seed}: gated vs pruned differ by {diff}"


def test_padding_matters_so_equality_is_meaningful():
    """If the mask were dropped somewhere, padded and unpadded results would coincide."""
    model = tiny_model("bert")
    batch = padded_batch("bert")
    unmasked = {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}
    assert (outputs(model, batch) - outputs(model, unmasked)).abs().max() > 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_open_gates_change_nothing(arch):
    model = tiny_model(arch)
    batch = padded_batch(arch)
    ref = outputs(model, batch)
    with Gates(model) as gates:
        assert torch.equal(outputs(model, batch), ref)
        gates.set(torch.ones(gates.space.total))
        assert torch.equal(outputs(model, batch), ref)
    assert torch.equal(outputs(model, batch), ref)  # hooks are gone after the context


@pytest.mark.parametrize("arch", ["bert", "distilbert", "bart", "t5"])
def test_gated_off_head_gets_no_gradient(arch):
    model = tiny_model(arch).train()
    for m in model.modules():  # dropout would not change the claim, but keep it deterministic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    space = HeadSpace.from_model(model)
    mask = random_mask(space, 1)
    batch = padded_batch(arch)
    modules = dict(model.named_modules())
    with Gates(model, space) as gates:
        gates.set(mask.float())
        out = outputs_with_grad(model, batch)
        out.pow(2).sum().backward()
    for block, kept in zip(space.blocks, space.split(mask)):
        d = block.head_dim
        for h, k in enumerate(kept.tolist()):
            rows = slice(h * d, (h + 1) * d)
            grads = [modules[p].weight.grad[rows] for p in (block.q, block.k, block.v)]
            grads.append(modules[block.o].weight.grad[:, rows])
            if k:
                assert any(g.abs().sum() > 0 for g in grads), f"kept head {block.name}[{h}] got no gradient"
            else:
                assert all(torch.count_nonzero(g) == 0 for g in grads), f"pruned head {block.name}[{h}] got gradient"


def outputs_with_grad(model, batch):
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def analytical_params(model, space: HeadSpace, mask: torch.Tensor) -> int:
    """Dense count minus, per removed head, its q/k/v rows (weights + biases), o columns and, where
    a block owns its relative-position table (UMT5), that head's column."""
    modules = dict(model.named_modules())
    removed = 0
    for block, kept in zip(space.blocks, space.split(mask)):
        n = int((~kept).sum())
        d = block.head_dim
        for p in (block.q, block.k, block.v):
            lin = modules[p]
            removed += n * d * (lin.in_features + (lin.bias is not None))
        removed += n * d * modules[block.o].out_features
        table = getattr(modules[block.name], "relative_attention_bias", None)
        if table is not None and "UMT5" in type(model).__name__:  # a per-block bias table: a column a head
            removed += n * table.num_embeddings  # (T5's table is shared by the stack and stays whole)
    return count_params(model) - removed


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    model = tiny_model(arch)
    space = HeadSpace.from_model(model)
    mask = random_mask(space, 2)
    expected = analytical_params(model, space, mask)
    remove_heads(model, mask, space)
    assert count_params(model) == expected
    save_pruned(model, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m")
    assert type(loaded) is type(model)
    assert count_params(loaded) == expected
    assert HeadSpace.from_model(loaded) == HeadSpace.from_model(model)
    batch = padded_batch(arch)
    assert torch.equal(outputs(loaded, batch), outputs(model, batch))
    # the dense space is recoverable from the checkpoint's config alone
    assert HeadSpace.from_config(loaded.config, type(loaded), dense=True) == space


def test_scope_mask_and_kinds():
    space = HeadSpace.from_model(tiny_model("bart"))
    assert space.kinds() == {"encoder": 8, "decoder": 8, "cross": 8}
    assert int(space.scope_mask("cross").sum()) == 8
    assert [b.kind for b in space.blocks] == ["encoder", "encoder", "decoder", "cross", "decoder", "cross"]


def test_surgery_keeps_the_model_dtype():
    model = tiny_model("bert").to(torch.bfloat16)
    space = HeadSpace.from_model(model)
    remove_heads(model, random_mask(space, 0), space)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    outputs(model, padded_batch("bert"))  # runs without a dtype mismatch


@pytest.mark.parametrize("arch", ["t5", "umt5"])
def test_pruned_relative_bias_learns_what_the_gated_one_learns(arch):
    """The position-bias table gets the same gradient pruned as gated: T5's first block must still
    compute (and pass on) the rows of heads it lost, since later blocks kept them."""
    model = tiny_model(arch)  # eval mode: T5 drops attention probabilities with a float, not a module
    space = HeadSpace.from_model(model)
    mask = random_mask(space, 3)  # the first block, owner of T5's shared table, keeps no head
    batch = padded_batch(arch)
    with Gates(model, space) as gates:
        gates.set(mask.float())
        outputs_with_grad(model, batch).pow(2).sum().backward()
    pruned = copy.deepcopy(model)
    remove_heads(pruned, mask, space)
    pruned.zero_grad()
    outputs_with_grad(pruned, batch).pow(2).sum().backward()
    kept = dict(zip((b.name for b in space.blocks), space.split(mask)))
    tables = [b.name for b in space.blocks if hasattr(model.get_submodule(b.name), "relative_attention_bias")]
    assert tables
    for name in tables:
        want = model.get_submodule(name).relative_attention_bias.weight.grad
        got = pruned.get_submodule(name).relative_attention_bias.weight.grad
        if "UMT5" in type(model).__name__:  # the block's own table lost the removed heads' columns
            want = want[:, kept[name]]
            if not kept[name].any():
                continue  # an empty table: nothing left to learn
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
