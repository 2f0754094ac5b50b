"""GRAIN's embedding factorisation (`method.embed_rank`; Yang et al., ACL 2023, arXiv:2212.07634;
official code airaria/GRAIN): the word embeddings E (vocab x d) become E_r (vocab x r) times
P (r x d), from the truncated SVD of E.

Factorised at the start of the pruning stage: training then recovers what the approximation loses
(GRAIN's "w/o EF" ablation turns it off). The factorised module and the config record it writes
live below the methods (`prune_cli.embeddings`): loading a pruned model (`surgery`, `models`,
`units`) rebuilds them, and those layers may not import a method.
"""

from __future__ import annotations

import torch
from torch import nn

from prune_cli.embeddings import EMBED_KEY, FactorizedEmbedding


def factorize_embeddings(model: nn.Module, rank: int) -> nn.Module:
    """Replace `model`'s word embeddings by their rank-`rank` SVD factors (in place)."""
    table = model.get_input_embeddings()
    if isinstance(table, FactorizedEmbedding):
        raise TypeError("the word embeddings are factorised already")
    weight = table.weight.detach().float()
    vocab, dim = weight.shape
    if not 0 < rank < dim:
        raise ValueError(f"embed_rank must lie in 1..{dim - 1} (the embedding width is {dim}), got {rank}")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    new = FactorizedEmbedding(vocab, rank, dim, table.padding_idx).to(table.weight.device)
    with torch.no_grad():
        new.embed.weight.copy_((u[:, :rank] * s[:rank]).to(table.weight.dtype))
        new.proj.weight.copy_(vh[:rank].T.to(table.weight.dtype))
    model.set_input_embeddings(new)
    setattr(model.config, EMBED_KEY, int(rank))
    return model
