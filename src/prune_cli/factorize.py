"""Embedding factorisation (GRAIN's `method.embed_rank`): the word embeddings E (vocab x d) become
E_r (vocab x r) times P (r x d), from the truncated SVD of E, so a pruned encoder is not dwarfed
by its embedding table (MiniLM: 11.7 M of its 22.7 M parameters are word embeddings).

The rank is recorded in the config (`EMBED_KEY`), so `load_pruned` rebuilds the two factors
before loading their weights. Factorised at the start of the pruning stage: training then
recovers what the approximation loses (GRAIN's "w/o EF" ablation turns it off).
"""

from __future__ import annotations

import torch
from torch import nn

EMBED_KEY = "prune_cli_embed_rank"


class FactorizedEmbedding(nn.Module):
    """ids -> proj(embed(ids)): an nn.Embedding of width r followed by a bias-free r -> d map."""

    def __init__(self, num_embeddings: int, rank: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.proj = nn.Linear(rank, dim, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        """The full table the factors stand for (for code that reads `.weight`, e.g. its dtype)."""
        return self.embed.weight @ self.proj.weight.T

    @property
    def num_embeddings(self) -> int:
        return self.embed.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.proj.out_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids))


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


def apply_embed_record(model: nn.Module) -> nn.Module:
    """Give a freshly built model the factorised shapes its config records (weights load after)."""
    rank = getattr(model.config, EMBED_KEY, None)
    table = model.get_input_embeddings()
    if rank and not isinstance(table, FactorizedEmbedding):
        vocab, dim = table.weight.shape
        new = FactorizedEmbedding(vocab, int(rank), dim, table.padding_idx).to(table.weight.device, table.weight.dtype)
        model.set_input_embeddings(new)
    return model
