"""The in-memory form every loader produces and every later stage consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """A user-item interaction set with contiguous 0-based indices.

    ``train`` and ``test`` are ``(n, 2)`` int64 arrays of ``(user, item)`` pairs, deduplicated.
    ``user_ids`` / ``item_ids`` map an index back to the external id (string form); they travel with
    the model so that the service can translate requests.  ``split`` describes how train and test were
    obtained (``"official"``, ``"random-80/20 seed=0"``, ``"temporal-80/20"``), ``warnings`` counts what a
    loader skipped on purpose (documented behaviour), keyed by reason. ``source_fingerprint`` is the fingerprint
    of the dataset as loaded, when these interactions add to it (a retrain's merged data); None: they are it.
    """

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    test: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    split: str
    warnings: dict[str, int] = field(default_factory=dict)
    source_fingerprint: str | None = None

    @property
    def n_interactions(self) -> int:
        return int(len(self.train) + len(self.test))

    @property
    def density(self) -> float:
        return self.n_interactions / float(self.n_users * self.n_items)

    def fingerprint(self) -> str:
        """sha256 over the sizes and both pair arrays: identifies the exact data a model saw."""
        digest = hashlib.sha256()
        digest.update(f"{self.n_users},{self.n_items};".encode())
        for pairs in (self.train, self.test):
            digest.update(np.ascontiguousarray(pairs, dtype=np.int64).tobytes())
            digest.update(b";")
        return digest.hexdigest()


def reindex(pairs: np.ndarray, from_users: list[str], from_items: list[str], to_users: dict[str, int],
            to_items: dict[str, int]) -> np.ndarray:
    """``(user, item)`` index pairs of one id space in another, matched by external id; pairs whose user or item
    the other space lacks are dropped."""
    kept = [(to_users[from_users[u]], to_items[from_items[i]]) for u, i in pairs
            if from_users[u] in to_users and from_items[i] in to_items]
    return np.array(kept, dtype=np.int64).reshape(-1, 2)
