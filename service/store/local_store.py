"""Embedded store for one machine without Redis: SQLite for what must survive, memory for the rest.

The interaction log (``contracts.interaction_log``), the generations, the posted items and the keys of recent
posts (for idempotent retries) live in a SQLite file (WAL, synchronous FULL: a committed post survives a
crash), shared safely by several worker processes on the machine.
Cached bodies and requantized user codes are process memory (bounded LRU), keyed like the Redis ones by
(version, generation), so they can never be served stale; losing them only costs recomputation. Added items
(their users, generations and rows) are in the SQLite file too: a restarted process rebuilds them from it, and
other worker processes on the machine pick them up at their periodic catch-up read (there is no channel).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from contracts.interaction_log import SQLITE_INSERT, Interaction, create_sqlite_log
from service.store.base import AddedItem, ItemCapReached, ItemState, NewItems, Post, Recorded, UserState

_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS user_items (
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, PRIMARY KEY (user_id, item_id));
CREATE TABLE IF NOT EXISTS posts (key TEXT PRIMARY KEY, outcome TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS posts_expiry ON posts (expires_at);
CREATE TABLE IF NOT EXISTS added_items (
    version TEXT NOT NULL, item_id TEXT NOT NULL, generation INTEGER NOT NULL, saved_generation INTEGER,
    payload BLOB, PRIMARY KEY (version, item_id));
CREATE TABLE IF NOT EXISTS added_item_users (
    version TEXT NOT NULL, item_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (version, item_id, user_id));
"""


class _LRU:
    """A bounded mapping with optional expiry per entry."""

    def __init__(self, capacity: int) -> None:
        self._data: OrderedDict[tuple, tuple[float, object]] = OrderedDict()
        self._capacity = capacity

    def get(self, key: tuple) -> object | None:
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        self._data.move_to_end(key)
        return entry[1]

    def put(self, key: tuple, value: object, ttl: float = float("inf")) -> None:
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._capacity:
            self._data.popitem(last=False)


