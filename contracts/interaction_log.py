"""The interaction log: what the service records for every accepted interaction and the nightly job consumes.

Two homes, one schema:

* Redis (shared by every replica): the stream ``gnaq:interactions``, one entry per interaction with the fields
  ``user``, ``item``, ``ts`` (event time), ``received`` (arrival time), epoch seconds as ``repr(float)``, and
  ``event`` (the event id, below). The nightly job reads it through the consumer group ``retrain`` and deletes
  what it acknowledged.
* The embedded store (one machine, no Redis): the table ``interactions`` of ``<state dir>/interactions.sqlite3``,
  read by the nightly job through the cursor table ``retrain_cursor``.

Event ids make a retried post harmless. Every post has a request key (the client's ``Idempotency-Key``, or one
the service makes up), and its n-th interaction is logged with the id ``event_id(request key, n)``. The service
records a key once while it remembers it (a TTL); whatever reaches the log twice all the same (a retry after
that window, or an entry logged before ids existed, which has none) is dropped by the reader through
``first_of_each_event``, so ``gnaq retrain`` counts and trains on every event once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "gnaq:"  # every Redis key of the project starts with it
STREAM = f"{KEY_PREFIX}interactions"
RETRAIN_GROUP = "retrain"
RETRAIN_CONSUMER = "retrain"  # one fixed name: a new run inherits what a dead run left pending

SQLITE_FILE = "interactions.sqlite3"
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
    timestamp REAL NOT NULL, received_at REAL NOT NULL, event_id TEXT);
"""
SQLITE_INSERT = ("INSERT INTO interactions (user_id, item_id, timestamp, received_at, event_id) "
                 "VALUES (?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class Interaction:
    """One accepted interaction as logged: external ids, event time and arrival time (epoch seconds), event id."""

    user_id: str
    item_id: str
    timestamp: float
    received_at: float
    event_id: str = ""  # empty only for entries logged before event ids existed

    def stream_fields(self) -> dict[str, str]:
        """The Redis Stream entry's fields."""
        return {"user": self.user_id, "item": self.item_id, "ts": repr(self.timestamp),
                "received": repr(self.received_at), "event": self.event_id}

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes]) -> Interaction:
        """Inverse of ``stream_fields`` for the bytes a Redis client returns."""
        return cls(fields[b"user"].decode(), fields[b"item"].decode(), float(fields[b"ts"]),
                   float(fields[b"received"]), fields.get(b"event", b"").decode())

    def sqlite_row(self) -> tuple[str, str, float, float, str]:
        """The values of ``SQLITE_INSERT``."""
        return self.user_id, self.item_id, self.timestamp, self.received_at, self.event_id


def event_id(request_key: str, index: int) -> str:
    """The id of the ``index``-th interaction of the post identified by ``request_key``."""
    return f"{request_key}#{index}"


@dataclass(frozen=True)
class LoggedInteraction:
    """An interaction read back from the log, with the id the consumer acknowledges it by."""

    log_id: str
    interaction: Interaction

    @property
    def user_id(self) -> str:
        return self.interaction.user_id

    @property
    def item_id(self) -> str:
        return self.interaction.item_id


def first_of_each_event(entries: Iterable[LoggedInteraction]) -> list[LoggedInteraction]:
    """``entries`` in log order without repeats of an event id (entries without an id are all kept)."""
    seen: set[str] = set()
    out = []
    for entry in entries:
        event = entry.interaction.event_id
        if event and event in seen:
            continue
        seen.add(event)
        out.append(entry)
    return out


def sqlite_path(state_dir: Path) -> Path:
    """The embedded log's file in ``state_dir``."""
    return Path(state_dir) / SQLITE_FILE


def create_sqlite_log(db: sqlite3.Connection) -> None:
    """Create the log table, or add ``event_id`` to one written before event ids existed."""
    db.executescript(SQLITE_SCHEMA)
    if "event_id" not in {row[1] for row in db.execute("PRAGMA table_info(interactions)")}:
        db.execute("ALTER TABLE interactions ADD COLUMN event_id TEXT")
