"""Vectorised uniform negative sampling for BPR."""

from __future__ import annotations

import numpy as np


class NegativeSampler:
    """Draws, for each user, an item the user has not interacted with in training."""

    def __init__(self, train_pairs: np.ndarray, n_items: int, rng: np.random.Generator,
                 max_rounds: int = 100) -> None:
        self.n_items, self.rng, self.max_rounds = n_items, rng, max_rounds
        self._seen = np.unique(train_pairs[:, 0] * n_items + train_pairs[:, 1])

    def _is_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self._seen, keys)
        pos[pos == len(self._seen)] = 0
        return self._seen[pos] == keys

    def sample(self, users: np.ndarray, per_user: int = 1) -> np.ndarray:
        """``(len(users), per_user)`` negatives: items each entry's user has not seen; resamples only collisions."""
        users = np.repeat(users, per_user)
        items = self.rng.integers(0, self.n_items, size=len(users))
        todo = np.flatnonzero(self._is_seen(users, items))
        for _ in range(self.max_rounds):
            if len(todo) == 0:
                break
            items[todo] = self.rng.integers(0, self.n_items, size=len(todo))
            todo = todo[self._is_seen(users[todo], items[todo])]
        if len(todo):
            raise RuntimeError(f"{len(todo)} users have (almost) no unseen item to sample as a negative")
        return items.reshape(-1, per_user)
