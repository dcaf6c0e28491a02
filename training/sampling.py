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

    def sample(self, users: np.ndarray) -> np.ndarray:
        """One negative item per entry of ``users``; resamples only the collisions."""
        items = self.rng.integers(0, self.n_items, size=len(users))
        todo = np.flatnonzero(self._is_seen(users, items))
        for _ in range(self.max_rounds):
            if len(todo) == 0:
                return items
            items[todo] = self.rng.integers(0, self.n_items, size=len(todo))
            todo = todo[self._is_seen(users[todo], items[todo])]
        raise RuntimeError(f"{len(todo)} users have (almost) no unseen item to sample as a negative")
