"""Decoder-only LLMs with grouped-query attention built like Llama (Touvron et al. 2023): Llama and
SmolLM2, Mistral (Jiang et al. 2023), Qwen2 / Qwen2.5 (q/k/v biases), Qwen3 (per-head q/k norms),
Gemma and Gemma2 (Gemma Team 2024: soft-capped logits, sliding-window layers).

Every family here names its projections q_proj/k_proj/v_proj/o_proj, views them with -1 heads of
`head_dim`, and lets the attention function repeat each key/value head `num_key_value_groups`
times; its FFN is gated (a neuron is a row of gate_proj and of up_proj and a column of down_proj).
Heads are pruned whole: rotary embeddings rotate query/key dimensions in pairs (j, j + head_dim/2)
and a value head is shared by the query heads of its group, so a single dimension is no unit of
these models (`dims=False`: refused up front with that reason).
"""

from __future__ import annotations

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout

LLAMA = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"),
    structure="decoder",
    attention=(AttentionLayout("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", (),
                               groups_attr="num_key_value_groups", rotary=True),),
    ffn=(FFNLayout(("gate_proj", "up_proj"), "down_proj"),),  # on the decoder layer's `mlp`
    dims=False,
    no_dims="rotary embeddings rotate query/key dimensions in pairs and a value head is shared by a group of "
            "query heads",
    expected_blocks=lambda config: (int(config.num_hidden_layers),),
)
