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
# The two scratch matrices of a step: the large block's logits (the teacher's, then the student's) and the
# teacher's probabilities over it.
_LOGITS, _TARGETS = 0, 1


class _DistilledKL(torch.autograd.Function):
    """Mean over users of ``KL(p || softmax(student))``, each user's softmax over a small block of their own items
    (``top``, ``(users, t)`` logits, or None) and a large block shared by the step's users, scored here as
    ``user @ items.T + correction`` with the ``masked`` cells left out.

    ``KL = sum p log p - sum p * s + logsumexp(s)`` (``p`` sums to 1 per row) and its gradient is ``softmax(s) - p``:
    written out, the large block is scored into the scratch matrix ``out``, turned into its exponentials in place,
    and into its gradient in place again, instead of the copies autograd's chain through concatenation, masking and
    log_softmax makes of a ``(users, items)`` matrix at each link (most of a distilled step's cost). So ``out`` holds
    the graph's state until the backward, which may run once; a forward that writes over it first makes autograd's
    version check refuse the backward.
    """

    @staticmethod
    def forward(ctx, top: Tensor | None, user: Tensor, items: Tensor, p_top: Tensor | None, p_rest: Tensor,
                entropy: Tensor, correction: float, masked: tuple[Tensor, Tensor] | None, out: Tensor) -> Tensor:
        rest = _rest_logits(out, user, items, correction, masked)
        dot = _total_dot(p_rest, rest)  # before the logits become their exponentials
        shift, _, exp, soft_top, total = _exponentials(rest, top, out=rest)
        if top is not None:
            soft_top /= total
            dot += _total_dot(p_top, top)
        ctx.save_for_backward(exp, total, p_rest, user, items, soft_top, p_top)
        ctx.spent = False
        return (entropy - dot) / len(rest) + (shift + total.log()).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.spent:
            raise RuntimeError("the distillation's backward reuses its scratch matrix and runs once per forward")
        ctx.spent = True
        exp, total, p_rest, user, items, soft_top, p_top = ctx.saved_tensors
        scale = grad.item() / len(exp)
        rest = exp.mul_(scale / total).sub_(p_rest, alpha=scale)  # (softmax - p) * scale, in place
        top = None if soft_top is None else (soft_top - p_top) * scale
        return (top, rest @ items if ctx.needs_input_grad[1] else None,
                rest.T @ user if ctx.needs_input_grad[2] else None, None, None, None, None, None, None)


def _rest_logits(out: Tensor, user: Tensor, items: Tensor, correction: float,
                 masked: tuple[Tensor, Tensor] | None) -> Tensor:
    """``user @ items.T + correction`` written into ``out``, the ``masked`` ``(row, column)`` cells excluded."""
    torch.mm(user, items.T, out=out)
    if correction:
        out.add_(correction)
    if masked is not None:
        out.index_put_(masked, out.new_tensor(_EXCLUDED))
    return out


def _total_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum a * b`` over every cell, without a third matrix of their shape."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _exponentials(logits: Tensor, top: Tensor | None, out: Tensor) -> tuple[Tensor, Tensor | None, Tensor,
                                                                        Tensor | None, Tensor]:
    """A softmax's parts over a row's two blocks (``top`` may be None): each row's largest logit (the shift), ``top``
    less it, both blocks' exponentials after the shift (the large block's written into ``out``, which may be
    ``logits``; ``logits`` is left shifted) and each row's sum of them."""
    shift = logits.amax(dim=1, keepdim=True)
    if top is not None:
        shift = torch.maximum(shift, top.amax(dim=1, keepdim=True))
        top = top - shift
    exp = torch.exp(logits.sub_(shift), out=out)
    total = exp.sum(dim=1, keepdim=True)
    top_exp = None
    if top is not None:
        top_exp = top.exp()
        total += top_exp.sum(dim=1, keepdim=True)
    return shift, top, exp, top_exp, total


