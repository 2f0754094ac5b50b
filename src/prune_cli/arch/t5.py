"""T5 and its descendants (Raffel et al. 2020): T5 / mT5 share one relative-position bias per stack,
UMT5 gives every block its own table, LongT5's local attention cannot lose heads physically."""

from __future__ import annotations

import inspect
from dataclasses import replace

from torch import nn

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout


def _blocks(config) -> tuple[int, ...]:
    enc = int(config.num_layers)
    dec = int(getattr(config, "num_decoder_layers", None) or enc)
    return enc + 2 * dec, enc  # the whole model, or the encoder alone (T5EncoderModel)


T5 = Family(
    name="t5",
    model_types=("t5", "mt5"),
    structure="seq2seq",
    attention=(AttentionLayout("q", "k", "v", "o", "key_value_proj_dim", ("n_heads",), ("inner_dim",)),),
    ffn=(FFNLayout(("wi_0", "wi_1"), "wo"), FFNLayout(("wi",), "wo")),  # v1.1 / mT5 gated FFN, T5
    cross_names=frozenset({"EncDecAttention"}),
    expected_blocks=_blocks,
)
# UMT5 views q/k/v with its head count: whole heads only
UMT5 = replace(T5, name="umt5", model_types=("umt5",), dims=False)
LONGT5 = replace(T5, name="longt5", model_types=("longt5",), dims=False, surgery=False, expected_blocks=None)


# ---- the shared position bias: what surgery installs on a T5 block that lost heads --------
def takes_shared_bias(module: nn.Module) -> bool:
    """T5 and mT5 compute the relative-position bias once per stack (first layer, every head) and
    pass it down to the later layers through `position_bias`; UMT5 gives each block its own. A T5
    block that lost heads then runs through `runtime.SharedBiasHeads`."""
    return hasattr(module, "has_relative_attention_bias") and "position_bias" in inspect.signature(
        type(module).forward).parameters
