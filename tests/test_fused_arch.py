"""Families whose attention projections are FUSED, through their adapters' declarations: GPT-2
(`c_attn` = [q | k | v], transformers `Conv1D` weights stored [in, out]), GPT-NeoX
(`query_key_value` interleaved per head, partial rotary) and Phi-3 (`qkv_proj` = [q | k | v] with
grouped-query attention, fused gated FFN `gate_up_proj` = [gate | up]).

The forward-pass and cached-generation invariants run for these families in tests/test_llm_arch.py
(its CASES: gated == physically pruned over left-padded batches, eager and sdpa, an emptied layer,
an emptied group, groups of unequal sizes; greedy and beam, every step's logits). Here: the KV cache
holds only the kept heads; FFN
neurons and heads removed together equal the masked model; an export reloads identically with its
exact parameter count and prunes again in the dense index. Plus what the fused layouts themselves
promise: the weight counts, the magnitude of every unit, query gates that scale only query
features, folded gates, and the attributes the stock forwards read (pinned, so a release that
changes them fails here)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from conftest import tiny_model
from test_llm_arch import gated_and_pruned, gated_logits, gqa_mask, left_padded

from prune_cli.arch import family_of
from prune_cli.arch.projections import weight
from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.methods.magnitude import unit_norms
from prune_cli.surgery import count_params, load_pruned, remove_units, save_pruned
from prune_cli.units import UnitSpace

FUSED = ["gpt2", "gpt_neox", "phi3"]


def test_the_fused_layouts_are_what_the_spaces_count():
    per_layer = {
        # c_attn 48 x 144 + c_proj 48 x 48, 37 neurons x (c_fc row + c_proj column) of 48
        "gpt2": 4 * 48 * 48 + 37 * 2 * 48,
        "gpt_neox": 4 * 48 * 48 + 37 * 2 * 48,
        # q + o: 6 heads x 8 x 48 each; k + v: 2 groups x 8 x 48 each; 37 x (gate + up + down) x 48
        "phi3": 2 * 6 * 8 * 48 + 2 * 2 * 8 * 48 + 37 * 3 * 48,
    }
    for family, size in per_layer.items():
        model = tiny_model(f"{family}_lm")
        space = UnitSpace.from_model(model)
        assert family_of(model).name == family and space.kinds() == {"decoder": 18}
        assert {b.fused for b in space.blocks} == {"per_head" if family == "gpt_neox" else "concat"}
        assert [f.width for f in space.ffns] == [37, 37, 37]
        assert space.weights() == (3 * size, 3 * size), family
        assert all(b.group_size == (3 if family == "phi3" else 1) for b in space.blocks)


@pytest.mark.parametrize(("family", "kv_heads"), [("gpt2", [2, 4]), ("phi3", [1, 2])])
def test_the_kv_cache_holds_only_the_kept_heads(family, kv_heads):
    model = tiny_model(f"{family}_lm", "sdpa")
    mask = gqa_mask(HeadSpace.from_model(model), 0)  # layer 0 emptied; 2 and 4 heads (1 and 2 groups) left
    _, pruned = gated_and_pruned(model, mask)
    batch = left_padded()
    with torch.no_grad():
        cache = pruned(**batch, use_cache=True).past_key_values
    assert [layer.keys.shape[1] for layer in cache.layers][1:] == kv_heads
    assert cache.layers[0].keys.shape[1] == 1  # the emptied layer's one zero stand-in head


def _masked_reference(model, units: UnitSpace, target: UnitSpace):
    """`model` with the removed FFN neurons' weights zeroed (every chunk's rows of a fused input,
    through the [out, in] view that handles Conv1D) and the removed heads left to the gates."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for j, ffn in enumerate(units.ffns):
            dead = [n for n in range(ffn.width) if n not in target.ffn_kept(j)]
            rows = [c * ffn.width + n for c in range(ffn.chunks) for n in dead]
            for path in ffn.inputs:
                lin = ref.get_submodule(path)
                weight(lin)[rows] = 0
                if lin.bias is not None:
                    lin.bias[rows] = 0
            weight(ref.get_submodule(ffn.output))[:, dead] = 0
    return ref


