"""Ranking distillation from the fp32 warm start into a quantized model (a second loss term).

The fp32 LightGCN is the teacher: it ranks every item for every user better than any 2-bit model has
learnt to from BPR alone, and its full ranking carries what the training pairs do not (how much the
user would like each unseen item). The quantized student matches it listwise: for a sample of the
batch's users, the softmax over **all** items of the student's served scores is pulled towards the
teacher's (KL(teacher || student), Hinton et al. 2015, scaled by ``temperature**2``).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ListwiseDistillation:
    """``weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` over all items, averaged over users.

    ``teacher``: the fp32 final embeddings ``(n_users + n_items, d)``, users first (fixed).
    ``users_per_step``: how many of the batch's users (taken from its front; batches are shuffled)
    are distilled per step; the cost is ``users_per_step x n_items`` scores for teacher and student.
    """

    def __init__(self, teacher: Tensor, n_users: int, *, weight: float, temperature: float = 1.0,
                 users_per_step: int = 1024) -> None:
        if weight <= 0 or temperature <= 0 or users_per_step < 1:
            raise ValueError("weight and temperature must be positive and users_per_step at least 1")
        self.teacher, self.n_users = teacher.detach(), n_users
        self.weight, self.temperature, self.users_per_step = weight, temperature, users_per_step

    def __call__(self, final: Tensor, users: Tensor) -> Tensor:
        """The loss term for the student's served embeddings ``final`` and the batch's ``users``."""
        chosen = users[: self.users_per_step]
        t = self.temperature
        with torch.no_grad():
            target = torch.log_softmax(self.teacher[chosen] @ self.teacher[self.n_users:].T / t, dim=1)
        student = torch.log_softmax(final[chosen] @ final[self.n_users:].T / t, dim=1)
        kl = (target.exp() * (target - student)).sum(dim=1).mean()
        return self.weight * t * t * kl
