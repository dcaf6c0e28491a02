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
* Items the served model does not know (``NewItems``) are *added* under that model version: ``record`` keeps, per
  version, the set of added items (refusing the whole post with ``ItemCapReached`` if it would exceed the cap), each
  added item's users and its generation (bumped once per post naming it), all in the same atomic step. The item's
  requantized row is saved under its generation (``save_item_codes``, newest wins) and announced to every replica
  (``watch_items``); ``load_added_items`` is the catch-up read. A version's item state is dropped once no replica
  serves it (``retire_items``).
* ``StoreUnavailable`` means the backing store did not answer in time; reads then degrade to the
  model alone, writes are refused (nothing accepted is ever lost). Its ``sent`` says whether the call may
  have reached the store: if it did, a write's outcome is unknown.
"""

from __future__ import annotations

from collections.abc import Callable
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


class ItemCapReached(RuntimeError):
    """Recording the post would add more items to the served version than ``NewItems.cap``; nothing was recorded."""

    def __init__(self, added: int, new: int, cap: int) -> None:
        super().__init__(f"{added} items were added since the model was trained, this post adds {new} more, "
                         f"the cap is {cap}")
        self.added, self.new, self.cap = added, new, cap


@dataclass(frozen=True)
class NewItems:
    """Item ids of a post that model ``version`` does not know, and the most items that may be added to it."""

    version: str
    ids: tuple[str, ...]
    cap: int


@dataclass(frozen=True)
class ItemState:
    """An added item's generation (posts that named it) and the users who interacted with it."""

    generation: int
    users: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class AddedItem:
    """An added item as the catch-up read returns it: its generation and its saved row (generation, payload)."""

    generation: int
    codes: tuple[int, bytes] | None


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
    items: dict[str, ItemState] = field(default_factory=dict)

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
    # Background cache writes the store takes in flight before the recommender drops more (None: no bound).
    write_backlog: int | None

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

    async def record(self, events: list[Interaction], post: Post, new_items: NewItems | None = None) -> Recorded:
        """Durably log ``events`` and update each user's state (and ``new_items``' state) atomically, once per
        ``post.key``; ``ItemCapReached`` (nothing recorded) if the new items would pass their cap."""
        ...

    async def save_item_codes(self, version: str, item_id: str, generation: int, payload: bytes) -> None:
        """Store an added item's row computed at ``generation`` (never replacing a newer one) and announce it."""
        ...

    async def load_added_items(self, version: str) -> dict[str, AddedItem]:
        """Every item added to ``version``: the catch-up read of a replica that starts or reconnects."""
        ...

    async def item_users(self, version: str, item_id: str) -> ItemState:
        """An added item's generation and users (to recompute a row whose save was lost)."""
        ...

    async def carry_items(self, old: str, new: str, item_ids: list[str]) -> None:
        """Add ``item_ids``' users under ``old`` to their state under ``new`` and bump their generations there:
        items the new model was not trained with (first posted while it was being trained) stay added."""
        ...

    async def retire_items(self, version: str) -> None:
        """``version`` is no longer served here: its item state may go (after a grace for replicas still on it)."""
        ...

    def watch_items(self, on_saved: Callable[[str, str, int, bytes, float], None],
                    on_resync: Callable[[], None]) -> None:
        """Call ``on_saved(version, item, generation, payload, saved_at)`` for every row saved by any replica, and
        ``on_resync()`` whenever announcements may have been missed (subscribed, re-subscribed, or no channel)."""
        ...

    async def ping(self) -> bool:
        """True when the backing store answers now (ignores any back-off)."""
        ...

    async def close(self) -> None:
        ...