@pytest.mark.parametrize("family", FUSED)
def test_ffn_neurons_and_heads_together_equal_the_masked_model_and_reload(family, tmp_path):
    model = tiny_model(f"{family}_lm", "sdpa")
    units = UnitSpace.from_model(model)
    g = torch.Generator().manual_seed(3)
    masks = {"head": gqa_mask(units, 2), "ffn": torch.rand(units.size("ffn"), generator=g) > 0.4}
    target = units.with_masks(masks)
    batch = left_padded(2)
    keep = batch["attention_mask"].bool()
    ref = _masked_reference(model, units, target)
    want = gated_logits(ref, UnitSpace.from_model(ref), {"head": masks["head"]}, batch)
    # the same with FFN gates instead of zeroed weights
    assert (gated_logits(model, units, masks, batch) - want)[keep].abs().max().item() < 1e-5
    before = unit_norms(model, units)
    dense_params = count_params(model)
    remove_units(model, target, units)
    assert count_params(model) == dense_params - target.removed_params()
    with torch.no_grad():
        got = model(**batch).logits
    assert (got - want)[keep].abs().max().item() < 1e-5
    # every kept unit's magnitude is read where the layout puts it, in the dense and the pruned weights
    after = unit_norms(model, target)
    for kind in ("head", "qk", "vo", "ffn"):
        kept = target.kept(kind)
        assert torch.allclose(after[kind][kept], before[kind][kept]), kind
        assert bool((after[kind][~kept] == 0).all()), kind
    # export -> reload: same logits and parameters; prune again in the dense index
    save_pruned(model, tmp_path / "m")
    again = load_pruned(tmp_path / "m", type(model))
    assert count_params(again) == count_params(model)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, got)
    gen = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(again.generate(**batch, **gen), model.generate(**batch, **gen))
    head = target.kept("head").clone()
    head[head.nonzero().flatten()[::2]] = False
    second = UnitSpace.from_model(again).with_masks({"head": head})
    remove_units(again, second)
    assert UnitSpace.from_model(again) == second
    want = gated_logits(ref, UnitSpace.from_model(ref), {"head": head}, batch)
    with torch.no_grad():
        assert (again(**batch).logits - want)[keep].abs().max().item() < 1e-5


@pytest.mark.parametrize("family", FUSED)
def test_a_head_norm_is_its_slices_of_the_fused_projection(family):
    model = tiny_model(f"{family}_lm")
    space = UnitSpace.from_model(model)
    norms = unit_norms(model, space)["head"]
    block = space.blocks[1]
    w = weight(model.get_submodule(block.q)).detach().double()  # [out, in]
    o = weight(model.get_submodule(block.o)).detach().double()
    d, heads, h = 8, 6, 4
    if family == "gpt_neox":  # [q_h | k_h | v_h] per head
        qkv = w[h * 3 * d:(h + 1) * 3 * d]
    elif family == "gpt2":  # [q | k | v]
        qkv = torch.cat([w[p * heads * d + h * d:p * heads * d + (h + 1) * d] for p in range(3)])
    else:  # Phi-3: a query head owns its q rows; its group's k/v rows are the group's
        qkv = w[h * d:(h + 1) * d]
    want = (qkv.pow(2).sum() + o[:, h * d:(h + 1) * d].pow(2).sum()).sqrt()
    assert torch.isclose(norms[block.offset + h].double(), want)


@pytest.mark.parametrize("family", FUSED)
def test_query_gates_scale_only_the_query_features_of_a_fused_projection(family):
    model = tiny_model(f"{family}_lm")
    space = UnitSpace.from_model(model)
    batch = left_padded()
    factor = torch.full((space.size("qk"),), 0.5)
    gated = gated_logits(model, space, {"qk": factor}, batch)
    scaled = copy.deepcopy(model)
    with torch.no_grad():  # the same: the query rows of every fused projection (and their biases) halved
        for i, b in enumerate(space.blocks):
            proj = scaled.get_submodule(b.q)
            rows = space.qkv_rows(i)[0]
            weight(proj)[rows] *= 0.5
            if proj.bias is not None:
                proj.bias[rows] *= 0.5
        want = scaled(**batch).logits
    assert (gated - want)[batch["attention_mask"].bool()].abs().max().item() < 1e-5


