"""What surgery's stand-in forwards assume of transformers, pinned so that a release that
changes it fails here, loudly, instead of decoding wrongly in silence (the way 5.24's rename of
`past_key_values` to `cache` once broke cached generation of pruned models)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import transformers
from conftest import SEQ2SEQ, padded_batch, tiny_model

from prune_cli.arch.t5 import takes_shared_bias
from prune_cli.heads import HeadSpace, match_layout
from prune_cli.surgery import remove_heads


@pytest.mark.parametrize("arch,shared", [("t5", True), ("mt5", True), ("umt5", False), ("bart", False)])
def test_which_blocks_share_the_position_bias(arch, shared):
    model = tiny_model(arch)
    attn = [m for m in model.modules() if match_layout(m) is not None]
    assert attn and all(takes_shared_bias(m) is shared for m in attn)
    if shared:  # the bias goes in by this name and comes back second (arch.runtime.SharedBiasHeads)
        assert "position_bias" in inspect.signature(type(attn[0]).forward).parameters
        hidden = torch.randn(2, 5, model.config.d_model)
        out = attn[0](hidden)
        assert out[1].shape == (1, model.config.num_heads, 5, 5)


def test_a_release_that_stops_returning_the_bias_is_an_error(monkeypatch):
    model = tiny_model("t5")
    space = HeadSpace.from_model(model)
    mask = torch.ones(space.total, dtype=torch.bool)
    mask[1] = False  # the first block (owner of the table) loses a head
    remove_heads(model, mask, space)
    cls = type(model.encoder.block[0].layer[0].SelfAttention)
    stock = cls.forward

    def moved(self, *a, **k):
        out = stock(self, *a, **k)
        return (out[0], None, *out[2:])

    monkeypatch.setattr(cls, "forward", moved)
    with pytest.raises(RuntimeError, match="no longer returns"):
        model(**padded_batch("t5"))


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_an_empty_decoder_block_advances_its_cache_layer(arch):
    """Every layer of the self-attention cache holds every position, empty blocks' layers too."""
    model = tiny_model(arch)
    space = HeadSpace.from_model(model)
    mask = torch.ones(space.total, dtype=torch.bool)
    for block, part in zip(space.blocks, space.split(mask)):
        if block.kind == "decoder" and block.layer == 0:
            part[:] = False
    remove_heads(model, mask, space)
    batch = padded_batch(arch)
    del batch["decoder_input_ids"]
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         return_dict_in_generate=True, use_cache=True)
    cache = out.past_key_values
    cache = getattr(cache, "self_attention_cache", cache)
    lengths = {cache.get_seq_length(i) for i in range(len(cache.layers))}
    assert lengths == {out.sequences.shape[1] - 1}, (transformers.__version__, lengths)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "bart", "t5", "umt5"])
def test_stand_in_leaves_the_block_as_it_was(arch):
    """The empty block runs the stock forward with a borrowed zero head: after the call its
    attributes, parameters and state dict are the pruned ones again."""
    model = tiny_model(arch)
    space = HeadSpace.from_model(model)
    mask = torch.ones(space.total, dtype=torch.bool)
    mask[: space.blocks[0].num_heads] = False
    remove_heads(model, mask, space)
    block = model.get_submodule(space.blocks[0].name)
    before = copy.copy(vars(block))
    modules = dict(block._modules)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model(**padded_batch(arch))
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    after = vars(block)
    assert {k: after[k] for k in before if not k.startswith("_")} == {
        k: v for k, v in before.items() if not k.startswith("_")}
    assert dict(block._modules) == modules


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "bart", "marian", "t5", "mt5"])
def test_uneven_blocks_run_through_the_attention_interface(arch):
    """Heads of unequal sizes rely on three things of the stock attention modules: they view
    q/k/v with (-1, head size), look the attention function up by `config._attn_implementation`
    at call time, and keep `scaling` from __init__. Every uneven block must actually have called
    prune-cli's function in a forward pass."""
    from prune_cli.surgery import remove_units
    from prune_cli.units import DIM_MODEL_TYPES, UnitSpace

    model = tiny_model(arch)
    assert model.config.model_type in DIM_MODEL_TYPES
    space = UnitSpace.from_model(model)
    vo = torch.ones(space.dims_total, dtype=torch.bool)
    vo[1::3] = False  # every head loses a third of its values
    remove_units(model, space.replace(vo=vo), space)
    uneven = [m for m in model.modules() if m.__dict__.get("_prune_cli_groups")]
    assert len(uneven) == len(space.blocks)
    model(**padded_batch(arch))
    assert all(m.__dict__["_prune_cli_ran"] for m in uneven)
    for m in uneven:
        src = inspect.getsource(type(m).forward)
        assert "_attn_implementation" in src and "-1" in src


def test_a_release_that_bypasses_the_attention_interface_is_an_error(monkeypatch):
    """If a block stopped reading config._attn_implementation, the stock kernel would treat every
    dimension as a head: the guard raises instead."""
    from prune_cli.arch import runtime as attention
    from prune_cli.surgery import remove_units
    from prune_cli.units import UnitSpace

    model = tiny_model("bert")
    space = UnitSpace.from_model(model)
    dims = torch.ones(space.dims_total, dtype=torch.bool)
    dims[::5] = False  # the same query/key and value counts: the stock kernel would run, wrongly
    remove_units(model, space.replace(qk=dims, vo=dims), space)
    sdpa = transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS._global_mapping, attention.UNEVEN, sdpa)
    with pytest.raises(RuntimeError, match="no longer calls the attention function"):
        model(**padded_batch("bert"))
