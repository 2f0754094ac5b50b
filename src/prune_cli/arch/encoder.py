"""Encoder-only families: BERT and the models built on its modules (RoBERTa, XLM-R, ELECTRA,
CamemBERT...), and DistilBERT (Devlin et al. 2019; Sanh et al. 2019)."""

from __future__ import annotations

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout


def _layers(config) -> tuple[int, ...]:
    return (int(getattr(config, "num_hidden_layers", None) or config.n_layers),)


BERT = Family(
    name="bert",
    model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
    structure="encoder",
    # the output projection sits in the sibling `output` module
    attention=(AttentionLayout("query", "key", "value", "..output.dense", "attention_head_size",
                               ("num_attention_heads",), ("all_head_size",)),),
    ffn=(FFNLayout(("intermediate.dense",), "output.dense"),),  # on the layer
    expected_blocks=_layers,
)

DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    structure="encoder",
    attention=(AttentionLayout("q_lin", "k_lin", "v_lin", "out_lin", "attention_head_size", ("n_heads",)),),
    ffn=(FFNLayout(("lin1",), "lin2"),),
    expected_blocks=_layers,
)
