"""What the service keeps outside the model: the interaction log, per-user state, cached results.

Two implementations with the same contract: Redis (shared by every replica, ``REDIS_URL``) and an
embedded one (SQLite file + process memory) so a single machine runs without Redis.

Contract:
* ``record`` appends every event to the durable interaction log (``contracts.interaction_log``, what the
  nightly retrain reads),
  adds the items to each user's set of items posted since training and bumps the user's
  *generation*, all or nothing; it returns each user's new state. It is idempotent per ``Post.key``: while
  the store remembers the key (``Post.ttl``), recording it again changes nothing and replays the first
  outcome (the generations it produced), so a retry after a lost reply is safe, for the client as for the
  Redis client's own reconnect-and-retry.
* A user's generation names the state its cached results and requantized codes were computed from:
  both are stored under (model version, generation), so neither a model swap nor a new
  interaction can serve stale results.
* ``StoreUnavailable`` means the backing store did not answer in time; reads then degrade to the
  model alone, writes are refused (nothing accepted is ever lost). Its ``sent`` says whether the call may
  have reached the store: if it did, a write's outcome is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from contracts.interaction_log import Interaction


class StoreUnavailable(RuntimeError):
    """The backing store (Redis) is down, slow or restarting.

    ``sent``: the call may have reached the store (it failed on the way back, or timed out), so a write may
    have been applied; False when it was never attempted (the store is known to be down).
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class KeyReused(ValueError):
    """A post's key was already recorded for different content."""


@dataclass(frozen=True)
class Post:
    """What makes ``record`` idempotent: the post's key, a digest of its content, how long the key is kept."""

    key: str
    fingerprint: str
    ttl: float


@dataclass(frozen=True)
class UserState:
    """A user's generation (0: never posted) and the item ids it posted since the model was trained."""

    generation: int = 0
    items: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Recorded:
    """What ``record`` did: each user's new state, or (``replayed``) the generations an earlier identical post
    produced, with no items (nothing changed now)."""

    states: dict[str, UserState]
    replayed: bool = False

    def outcome(self, post: Post) -> str:
        """The value a store keeps under the post's key: its fingerprint, then the generations in user order."""
        return f"{post.fingerprint}:" + ",".join(str(s.generation) for s in self.states.values())

    @classmethod
    def replay(cls, post: Post, outcome: str, users: list[str]) -> Recorded:
        """The outcome kept for ``post.key``; ``KeyReused`` if it was recorded for other content."""
        fingerprint, _, generations = outcome.partition(":")
        if fingerprint != post.fingerprint:
            raise KeyReused(post.key)
        return cls({u: UserState(int(g)) for u, g in zip(users, generations.split(","), strict=True)}, True)


class Store(Protocol):
    """Storage used by the recommender; every method may raise ``StoreUnavailable``."""

    backend: str

    async def start(self) -> None:
        """Background work the store needs while the app runs (called once the event loop runs)."""
        ...

    async def read_cached(self, user_id: str, version: str, k: int) -> tuple[int, bytes | None]:
        """``(generation, cached body or None)`` in one round trip."""
        ...

    async def write_cached(self, user_id: str, version: str, k: int, generation: int, body: bytes,
                           ttl: float) -> None:
        """Cache ``body`` for ``ttl`` seconds under the user's generation."""
        ...

    async def load_user(self, user_id: str, version: str) -> tuple[UserState, tuple[int, bytes] | None]:
        """The user's state and its stored codes for ``version`` as ``(generation, payload)``."""
        ...

    async def save_user_codes(self, user_id: str, version: str, generation: int, payload: bytes) -> None:
        """Store requantized codes computed at ``generation`` (never replacing newer ones)."""
        ...

    async def record(self, events: list[Interaction], post: Post) -> Recorded:
        """Durably log ``events`` and update each user's state atomically, once per ``post.key``."""
        ...

    async def ping(self) -> bool:
        """True when the backing store answers now (ignores any back-off)."""
        ...

    async def close(self) -> None:
        ...
