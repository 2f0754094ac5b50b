"""Cached generation of pruned encoder-decoders, step by step.

A pruned model must decode what the gated model decodes, with the KV cache and without it, in
greedy and beam search. Tokens are not enough: on tiny random models they agree by luck while the
logits are off, so every step's logits are compared (`output_logits=True`). The masks empty the
blocks that need stand-ins (`arch.runtime.EmptyAttention`, `arch.runtime.SharedBiasHeads`): decoder layer 0's
self-attention (its cache layer still has to advance, and T5 reads its past length from it),
every decoder self-attention, every cross-attention, and an encoder layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SEQ2SEQ, padded_batch, tiny_model

from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.surgery import load_pruned, remove_heads, save_pruned


def _mask(space: HeadSpace, case: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(space.total, generator=g) > 0.4  # partial blocks everywhere else
    for block, part in zip(space.blocks, space.split(mask)):
        if part.sum() == 0:
            part[0] = True  # only the blocks the case names are empty
        empty = {
            "decoder0": block.kind == "decoder" and block.layer == 0,
            "all_decoder_self": block.kind == "decoder",
            "all_cross": block.kind == "cross",
            "encoder0_and_decoder1": (block.kind == "encoder" and block.layer == 0)
            or (block.kind == "decoder" and block.layer == 1),
        }[case]
        if empty:
            part[:] = False
    return mask


def _decode(model, batch, **kw):
    out = model.generate(**batch, max_new_tokens=7, min_new_tokens=7, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.logits)


CASES = ["decoder0", "all_decoder_self", "all_cross", "encoder0_and_decoder1"]


@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_pruned_decodes_like_gated_with_and_without_cache(arch, case, beams):
    model = tiny_model(arch)
    space = HeadSpace.from_model(model)
    mask = _mask(space, case)
    batch = padded_batch(arch)
    del batch["decoder_input_ids"]
    with Gates(model, space) as gates:
        gates.set(mask.float())
        want_ids, want = _decode(model, batch, num_beams=beams, use_cache=True)
        nocache_ids, nocache = _decode(model, batch, num_beams=beams, use_cache=False)
    assert torch.equal(want_ids, nocache_ids)
    torch.testing.assert_close(nocache, want, atol=1e-5, rtol=0)  # the reference itself is consistent
    pruned = copy.deepcopy(model)
    remove_heads(pruned, mask, space)
    for use_cache in (True, False):
        ids, logits = _decode(pruned, batch, num_beams=beams, use_cache=use_cache)
        assert torch.equal(ids, want_ids), f"{arch}/{case}/cache={use_cache}: other tokens"
        diff = (logits - want).abs().max().item()
        assert diff < 1e-5, f"{arch}/{case}/beams={beams}/cache={use_cache}: logits differ by {diff}"


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_reloaded_pruned_decodes_the_same(arch, tmp_path):
    model = tiny_model(arch)
    space = HeadSpace.from_model(model)
    remove_heads(model, _mask(space, "all_decoder_self"), space)
    batch = padded_batch(arch)
    del batch["decoder_input_ids"]
    save_pruned(model, tmp_path / "m")
    ids, logits = _decode(model, batch, num_beams=2)
    ids2, logits2 = _decode(load_pruned(tmp_path / "m"), batch, num_beams=2)
    assert torch.equal(ids, ids2) and torch.equal(logits, logits2)


def test_empty_block_still_trains_its_output_bias():
    """The stand-in head's output weight is a zero tensor, but the block's real output bias
    (BART's out_proj.bias) is used, so it gets the gradient the gated model gives it."""
    model = tiny_model("bart")
    space = HeadSpace.from_model(model)
    mask = _mask(space, "all_decoder_self")
    batch = padded_batch("bart")
    with Gates(model, space) as gates:
        gates.set(mask.float())
        model(**batch).logits.pow(2).sum().backward()
    pruned = copy.deepcopy(model)
    remove_heads(pruned, mask, space)
    pruned.zero_grad()
    pruned(**batch).logits.pow(2).sum().backward()
    name = "model.decoder.layers.0.self_attn.out_proj.bias"
    want = dict(model.named_parameters())[name].grad
    got = dict(pruned.named_parameters())[name].grad
    assert got is not None and got.abs().sum() > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not any("stand" in n or n.endswith("_ref") for n, _ in pruned.named_parameters())
