"""The architecture adapters (prune_cli.arch): every declared family is read through its adapter
alone, a model the adapters do not know is refused with one line, a block an adapter cannot match
fails loudly, and a family added through one module (OPT, decoder-only) keeps every invariant the
others keep: gate == physical removal in full forward passes and in cached generation, FFN neurons
included, and a pruned checkpoint reloads."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHS, padded_batch, tiny_model

from prune_cli.arch import FAMILIES, family_of
from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.surgery import load_pruned, remove_heads, remove_units, save_pruned
from prune_cli.units import UnitSpace


def test_every_model_type_belongs_to_one_family():
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types))


@pytest.mark.parametrize("arch", [*ARCHS, "opt"])
def test_blocks_and_kinds_come_from_the_family(arch):
    model = tiny_model(arch)
    family = family_of(model)
    space = HeadSpace.from_model(model)
    kinds = {b.kind for b in space.blocks}
    expected = {"encoder": {"encoder"}, "decoder": {"decoder"}, "seq2seq": {"encoder", "decoder", "cross"}}
    assert kinds == expected[family.structure]
    assert len(UnitSpace.from_model(model).ffns) == sum(b.kind != "cross" for b in space.blocks)  # one per layer


def test_a_model_of_an_undeclared_family_is_one_line_naming_its_type():
    import transformers as tf

    cfg = tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64, rotary_dim=4)
    model = tf.GPTJForCausalLM(cfg)
    with pytest.raises(ConfigError, match=r"^model='gptj': a model of a family prune-cli declares \("):
        HeadSpace.from_model(model)


def test_a_renamed_output_projection_is_an_error_naming_the_module():
    model = tiny_model("opt")
    attn = model.model.decoder.layers[1].self_attn
    attn.o_renamed = attn.out_proj
    del attn.out_proj
    with pytest.raises(ValueError, match=r"decoder\.layers\.1\.self_attn \(OPTAttention\): the opt adapter expects"):
        HeadSpace.from_model(model)


def test_a_block_the_adapter_cannot_match_is_not_skipped_silently():
    model = tiny_model("opt")
    model.model.decoder.layers[2].self_attn.q_proj = torch.nn.Identity()  # no longer a Linear: unmatched
    with pytest.raises(ValueError, match=r"matched 2 attention blocks where its config declares 3"):
        HeadSpace.from_model(model)


def _mask(space: HeadSpace, seed: int, empty_layer: int | None = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(space.total, generator=g) > 0.5
    for block, part in zip(space.blocks, space.split(mask)):
        if part.sum() == 0:
            part[0] = True
        if block.layer == empty_layer:
            part[:] = False
    return mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_opt_gate_equals_surgery_with_an_emptied_layer(attn):
    model = tiny_model("opt", attn)
    space = HeadSpace.from_model(model)
    assert space.total == 12 and space.kinds() == {"decoder": 12}
    batch = padded_batch("opt")
    for seed in range(3):
        mask = _mask(space, seed, empty_layer=seed)
        with Gates(model, space) as gates:
            gates.set(mask.float())
            with torch.no_grad():
                gated = model(**batch).logits
        pruned = copy.deepcopy(model)
        remove_heads(pruned, mask, space)
        with torch.no_grad():
            diff = (pruned(**batch).logits - gated).abs().max().item()
        assert diff < 1e-5, f"{attn} seed {seed}: gated vs pruned differ by {diff}"


def test_opt_ffn_neurons_and_heads_removed_together_equal_the_masked_model(tmp_path):
    model = tiny_model("opt")
    units = UnitSpace.from_model(model)
    g = torch.Generator().manual_seed(3)
    masks = {"head": _mask(units, 3, empty_layer=1), "ffn": torch.rand(len(units.kept("ffn")), generator=g) > 0.5}
    target = units.with_masks(masks)
    batch = padded_batch("opt")
    ref = copy.deepcopy(model)
    with torch.no_grad():  # the reference: zero the removed neurons' weights and gate the heads
        for j, ffn in enumerate(units.ffns):
            dead = [n for n in range(ffn.width) if n not in target.ffn_kept(j)]
            for path in ffn.inputs:
                lin = ref.get_submodule(path)
                lin.weight[dead] = 0
                lin.bias[dead] = 0
            ref.get_submodule(ffn.output).weight[:, dead] = 0
    with Gates(ref, HeadSpace.from_model(ref)) as gates:
        gates.set(masks["head"].float())
        with torch.no_grad():
            want = ref(**batch).logits
    remove_units(model, target, units)
    with torch.no_grad():
        assert (model(**batch).logits - want).abs().max().item() < 1e-5
    save_pruned(model, tmp_path / "opt")
    again = load_pruned(tmp_path / "opt", type(model))
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam"])
def test_opt_pruned_decodes_like_gated_with_and_without_cache(beams):
    model = tiny_model("opt_lm")
    space = HeadSpace.from_model(model)
    mask = _mask(space, 5, empty_layer=0)
    batch = padded_batch("opt")
    batch["input_ids"][batch["attention_mask"] == 0] = 1
    # left padding, as decoder-only generation wants it
    batch = {k: torch.flip(v, dims=[1]) for k, v in batch.items()}

    def decode(m, use_cache):
        out = m.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams,
                         output_logits=True, return_dict_in_generate=True, use_cache=use_cache, pad_token_id=1)
        return out.sequences, torch.stack(out.logits)

    with Gates(model, space) as gates:
        gates.set(mask.float())
        want_ids, want = decode(model, True)
    pruned = copy.deepcopy(model)
    remove_heads(pruned, mask, space)
    for use_cache in (True, False):
        ids, logits = decode(pruned, use_cache)
        assert torch.equal(ids, want_ids), f"cache={use_cache}: other tokens"
        diff = (logits - want).abs().max().item()
        assert diff < 1e-5, f"beams={beams} cache={use_cache}: logits differ by {diff}"