@torch.no_grad()
def _soft_targets(top: Tensor | None, logits: Tensor, out: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
    """The teacher's side of the loss for its logits over a row's two blocks (``top`` may be None): the
    probabilities (the large block's written into ``out``; ``logits`` is left shifted) and ``sum p log p`` summed
    over the rows."""
    _, top, p, p_top, total = _exponentials(logits, top, out=out)
    p /= total
    # sum p log p over a row is sum p * (logit - shift) - log(total), p summing to 1
    entropy = _total_dot(p, logits) - total.log().sum()
    if top is not None:
        p_top /= total
        entropy += _total_dot(p_top, top)
    return p_top, p, entropy


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
        self.scratch: dict[int, Tensor] = {}  # _LOGITS and _TARGETS, written in place each step, kept between steps
        self.sampled = softmax_width(self.n_items, candidates) < self.n_items
        self.correction = 0.0
        if self.sampled:
            self.top_count = min(TOP_ITEMS, candidates // 2)
            self.sample_size = candidates - self.top_count
            self.correction = math.log(self.n_items / self.sample_size)
            self.top_items, self.top_logits = self._teacher_top()
            self.top_excluded = self.top_logits <= _EXCLUDED
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

    def _scratch(self, slot: int, rows: int, columns: int, like: Tensor) -> Tensor:
        """A ``(rows, columns)`` matrix of scratch ``slot``, allocated once at the largest size asked: a matrix this
        size allocated anew each step is mapped and zeroed page by page by the operating system each time."""
        held = self.scratch.get(slot)
        if held is None or held.numel() < rows * columns or held.dtype != like.dtype or held.device != like.device:
            held = self.scratch[slot] = torch.empty(rows * columns, dtype=like.dtype, device=like.device)
        return held[: rows * columns].view(rows, columns)

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

    def _user_rows(self, embeddings: Tensor, users: Tensor) -> Tensor:
        """The users' rows over the temperature (applied to the user rows: the smaller side of every score)."""
        return gather_rows(embeddings, users) / self.temperature

    def _teacher_blocks(self) -> Iterator[Tensor]:
        """The teacher's logits for every user over every item, excluded cells masked, ``_SCORING_ROWS`` users at a
        time."""
        items = self.teacher[self.n_users:]
        for start in range(0, self.n_users, _SCORING_ROWS):
            users = torch.arange(start, min(start + _SCORING_ROWS, self.n_users), device=self.teacher.device)
            out = self.teacher.new_empty(len(users), self.n_items)
            yield _rest_logits(out, self._user_rows(self.teacher, users), items, 0.0, self._excluded_cells(users))

    @torch.no_grad()
    def _teacher_top(self) -> tuple[Tensor, Tensor]:
        """Every user's ``top_count`` items of highest teacher score, ``(n_users, top_count)`` int32, and their
        logits (excluded ones at ``_EXCLUDED``: a user with fewer other items). Found once: the teacher is fixed,
        and scoring every item each step would cost what sampling saves."""
        tops = [torch.topk(logits, self.top_count, dim=1) for logits in self._teacher_blocks()]
        return torch.cat([top.indices.int() for top in tops]), torch.cat([top.values for top in tops])

    @torch.no_grad()
    def _teacher_targets(self) -> tuple[Tensor, Tensor]:
        """Every user's teacher probabilities over every item and their ``sum p log p``, found once."""
        chunks = []
        for logits in self._teacher_blocks():  # each block's probabilities written over its logits
            _, _, p, _, total = _exponentials(logits, None, out=logits)
            chunks.append(p.div_(total))
        return torch.cat(chunks), torch.cat([torch.special.xlogy(p, p).sum(dim=1) for p in chunks])

    @torch.no_grad()
    def _exact_targets(self, users: Tensor, cells: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """The teacher's side of the exact softmax for ``users`` (probabilities in the targets scratch, ``sum p log p``
        over the users): kept from the start when it fit, else scored."""
        p = self._scratch(_TARGETS, len(users), self.n_items, self.teacher)
        if self.cached is not None:
            return torch.index_select(self.cached[0], 0, users, out=p), self.cached[1][users].sum()
        logits = _rest_logits(self._scratch(_LOGITS, *p.shape, p), self._user_rows(self.teacher, users),
                              self.teacher[self.n_users:], 0.0, cells)
        return _soft_targets(None, logits, p)[1:]

    def _sample_masked(self, users: Tensor, top_items: Tensor, sample: Tensor) -> tuple[Tensor, Tensor]:
        """``(row, column)`` of the cells of a ``(users, sample)`` matrix left out of each user's softmax: the
        sampled items among the user's top items (already in it) and the excluded ones. Found once a step, for
        teacher and student alike."""
        position = torch.full((self.n_items,), -1, dtype=torch.long, device=sample.device)
        position[sample] = torch.arange(len(sample), device=sample.device)
        rows = torch.arange(len(users), device=sample.device).unsqueeze(1).expand_as(top_items).reshape(-1)
        items = top_items.reshape(-1)
        cells = self._excluded_cells(users)
        if cells is not None:
            rows, items = torch.cat([rows, cells[0]]), torch.cat([items, cells[1]])
        column = position[items]
        return rows[column >= 0], column[column >= 0]

    def _sampled(self, final: Tensor, users: Tensor) -> Tensor:
        """The KL over each user's teacher top items, then the step's sample."""
        sample = torch.randperm(self.n_items, generator=self.generator, device=self.generator.device)
        sample = sample[: self.sample_size].to(final.device)
        top_items = self.top_items[users].long()
        masked = self._sample_masked(users, top_items, sample)
        shape = (len(users), len(sample))
        with torch.no_grad():
            logits = _rest_logits(self._scratch(_LOGITS, *shape, final), self._user_rows(self.teacher, users),
                                  gather_rows(self.teacher, sample + self.n_users), self.correction, masked)
            targets = self._scratch(_TARGETS, *shape, final)
            p_top, p_rest, entropy = _soft_targets(self.top_logits[users], logits, targets)
        # One gather of the student's rows: each gather's backward writes a gradient the size of every node's.
        rows = gather_rows(final, torch.cat([users, sample + self.n_users, top_items.view(-1) + self.n_users]))
        user, items, top_rows = rows.split([len(users), len(sample), top_items.numel()])
        user = user / self.temperature
        top = torch.bmm(top_rows.view(*top_items.shape, -1), user.unsqueeze(2)).squeeze(2)
        return _DistilledKL.apply(top.masked_fill(self.top_excluded[users], _EXCLUDED), user, items, p_top, p_rest,
                                  entropy, self.correction, masked, self._scratch(_LOGITS, *shape, final))

    def __call__(self, final: Tensor, users: Tensor) -> Tensor:
        """The loss term for the student's served embeddings ``final`` and the batch's ``users``."""
        chosen = users[: self.users_per_step]
        if self.sampled:
            kl = self._sampled(final, chosen)
        else:
            cells = self._excluded_cells(chosen)
            p, entropy = self._exact_targets(chosen, cells)
            kl = _DistilledKL.apply(None, self._user_rows(final, chosen), final[self.n_users:], None, p, entropy,
                                    0.0, cells, self._scratch(_LOGITS, *p.shape, p))
        t = self.temperature
        return self.weight * t * t * kl


def softmax_width(n_items: int, candidates: int | None) -> int:
    """Items in each user's distilled softmax: the whole catalogue up to ``candidates`` items (None: always), else
    ``candidates`` (the teacher's top items plus the step's sample). What a step's distillation cost scales with."""
    return n_items if candidates is None else min(n_items, candidates)


def _rows(pairs: Tensor, n_users: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(indptr, items)``: the pairs grouped by user, CSR-style, for gathering a batch's items."""
    pairs = pairs.to(device=device, dtype=torch.long)
    order = torch.argsort(pairs[:, 0], stable=True)
    counts = torch.bincount(pairs[:, 0], minlength=n_users)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long, device=device), counts.cumsum(0)])
    return indptr, pairs[order, 1]
