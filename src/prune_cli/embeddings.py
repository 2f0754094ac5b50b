"""A factorised word-embedding table and its config record, what loading a model needs.

GRAIN (Yang et al., ACL 2023, arXiv:2212.07634; official code airaria/GRAIN), with
`method.embed_rank`, replaces the word embeddings E (vocab x d) by E_r (vocab x r) times P (r x d),
so a pruned encoder is not dwarfed by its embedding table (MiniLM: 11.7 M of its 22.7 M parameters
are word embeddings). The factorising step belongs to the method
(`prune_cli.methods.grain.factorize`); what stays here is what every later load of such a model
needs, below the methods: the rank is recorded in the config (`EMBED_KEY`), and
`apply_embed_record` gives a freshly built model the two factors before their weights load
(`surgery.apply_record` calls it; `models` and `units` read the key).
"""

from __future__ import annotations

from torch import nn

from prune_cli.arch.runtime import FactorizedEmbedding

EMBED_KEY = "prune_cli_embed_rank"

__all__ = ["EMBED_KEY", "FactorizedEmbedding", "apply_embed_record"]


def apply_embed_record(model: nn.Module) -> nn.Module:
    """Give a freshly built model the factorised shapes its config records (weights load after)."""
    rank = getattr(model.config, EMBED_KEY, None)
    table = model.get_input_embeddings()
    if rank and not isinstance(table, FactorizedEmbedding):
        vocab, dim = table.weight.shape
        new = FactorizedEmbedding(vocab, int(rank), dim, table.padding_idx).to(table.weight.device, table.weight.dtype)
        model.set_input_embeddings(new)
    return model
