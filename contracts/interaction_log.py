"""The interaction log: what the service records for every accepted interaction and the nightly job consumes.

Two homes, one schema:

* Redis (shared by every replica): the stream ``gnaq:interactions``, one entry per interaction with the fields
  ``user``, ``item``, ``ts`` (event time) and ``received`` (arrival time), epoch seconds as ``repr(float)``.
  The nightly job reads it through the consumer group ``retrain`` and deletes what it acknowledged.
* The embedded store (one machine, no Redis): the table ``interactions`` of ``<state dir>/interactions.sqlite3``,
  read by the nightly job through the cursor table ``retrain_cursor``.
"""

from __future__ import annotations

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
    timestamp REAL NOT NULL, received_at REAL NOT NULL);
"""
SQLITE_INSERT = "INSERT INTO interactions (user_id, item_id, timestamp, received_at) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class Interaction:
    """One accepted interaction as logged: external ids, event time and arrival time (epoch seconds)."""

    user_id: str
    item_id: str
    timestamp: float
    received_at: float

    def stream_fields(self) -> dict[str, str]:
        """The Redis Stream entry's fields."""
        return {"user": self.user_id, "item": self.item_id, "ts": repr(self.timestamp),
                "received": repr(self.received_at)}

    @classmethod
    def from_stream_fields(cls, fields: dict[bytes, bytes]) -> Interaction:
        """Inverse of ``stream_fields`` for the bytes a Redis client returns."""
        return cls(fields[b"user"].decode(), fields[b"item"].decode(), float(fields[b"ts"]),
                   float(fields[b"received"]))

    def sqlite_row(self) -> tuple[str, str, float, float]:
        """The values of ``SQLITE_INSERT``."""
        return self.user_id, self.item_id, self.timestamp, self.received_at


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


def sqlite_path(state_dir: Path) -> Path:
    """The embedded log's file in ``state_dir``."""
    return Path(state_dir) / SQLITE_FILE
