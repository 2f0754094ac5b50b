"""Phi-3 (Abdin et al. 2024, "Phi-3 Technical Report"): decoder-only with grouped-query attention
like Llama, but with FUSED projections: `qkv_proj` outputs [q | k | v] (heads * head_dim query
features, then kv_heads * head_dim key and value features) and the gated FFN's `gate_up_proj`
outputs [gate | up], split with `chunk(2)` (a neuron is row n and row intermediate + n of it, and
column n of `down_proj`).

Its forward finds the key features at `config.num_attention_heads * head_dim` (the MODEL config)
and the value features `num_key_value_heads * head_dim` later, so surgery gives a pruned block a
view of the config with its own query head count and sets `num_key_value_heads` to the groups it
kept. Heads are pruned whole (rotary embeddings, shared key/value heads: as Llama).
"""

from __future__ import annotations

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout

PHI3 = Family(
    name="phi3",
    model_types=("phi3",),
    structure="decoder",
    attention=(AttentionLayout("qkv_proj", "qkv_proj", "qkv_proj", "o_proj", "head_dim", (),
                               kv_count_attrs=("num_key_value_heads",), groups_attr="num_key_value_groups",
                               fused="concat", config_count_attrs=("num_attention_heads",), rotary=True),),
    ffn=(FFNLayout(("gate_up_proj",), "down_proj", chunks=2),),  # on the decoder layer's `mlp`
    dims=False,
    no_dims="rotary embeddings rotate query/key dimensions in pairs and a value head is shared by a group of "
            "query heads",
    expected_blocks=lambda config: (int(config.num_hidden_layers),),
)
