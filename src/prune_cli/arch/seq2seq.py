"""Encoder-decoder families with BART's modules: BART, mBART, Marian, Pegasus (Lewis et al. 2020),
and the from-scratch translation Transformers prune-cli builds on them (prune_cli.scratch)."""

from __future__ import annotations

from dataclasses import replace

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout


def _blocks(config) -> tuple[int, ...]:
    enc, dec = int(config.encoder_layers), int(config.decoder_layers)
    return enc + 2 * dec, 2 * dec  # the whole model, or a decoder alone (BartForCausalLM)


BART = Family(
    name="bart",
    model_types=("bart", "mbart", "marian"),
    structure="seq2seq",
    attention=(AttentionLayout("q_proj", "k_proj", "v_proj", "out_proj", "head_dim", ("num_heads",)),),
    ffn=(FFNLayout(("fc1",), "fc2"),),
    cross_names=frozenset({"encoder_attn"}),
    expected_blocks=_blocks,
)
# the same modules; uneven heads are not tested on Pegasus, so it prunes whole heads and neurons
PEGASUS = replace(BART, name="pegasus", model_types=("pegasus",), dims=False)