def test_folded_head_gates_equal_set_ones_on_conv1d():
    model = tiny_model("gpt2_lm")
    space = HeadSpace.from_model(model)
    values = torch.linspace(0.1, 1.0, space.total)
    batch = left_padded()
    want = gated_logits(model, space, {"head": values}, batch)
    with Gates(model, space) as gates:
        gates.fold(values)
    with torch.no_grad():
        assert (model(**batch).logits - want)[batch["attention_mask"].bool()].abs().max().item() < 1e-5


@pytest.mark.parametrize("option", ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"])
def test_gpt2_options_prune_exactly(option):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_embd=48, n_layer=3, n_head=6, n_inner=37, n_positions=64, vocab_size=99, pad_token_id=0,
                        **{option: True})
    model = tf.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    batch = left_padded()
    mask = gqa_mask(HeadSpace.from_model(model), 1)
    space, pruned = gated_and_pruned(model, mask)
    want = gated_logits(model, space, {"head": mask}, batch)
    with torch.no_grad():
        got = pruned(**batch).logits
    assert (got - want)[batch["attention_mask"].bool()].abs().max().item() < 1e-5


def test_gpt2_cross_attention_is_refused_in_one_line():
    import transformers as tf

    cfg = tf.GPT2Config(n_embd=48, n_layer=2, n_head=6, vocab_size=99, add_cross_attention=True)
    with pytest.raises(ConfigError, match=r"^gpt2\.add_cross_attention=True: False: [^\n]*$"):
        HeadSpace.from_config(cfg)


def test_the_stock_forwards_read_what_surgery_updates():
    """Pinned: GPT-2 splits c_attn at `split_size` and views heads with -1; Phi-3 finds its keys at
    `config.num_attention_heads * head_dim` and its values `num_key_value_heads` key heads later;
    GPT-NeoX views (-1 heads, 3 * head_size) and chunks each head in three; Phi-3's FFN chunks
    gate_up_proj in two. A release that changes one of these must fail here, not compute wrongly."""
    sources = {family: inspect.getsource(type(model.get_submodule(HeadSpace.from_model(model).blocks[0].name)).forward)
               for family in FUSED for model in [tiny_model(f"{family}_lm")]}
    assert "self.c_attn(hidden_states).split(self.split_size, dim=2)" in sources["gpt2"]
    assert "-1, self.head_dim)" in sources["gpt2"]
    assert "self.config.num_attention_heads * self.head_dim" in sources["phi3"]
    assert "self.num_key_value_heads * self.head_dim" in sources["phi3"]
    assert "(*input_shape, -1, 3 * self.head_size)" in sources["gpt_neox"]
    assert "qkv.chunk(3, dim=-1)" in sources["gpt_neox"]
    phi3 = tiny_model("phi3_lm")
    assert "chunk(2, dim=-1)" in inspect.getsource(type(phi3.model.layers[0].mlp).forward)


@pytest.mark.parametrize("family", FUSED)
def test_the_stand_in_of_an_emptied_fused_block_leaves_it_as_it_was(family):
    """An emptied block runs the stock forward with one zero head borrowed for the call (a fused
    projection of three stand-in widths, Phi-3's config view with one query head): afterwards its
    attributes, modules and the state dict are the pruned ones again."""
    model = tiny_model(f"{family}_lm")
    space = HeadSpace.from_model(model)
    mask = torch.ones(space.total, dtype=torch.bool)
    mask[: space.blocks[0].num_heads] = False
    _, pruned = gated_and_pruned(model, mask)
    block = pruned.get_submodule(space.blocks[0].name)
    before, modules = dict(vars(block)), dict(block._modules)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    with torch.no_grad():
        pruned(**left_padded())
    assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes
    assert {k: v for k, v in vars(block).items() if not k.startswith("_")} == {
        k: v for k, v in before.items() if not k.startswith("_")}
    assert dict(block._modules) == modules
    assert block.config is pruned.config  # an emptied block reads the model config itself