class LocalStore:
    """``Store`` in-process (see ``service.store.base`` for the contract)."""

    backend = "embedded"
    write_backlog = None  # no connections to run out of

    def __init__(self, path: Path, *, capacity: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        create_sqlite_log(self._db)
        self._db.executescript(_STATE_SCHEMA)
        self._lock = threading.Lock()
        self._cache, self._codes = _LRU(capacity), _LRU(capacity)
        self._on_saved: Callable[[str, str, int, bytes, float], None] | None = None

    async def start(self) -> None:
        """Nothing runs in the background: generations are read from SQLite on every request."""

    def _generation(self, user_id: str) -> int:
        row = self._db.execute("SELECT generation FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def _state(self, user_id: str) -> UserState:
        items = self._db.execute("SELECT item_id FROM user_items WHERE user_id = ?", (user_id,)).fetchall()
        return UserState(self._generation(user_id), frozenset(i for (i,) in items))

    async def read_cached(self, user_id: str, version: str, k: int) -> tuple[int, bytes | None]:
        with self._lock:
            generation = self._generation(user_id)
        return generation, self._cache.get((user_id, version, generation, k))

    async def write_cached(self, user_id: str, version: str, k: int, generation: int, body: bytes,
                           ttl: float) -> None:
        self._cache.put((user_id, version, generation, k), body, ttl)

    async def load_user(self, user_id: str, version: str) -> tuple[UserState, tuple[int, bytes] | None]:
        with self._lock:
            state = self._state(user_id)
        return state, self._codes.get((user_id, version))

    async def save_user_codes(self, user_id: str, version: str, generation: int, payload: bytes) -> None:
        current = self._codes.get((user_id, version))
        if current is None or current[0] < generation:
            self._codes.put((user_id, version), (generation, payload))

    def _item_state(self, version: str, item_id: str) -> ItemState:
        row = self._db.execute("SELECT generation FROM added_items WHERE version = ? AND item_id = ?",
                               (version, item_id)).fetchone()
        users = self._db.execute("SELECT user_id FROM added_item_users WHERE version = ? AND item_id = ?",
                                 (version, item_id)).fetchall()
        return ItemState(0 if row is None else int(row[0]), frozenset(u for (u,) in users))

    def _add_items(self, events: list[Interaction], new_items: NewItems) -> dict[str, ItemState]:
        """Inside ``_record``'s transaction: check the cap, then the items' users and generations."""
        version, ids = new_items.version, set(new_items.ids)
        known = {i for (i,) in self._db.execute("SELECT item_id FROM added_items WHERE version = ?", (version,))}
        fresh = len(ids - known)
        if fresh and len(known) + fresh > new_items.cap:
            raise ItemCapReached(len(known), fresh, new_items.cap)
        self._db.executemany("INSERT OR IGNORE INTO added_item_users VALUES (?, ?, ?)",
                             [(version, e.item_id, e.user_id) for e in events if e.item_id in ids])
        self._db.executemany(
            "INSERT INTO added_items (version, item_id, generation) VALUES (?, ?, 1) "
            "ON CONFLICT(version, item_id) DO UPDATE SET generation = generation + 1",
            [(version, i) for i in new_items.ids])
        return {i: self._item_state(version, i) for i in new_items.ids}

    def _record(self, events: list[Interaction], post: Post, new_items: NewItems | None = None) -> Recorded:
        users = list(dict.fromkeys(e.user_id for e in events))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                kept = self._db.execute("SELECT outcome FROM posts WHERE key = ? AND expires_at > ?",
                                        (post.key, now)).fetchone()
                if kept is not None:
                    replayed = Recorded.replay(post, kept[0], users)  # KeyReused: rolled back below
                    self._db.execute("COMMIT")
                    return replayed
                items = self._add_items(events, new_items) if new_items else {}
                self._db.executemany(SQLITE_INSERT, [e.sqlite_row() for e in events])
                self._db.executemany("INSERT OR IGNORE INTO user_items VALUES (?, ?)",
                                     [(e.user_id, e.item_id) for e in events])
                self._db.executemany(
                    "INSERT INTO users VALUES (?, 1) ON CONFLICT(user_id) DO UPDATE SET generation = generation + 1",
                    [(u,) for u in users])
                recorded = Recorded({u: self._state(u) for u in users}, items=items)
                self._db.execute("DELETE FROM posts WHERE expires_at <= ?", (now,))
                self._db.execute("INSERT INTO posts VALUES (?, ?, ?)",
                                 (post.key, recorded.outcome(post), now + post.ttl))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return recorded

    async def record(self, events: list[Interaction], post: Post, new_items: NewItems | None = None) -> Recorded:
        return await asyncio.to_thread(self._record, events, post, new_items)

    async def save_item_codes(self, version: str, item_id: str, generation: int, payload: bytes) -> None:
        with self._lock:
            saved = self._db.execute(
                "UPDATE added_items SET saved_generation = ?, payload = ? WHERE version = ? AND item_id = ? "
                "AND (saved_generation IS NULL OR saved_generation < ?)",
                (generation, payload, version, item_id, generation)).rowcount
        if saved and self._on_saved is not None:
            self._on_saved(version, item_id, generation, payload, time.time())

    async def load_added_items(self, version: str) -> dict[str, AddedItem]:
        with self._lock:
            rows = self._db.execute("SELECT item_id, generation, saved_generation, payload FROM added_items "
                                    "WHERE version = ?", (version,)).fetchall()
        return {i: AddedItem(g, None if s is None else (int(s), bytes(p))) for i, g, s, p in rows}

    async def item_users(self, version: str, item_id: str) -> ItemState:
        with self._lock:
            return self._item_state(version, item_id)

    async def carry_items(self, old: str, new: str, item_ids: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item_id in item_ids:
                    self._db.execute("INSERT OR IGNORE INTO added_item_users SELECT ?, item_id, user_id FROM "
                                     "added_item_users WHERE version = ? AND item_id = ?", (new, old, item_id))
                    self._db.execute(
                        "INSERT INTO added_items (version, item_id, generation) SELECT ?, item_id, generation "
                        "FROM added_items WHERE version = ? AND item_id = ? ON CONFLICT(version, item_id) "
                        "DO UPDATE SET generation = generation + excluded.generation", (new, old, item_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def retire_items(self, version: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM added_item_users WHERE version = ?", (version,))
            self._db.execute("DELETE FROM added_items WHERE version = ?", (version,))
            self._db.execute("COMMIT")

    def watch_items(self, on_saved: Callable[[str, str, int, bytes, float], None],
                    on_resync: Callable[[], None]) -> None:
        """Rows saved by this process are applied at once; other processes' at the periodic catch-up read."""
        self._on_saved = on_saved

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        with self._lock:
            self._db.close()
