"""LightGCN (He et al., SIGIR 2020): linear propagation over the normalised user-item graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.graph import layer_mean, propagate_layers
from model.quantizers import EmbeddingQuantizer


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 2-D table, with a deterministic backward.

    Indexing's backward adds the gradients of repeated rows in an order that varies with thread timing on a
    multi-threaded CPU, so two runs of one seed drift apart; ``embedding``'s backward sums them in a fixed order.
    """
    return nn.functional.embedding(index, table)


class LightGCN(nn.Module):
    """Ego embeddings for every user and item, propagated ``layers`` times and averaged.

    Node ``v``'s final embedding is ``z_v = 1/(L+1) * sum_k (A^k E)_v`` with ``A`` the symmetric
    normalised adjacency. Users come first in every node-indexed tensor, then items. With a
    ``quantizer`` attached, ``forward`` returns the fake-quantized ``z`` that the served codes decode to.
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.n_users, self.n_items, self.dim, self.layers = n_users, n_items, dim, layers
        self.embedding = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.quantizer: EmbeddingQuantizer | None = None

    def propagate_layers(self, adjacency: Tensor) -> list[Tensor]:
        """``[E^(0), ..., E^(L)]``: the ego embeddings propagated 0..L times over the symmetric ``adjacency``."""
        return propagate_layers(adjacency, self.embedding.weight, self.layers)

    def propagate(self, adjacency: Tensor) -> Tensor:
        """Layer mean ``z`` of the ego embeddings propagated over the symmetric ``adjacency``."""
        return layer_mean(adjacency, self.embedding.weight, self.layers)

    def quantizer_input(self, adjacency: Tensor) -> Tensor:
        """What the quantizer encodes: the layer mean ``z``, or for a per-layer quantizer (BiGeaR)
        the layers side by side, ``(N, (L+1) * dim)``. Without a quantizer: ``z``."""
        if self.quantizer is not None and self.quantizer.per_layer:
            return torch.cat(self.propagate_layers(adjacency), dim=1)
        return self.propagate(adjacency)

    def forward(self, adjacency: Tensor) -> Tensor:
        """Served node embeddings (``(N, dim)``, or wider for per-layer codes): scored by inner product."""
        final = self.quantizer_input(adjacency)
        return final if self.quantizer is None else self.quantizer(final)

    def bpr_loss(self, final: Tensor, users: Tensor, pos: Tensor, neg: Tensor,
                 l2: float) -> tuple[Tensor, Tensor]:
        """BPR loss on final embeddings plus L2 on the batch's ego embeddings (LightGCN's recipe).

        ``pos``/``neg`` are item indices (not offset by ``n_users``); ``neg`` is ``(B,)``, or ``(B, K)`` for
        K negatives per positive: the K BPR terms and the negatives' L2 are averaged, so K only adds signal
        per graph propagation (what a step costs) without changing the loss's scale. Returns ``(bpr, reg)``.
        """
        neg = neg.reshape(len(users), -1)
        pos_items, neg_items = pos + self.n_users, neg + self.n_users
        u = gather_rows(final, users)
        pos_score = (u * gather_rows(final, pos_items)).sum(1, keepdim=True)
        neg_score = (u.unsqueeze(1) * gather_rows(final, neg_items)).sum(2)
        bpr = nn.functional.softplus(neg_score - pos_score).mean()
        ego = self.embedding.weight
        reg = gather_rows(ego, users).pow(2).sum() + gather_rows(ego, pos_items).pow(2).sum() \
            + gather_rows(ego, neg_items).pow(2).sum() / neg.shape[1]
        return bpr, l2 * reg / (2 * len(users))
