"""Decoder-only LLMs with grouped-query attention (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, through
their one adapter prune_cli.arch.llama; and Phi-3, whose q/k/v projection is fused: prune_cli.arch.phi3,
more in tests/test_fused_arch.py): a query head belongs to its key/value group, a
group stays while any query head of it is left, groups may keep different numbers of query heads,
and the gated model equals the physically pruned one in full forward passes over left-padded batches
AND in cached generation (greedy and beam, every step's logits), with an emptied layer and an
emptied group; the pruned model's KV cache holds only the kept key/value heads; an export reloads
to the same generations and parameter count, and prunes again in the dense index."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import LLMS, tiny_model

from prune_cli.arch import family_of
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.surgery import count_params, load_pruned, remove_heads, remove_units, save_pruned
from prune_cli.units import UnitSpace

#: every decoder-only family: grouped-query attention (LLMS) and the fused-q/k/v ones of tests/test_fused_arch.py
FAMILIES = [*LLMS, "gpt2", "gpt_neox"]
CASES = [(f, a) for f in FAMILIES for a in ("eager", "sdpa") if not (f == "gemma2" and a == "sdpa")]
IDS = [f"{f}-{a}" for f, a in CASES]


def gated_logits(model, space, masks: dict, batch):
    """Logits of `model` with the gates of `masks` ({kind: 0/1 over the dense index}) set."""
    with Gates(model, space) as gates:
        gates.set_units({k: v.float() for k, v in masks.items()})
        with torch.no_grad():
            return model(**batch).logits


def left_padded(seed: int = 0) -> dict:
    """Three prompts of 11, 7 and 4 tokens, padded on the LEFT as generation pads them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def gqa_mask(space: HeadSpace, seed: int) -> torch.Tensor:
    """Random kept query heads with, in turn: a layer emptied, a group emptied in another layer, and
    groups of unequal sizes (1 and 3) in a third: the shapes surgery must get right."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(space.total, generator=g) > 0.4
    parts = space.split(mask)
    empty, one_group, uneven = seed % 3, (seed + 1) % 3, (seed + 2) % 3
    parts[empty][:] = False
    parts[one_group][:] = torch.tensor([True, False, True, False, False, False])  # group 1 emptied
    parts[uneven][:] = torch.tensor([False, True, False, True, True, True])  # groups of 1 and 3
    return mask


def gated_and_pruned(model, mask):
    space = HeadSpace.from_model(model)
    pruned = copy.deepcopy(model)
    remove_heads(pruned, mask, space)
    return space, pruned


def test_llm_blocks_are_decoder_blocks_with_their_groups():
    model = tiny_model("llama_lm")
    space = HeadSpace.from_model(model)
    assert family_of(model).name == "llama" and space.kinds() == {"decoder": 18}
    assert all(b.group_size == 3 for b in space.blocks)
    units = UnitSpace.from_model(model)
    assert len(units.ffns) == 3 and units.ffns[0].inputs[0].endswith("mlp.gate_proj")
    # weights: per layer q + o (6 heads x 8 x 48 each) + k + v (2 groups x 8 x 48 each) + 37 neurons x 3 x 48
    per_layer = 2 * 6 * 8 * 48 + 2 * 2 * 8 * 48 + 37 * 3 * 48
    assert units.weights() == (3 * per_layer, 3 * per_layer)


@pytest.mark.parametrize(("family", "attn"), CASES, ids=IDS)
def test_gated_equals_pruned_in_a_forward_pass(family, attn):
    model = tiny_model(f"{family}_lm", attn)
    batch = left_padded()
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        dense = model(**batch).logits
    for seed in range(3):
        mask = gqa_mask(HeadSpace.from_model(model), seed)
        space, pruned = gated_and_pruned(model, mask)
        want = gated_logits(model, space, {"head": mask}, batch)
        assert (want - dense)[keep].abs().max().item() > 1e-3  # the mask matters
        with torch.no_grad():
            got = pruned(**batch).logits
        diff = (got - want)[keep].abs().max().item()
        assert diff < 1e-5, f"seed {seed}: gated vs pruned differ by {diff}"
        # parameters: exactly what the kept units own (q rows, o columns per head; k/v rows per group)
        assert count_params(pruned) == count_params(model) - UnitSpace.from_model(model).with_masks(
            {"head": mask}).removed_params()


@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam"])
@pytest.mark.parametrize(("family", "attn"), CASES, ids=IDS)
def test_pruned_decodes_like_gated_with_and_without_cache(family, attn, beams):
    model = tiny_model(f"{family}_lm", attn)
    mask = gqa_mask(HeadSpace.from_model(model), 4)
    space, pruned = gated_and_pruned(model, mask)
    batch = left_padded(1)

    def decode(m, use_cache):
        out = m.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams,
                         output_logits=True, return_dict_in_generate=True, use_cache=use_cache, pad_token_id=0)
        return out.sequences, torch.stack(out.logits)

    with Gates(model, space) as gates:
        gates.set(mask.float())
        want_ids, want = decode(model, True)
    for use_cache in (True, False):
        ids, logits = decode(pruned, use_cache)
        assert torch.equal(ids, want_ids), f"cache={use_cache}: other tokens"
        diff = (logits - want).abs().max().item()
        assert diff < 1e-5, f"cache={use_cache}: logits differ by {diff}"


def test_the_kv_cache_holds_only_the_kept_key_value_heads():
    model = tiny_model("llama_lm", "sdpa")
    mask = gqa_mask(HeadSpace.from_model(model), 0)  # layer 0 emptied, layer 1 one group, layer 2 both
    _, pruned = gated_and_pruned(model, mask)
    batch = left_padded()
    with torch.no_grad():
        dense_cache = model(**batch, use_cache=True).past_key_values
        cache = pruned(**batch, use_cache=True).past_key_values
    heads = [layer.keys.shape[1] for layer in cache.layers]
    assert [layer.keys.shape[1] for layer in dense_cache.layers] == [2, 2, 2]
    assert heads[1:] == [1, 2]
    # an emptied layer runs one zero stand-in head (prune_cli.arch.empty) whose cache entry is tiny
    assert cache.layers[0].keys.shape[-1] * heads[0] <= 8

    def nbytes(c):
        return sum(t.numel() * t.element_size() for layer in c.layers for t in (layer.keys, layer.values))

    assert nbytes(cache) < nbytes(dense_cache) * (8 + 8 + 16) / 48 + 1


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_export_reloads_to_the_same_generations_and_prunes_again_in_the_dense_index(family, tmp_path):
    model = tiny_model(f"{family}_lm", "sdpa")
    units = UnitSpace.from_model(model)
    g = torch.Generator().manual_seed(7)
    first = units.with_masks({"head": gqa_mask(units, 1), "ffn": torch.rand(units.size("ffn"), generator=g) > 0.3})
    remove_units(model, first, units)
    save_pruned(model, tmp_path / "m")
    again = load_pruned(tmp_path / "m", type(model))
    assert count_params(again) == count_params(model)
    batch = left_padded(2)
    gen = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(again.generate(**batch, **gen), model.generate(**batch, **gen))
    # prune the export again: masks over the DENSE index; heads it lost stay lost
    dense_head = first.kept("head").clone()
    alive = dense_head.nonzero().flatten()
    dense_head[alive[::2]] = False
    second = UnitSpace.from_model(again).with_masks({"head": dense_head})
    remove_units(again, second)
    assert UnitSpace.from_model(again) == second
    assert HeadSpace.from_model(again).total == int(dense_head.sum())
    reference = tiny_model(f"{family}_lm", "sdpa")
    ref_space = UnitSpace.from_model(reference)
    with Gates(reference, ref_space) as gates:  # the dense model gated to what is left
        gates.set_units({"head": dense_head.float(), "ffn": first.kept("ffn").float()})
        with torch.no_grad():
            want = reference(**batch).logits
    with torch.no_grad():
        got = again(**batch).logits
    assert (got - want)[batch["attention_mask"].bool()].abs().max().item() < 1e-5


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_an_emptied_layer_runs_at_a_head_size_other_than_the_stand_in(family):
    """Rotary tables have the dense head size: the stand-in head of an emptied block has it too
    (a head of 16 rotated by a table of 8 was a shape error)."""
    import transformers as tf

    config_cls, lm_cls, _ = LLMS[family]
    torch.manual_seed(0)
    cfg = getattr(tf, config_cls)(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, intermediate_size=37, vocab_size=99, max_position_embeddings=64,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = getattr(tf, lm_cls)._from_config(cfg, attn_implementation="sdpa").eval()
    mask = torch.tensor([False] * 4 + [True, False, True, True])  # layer 0 emptied, groups of 1 and 2
    space, pruned = gated_and_pruned(model, mask)
    batch = left_padded()
    want = gated_logits(model, space, {"head": mask}, batch)
    with torch.no_grad():
        got = pruned(**batch).logits
    assert (got - want)[batch["attention_mask"].bool()].abs().max().item() < 1e-5


def test_kv_units_gate_and_score_whole_groups():
    """A group's gate is the gate of every query head reading it; magnitude and the weight count
    of a group hold its key/value rows once plus its query heads' own weights."""
    from prune_cli.methods.magnitude import unit_norms

    model = tiny_model("llama_lm", "sdpa")
    units = UnitSpace.from_model(model)
    assert units.size("kv") == 6 and units.group_of_head().tolist() == [g for g in range(6) for _ in range(3)]
    kv = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    batch = left_padded()
    with Gates(model, units) as gates:
        gates.set_units({"kv": kv})
        with torch.no_grad():
            by_group = model(**batch).logits
        gates.set_units({"head": kv[units.group_of_head()]})
        with torch.no_grad():
            by_head = model(**batch).logits
    assert torch.equal(by_group, by_head)
    norms = unit_norms(model, units)
    attn = model.model.layers[0].self_attn
    want = sum(w.pow(2).sum() for w in (attn.q_proj.weight[:24], attn.k_proj.weight[:8], attn.v_proj.weight[:8],
                                        attn.o_proj.weight[:, :24]))
    assert norms["kv"][0].item() == pytest.approx(want.sqrt().item(), rel=1e-6)
    assert units.unit_sizes("kv")[0] == (2 * 3 + 2) * 8 * 48
    dropped = units.with_masks({"kv": kv.bool()})
    assert dropped.kept("head").tolist() == kv[units.group_of_head()].bool().tolist()
    assert units.weights()[0] - dropped.weights()[0] == 3 * int(units.unit_sizes("kv")[0])
