"""Ranking distillation from the fp32 warm start into a quantized model (a second loss term).

The fp32 LightGCN is the teacher: it ranks every item for every user better than any 2-bit model has
learnt to from BPR alone, and its full ranking carries what the training pairs do not (how much the
user would like each unseen item). The quantized student matches it listwise: for a sample of the
batch's users, the softmax over **all** items of the student's served scores is pulled towards the
teacher's (KL(teacher || student), Hinton et al. 2015, scaled by ``temperature**2``).

Optionally the user's own training items are left out of both softmaxes (``exclude``): serving masks
them, and with them in, much of the teacher's probability mass (40% on MovieLens-1M) sits on items whose
order is never shown.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.lightgcn import gather_rows

_EXCLUDED = -1e9  # logit of an excluded item in both softmaxes: zero probability, zero KL contribution


class ListwiseDistillation:
    """``weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` over all items, averaged over users.

    ``teacher``: the fp32 final embeddings ``(n_users + n_items, d)``, users first (fixed).
    ``users_per_step``: how many of the batch's users (taken from its front; batches are shuffled)
    are distilled per step; the cost is ``users_per_step x n_items`` scores for teacher and student.
    ``exclude``: optional ``(user, item)`` pairs, ``(P, 2)``, left out of each user's softmax (the
    training items, which ranking masks).
    """

    def __init__(self, teacher: Tensor, n_users: int, *, weight: float, temperature: float = 1.0,
                 users_per_step: int = 1024, exclude: Tensor | None = None) -> None:
        if weight <= 0 or temperature <= 0 or users_per_step < 1:
            raise ValueError("weight and temperature must be positive and users_per_step at least 1")
        self.teacher, self.n_users = teacher.detach(), n_users
        self.weight, self.temperature, self.users_per_step = weight, temperature, users_per_step
        self.excluded = None if exclude is None else _rows(exclude, n_users, teacher.device)

    def _excluded_cells(self, users: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(row, item)`` index of every excluded item of ``users`` in a ``(len(users), n_items)`` score matrix."""
        if self.excluded is None:
            return None
        indptr, items = self.excluded
        starts, counts = indptr[users], indptr[users + 1] - indptr[users]
        row = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)  # each cell's user's first cell
        within = torch.arange(len(row), device=users.device) - first
        return row, items[starts[row] + within]

    def __call__(self, final: Tensor, users: Tensor) -> Tensor:
        """The loss term for the student's served embeddings ``final`` and the batch's ``users``."""
        chosen = users[: self.users_per_step]
        t = self.temperature
        cells = self._excluded_cells(chosen)  # built once, applied to both score matrices

        def log_softmax(embeddings: Tensor) -> Tensor:
            logits = gather_rows(embeddings, chosen) @ embeddings[self.n_users:].T / t
            if cells is not None:
                logits = logits.index_put(cells, torch.tensor(_EXCLUDED, device=logits.device))
            return torch.log_softmax(logits, dim=1)

        with torch.no_grad():
            target = log_softmax(self.teacher)
        student = log_softmax(final)
        kl = (target.exp() * (target - student)).sum(dim=1).mean()
        return self.weight * t * t * kl

def _rows(pairs: Tensor, n_users: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(indptr, items)``: the pairs grouped by user, CSR-style, for gathering a batch's items."""
    pairs = pairs.to(device=device, dtype=torch.long)
    order = torch.argsort(pairs[:, 0], stable=True)
    counts = torch.bincount(pairs[:, 0], minlength=n_users)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long, device=device), counts.cumsum(0)])
    return indptr, pairs[order, 1]
