"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"; the model of
openai/gpt-2): decoder-only, one key/value head per query head, every projection a transformers
`Conv1D` (weight stored [in, out], read through prune_cli.arch.projections).

Its attention computes q, k and v with ONE projection, `c_attn`, whose output features are
[q | k | v] (each head-major), split at `split_size` features; q, k and v are viewed with -1 heads of
`head_dim`, and `scaling` (1/sqrt(head_dim), further divided by layer + 1 under
`scale_attn_by_inverse_layer_idx`) is fixed in __init__, so both that option and
`reorder_and_upcast_attn` (the same scores, upcast) prune exactly. Surgery keeps `split_size` (and
`num_heads`) equal to the kept heads' width. Heads are pruned whole, with the FFN neurons (`mlp.c_fc`
rows, `mlp.c_proj` columns). Refused: `add_cross_attention` (its cross-attention blocks take the
query from a separate `q_attn` and [k | v] from `c_attn`, a layout no test covers).
"""

from __future__ import annotations

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout


def _unsupported(config):
    if getattr(config, "add_cross_attention", False):
        why = ("False: prune-cli prunes GPT-2 self-attention only (its cross-attention blocks take the query "
               "from q_attn and fuse keys and values apart)")
        return "add_cross_attention", True, why
    return None


GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    structure="decoder",
    attention=(AttentionLayout("c_attn", "c_attn", "c_attn", "c_proj", "head_dim", ("num_heads",), ("split_size",),
                               fused="concat"),),
    ffn=(FFNLayout(("c_fc",), "c_proj"),),  # on the block's `mlp`
    dims=False,
    no_dims="its fused attention projection splits queries, keys and values at one width",
    layer_attrs=("n_layer",),
    head_attrs=("n_head",),
    hidden_attrs=("n_embd",),
    ffn_attrs=("n_inner",),
    expected_blocks=lambda config: (int(config.n_layer),),
    unsupported=_unsupported,
)
