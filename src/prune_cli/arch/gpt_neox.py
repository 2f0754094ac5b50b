"""GPT-NeoX (Black et al. 2022, "GPT-NeoX-20B"; also Pythia, Biderman et al. 2023): decoder-only, one
key/value head per query head, ONE attention projection `query_key_value` whose output features
are interleaved per head: the forward views them as (..., -1 heads, 3 * head_size) and chunks each
head's slice into its q, k and v (`fused="per_head"`). Rotary embeddings turn the first
`partial_rotary_factor` of each head's query/key dimensions, so heads are pruned whole, with the FFN
neurons (`dense_h_to_4h` rows, `dense_4h_to_h` columns).
"""

from __future__ import annotations

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout

GPT_NEOX = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    structure="decoder",
    attention=(AttentionLayout("query_key_value", "query_key_value", "query_key_value", "dense", "head_size", (),
                               fused="per_head", rotary=True),),
    ffn=(FFNLayout(("dense_h_to_4h",), "dense_4h_to_h"),),  # on the layer's `mlp`
    dims=False,
    no_dims="rotary embeddings rotate query/key dimensions in pairs and its fused projection interleaves "
            "q, k and v per head",
    expected_blocks=lambda config: (int(config.num_hidden_layers),),
)
