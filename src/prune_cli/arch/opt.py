"""OPT (Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models"): decoder-only,
one key/value head per query head, BART-style projection names. Its attention views q/k/v with
`num_heads`, not -1, so it prunes whole heads and FFN neurons, not head dimensions."""

from __future__ import annotations

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout

OPT = Family(
    name="opt",
    model_types=("opt",),
    structure="decoder",
    attention=(AttentionLayout("q_proj", "k_proj", "v_proj", "out_proj", "head_dim", ("num_heads",)),),
    ffn=(FFNLayout(("fc1",), "fc2"),),  # on the decoder layer
    dims=False,
    no_dims="its attention views queries, keys and values with its head count",
    ffn_attrs=("ffn_dim",),
    expected_blocks=lambda config: (int(config.num_hidden_layers),),
)
