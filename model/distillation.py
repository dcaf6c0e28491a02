"""Ranking distillation from the fp32 warm start into a quantized model (a second loss term).

The fp32 LightGCN is the teacher: it ranks every item for every user better than any 2-bit model has
learnt to from BPR alone, and its full ranking carries what the training pairs do not (how much the
user would like each unseen item). The quantized student matches it listwise: for a sample of the
batch's users, the softmax over the items of the student's served scores is pulled towards the
teacher's (KL(teacher || student), Hinton et al. 2015, scaled by ``temperature**2``).

Up to ``candidates`` items the softmax is over every item. A larger catalogue makes that the dearest part
of a step (users x items scores for teacher and student: on Gowalla's 41k items, a third of a GNAQ step), so
there each user's softmax is over the teacher's top 64 items, which carry the order that ranking shows and most
of the teacher's probability mass, plus one uniform sample of the other items shared by the step's users, each
sampled item's logit raised by ``log(items / sample)`` so that it stands for the items it was drawn from (the
sampled softmax's correction).

Optionally the user's own training items are left out of both softmaxes (``exclude``): serving masks
them, and with them in, much of the teacher's probability mass (40% on MovieLens-1M) sits on items whose
order is never shown.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from model.lightgcn import gather_rows

_SCORING_ROWS = 1024  # users scored at a time when the teacher's top items or its whole ranking are found
_EXCLUDED = -1e9  # logit of an excluded item in both softmaxes: zero probability, zero KL contribution
# A sampled softmax keeps each user's teacher top items, at most this many (at most half the candidates): on
# Gowalla the fp32 teacher's top 64 items hold 76% of its probability mass (top 512: 88%, at 8x the gather cost).
TOP_ITEMS = 64
# The exact softmax keeps every user's teacher distribution in memory when it takes at most this many bytes
# (MovieLens-1M: 90 MB): the teacher is fixed, so scoring its side again at each step only repeats work.
TEACHER_CACHE_BYTES = 512 * 2**20


class _SoftTargetCrossEntropy(torch.autograd.Function):
    """Mean over rows of ``KL(p || softmax(logits))`` for fixed teacher probabilities ``p``, in one pass each way.

    ``KL = sum p log p - sum p * logits + logsumexp(logits)`` (``p`` sums to 1 per row), and its gradient is
    ``softmax(logits) - p``: written out, instead of autograd's chain through log_softmax, exp and the product, it
    reads the ``(users, items)`` matrices a third as often, which is most of the distillation's cost.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, p: Tensor, entropy: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        ctx.save_for_backward(logits, lse, p)
        return (entropy - (p * logits).sum(dim=1) + lse.squeeze(1)).mean()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, lse, p = ctx.saved_tensors
        student = (logits - lse).exp_()
        return student.sub_(p).mul_(grad / len(p)), None, None


class ListwiseDistillation:
    """``weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` over a user's items, averaged over users.

    ``teacher``: the fp32 final embeddings ``(n_users + n_items, d)``, users first (fixed).
    ``users_per_step``: how many of the batch's users (taken from its front; batches are shuffled)
    are distilled per step; the cost is ``users_per_step x min(n_items, candidates)`` scores for teacher and
    student.
    ``exclude``: optional ``(user, item)`` pairs, ``(P, 2)``, left out of each user's softmax (the
    training items, which ranking masks).
    ``candidates``: items in each user's softmax when the catalogue is larger (None: always every item); the
    sample is drawn each step from a generator seeded with ``seed``.
    """

    def __init__(self, teacher: Tensor, n_users: int, *, weight: float, temperature: float = 1.0,
                 users_per_step: int = 1024, exclude: Tensor | None = None, candidates: int | None = None,
                 seed: int = 0) -> None:
        if weight <= 0 or temperature <= 0 or users_per_step < 1:
            raise ValueError("weight and temperature must be positive and users_per_step at least 1")
        if candidates is not None and candidates < 2:
            raise ValueError(f"candidates must be at least 2, got {candidates}")
        self.teacher, self.n_users = teacher.detach(), n_users
        self.weight, self.temperature, self.users_per_step = weight, temperature, users_per_step
        self.excluded = None if exclude is None else _rows(exclude, n_users, teacher.device)
        self.n_items = len(teacher) - n_users
        self.sampled = softmax_width(self.n_items, candidates) < self.n_items
        if self.sampled:
            self.top_count = min(TOP_ITEMS, candidates // 2)
            self.sample_size = candidates - self.top_count
            self.correction = math.log(self.n_items / self.sample_size)
            self.top_items, self.top_excluded = self._teacher_top()
        self.cached = None
        if not self.sampled and n_users * self.n_items * 4 <= TEACHER_CACHE_BYTES:
            self.cached = self._teacher_targets()
        self.seed = seed
        self._reseed()

    def _reseed(self) -> None:
        if self.sampled:
            self.generator = torch.Generator(device=self.teacher.device).manual_seed(self.seed)

    def restarted(self) -> ListwiseDistillation:
        """A copy that shares the teacher and its top items, its sample sequence back at the seed: what a new
        instance would be, without finding every user's top items again (7 s on Gowalla)."""
        fresh = copy.copy(self)
        fresh._reseed()
        return fresh

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

    def _logits(self, embeddings: Tensor, users: Tensor) -> Tensor:
        """``users`` x every item scores over the temperature (applied to the user rows: the smaller side), excluded
        cells masked."""
        logits = (gather_rows(embeddings, users) / self.temperature) @ embeddings[self.n_users:].T
        cells = self._excluded_cells(users)
        if cells is None:
            return logits
        return logits.index_put(cells, torch.tensor(_EXCLUDED, device=logits.device))

    def _teacher_blocks(self) -> Iterator[Tensor]:
        """The teacher's logits for every user over every item, ``_SCORING_ROWS`` users at a time."""
        for start in range(0, self.n_users, _SCORING_ROWS):
            users = torch.arange(start, min(start + _SCORING_ROWS, self.n_users), device=self.teacher.device)
            yield self._logits(self.teacher, users)

    @torch.no_grad()
    def _teacher_top(self) -> tuple[Tensor, Tensor]:
        """Every user's ``top_count`` items of highest teacher score, ``(n_users, top_count)`` int32, and which of
        them are excluded (a user with fewer other items). Found once: the teacher is fixed, and scoring every
        item each step would cost what sampling saves."""
        tops = [torch.topk(logits, self.top_count, dim=1) for logits in self._teacher_blocks()]
        return torch.cat([top.indices.int() for top in tops]), torch.cat([top.values <= _EXCLUDED for top in tops])

    @torch.no_grad()
    def _teacher_targets(self) -> tuple[Tensor, Tensor]:
        """Every user's teacher probabilities over every item and their ``sum p log p``, found once."""
        chunks = [_targets(logits) for logits in self._teacher_blocks()]
        return torch.cat([p for p, _ in chunks]), torch.cat([e for _, e in chunks])

    @torch.no_grad()
    def _exact_targets(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's side of the exact softmax for ``users``: kept from the start when it fit, else scored."""
        if self.cached is not None:
            return self.cached[0][users], self.cached[1][users]
        return _targets(self._logits(self.teacher, users))

    def _sample_masked(self, users: Tensor, top_items: Tensor, sample: Tensor) -> Tensor:
        """``(users, sample)`` mask of the sampled items left out of each user's softmax: those among the user's
        top items (already in it) and the excluded ones. Built once a step, for teacher and student alike."""
        position = torch.full((self.n_items,), -1, dtype=torch.long, device=sample.device)
        position[sample] = torch.arange(len(sample), device=sample.device)
        rows = torch.arange(len(users), device=sample.device).unsqueeze(1).expand_as(top_items).reshape(-1)
        items = top_items.reshape(-1)
        cells = self._excluded_cells(users)
        if cells is not None:
            rows, items = torch.cat([rows, cells[0]]), torch.cat([items, cells[1]])
        column = position[items]
        masked = torch.zeros(len(users), len(sample), dtype=torch.bool, device=sample.device)
        masked[rows[column >= 0], column[column >= 0]] = True
        return masked

    def _sampled(self, final: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
        """(teacher targets, student logits) over each user's teacher top items, then the step's sample."""
        sample = torch.randperm(self.n_items, generator=self.generator, device=self.generator.device)
        sample = sample[: self.sample_size].to(final.device)
        top_items = self.top_items[users].long()
        masked = self._sample_masked(users, top_items, sample)
        excluded = self.top_excluded[users]

        def logits(embeddings: Tensor) -> Tensor:
            user = gather_rows(embeddings, users) / self.temperature
            top = (user.unsqueeze(1) * gather_rows(embeddings, top_items + self.n_users)).sum(2)
            rest = user @ gather_rows(embeddings, sample + self.n_users).T
            top = top.masked_fill(excluded, _EXCLUDED)
            rest = (rest + self.correction).masked_fill(masked, _EXCLUDED)
            return torch.cat([top, rest], dim=1)

        with torch.no_grad():
            target = _targets(logits(self.teacher))
        return target, logits(final)

    def __call__(self, final: Tensor, users: Tensor) -> Tensor:
        """The loss term for the student's served embeddings ``final`` and the batch's ``users``."""
        chosen = users[: self.users_per_step]
        if self.sampled:
            (p, entropy), student = self._sampled(final, chosen)
        else:
            p, entropy = self._exact_targets(chosen)
            student = self._logits(final, chosen)
        t = self.temperature
        return self.weight * t * t * _SoftTargetCrossEntropy.apply(student, p, entropy)


def softmax_width(n_items: int, candidates: int | None) -> int:
    """Items in each user's distilled softmax: the whole catalogue up to ``candidates`` items (None: always), else
    ``candidates`` (the teacher's top items plus the step's sample). What a step's distillation cost scales with."""
    return n_items if candidates is None else min(n_items, candidates)


def _targets(logits: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's side of the loss for its ``logits``: probabilities and each row's ``sum p log p``."""
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    return p, (p * log_p).sum(dim=1)


def _rows(pairs: Tensor, n_users: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(indptr, items)``: the pairs grouped by user, CSR-style, for gathering a batch's items."""
    pairs = pairs.to(device=device, dtype=torch.long)
    order = torch.argsort(pairs[:, 0], stable=True)
    counts = torch.bincount(pairs[:, 0], minlength=n_users)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long, device=device), counts.cumsum(0)])
    return indptr, pairs[order, 1]
