"""The nightly job's side of the interaction log (``contracts.interaction_log``): claim pending entries, ack after
publishing.

Redis: entries a run claimed through the consumer group stay in the group's pending list until ``ack``; a run
that fails or is killed never acks, and the next run first re-reads what is pending (``XREADGROUP ... 0``), then
what is new (``>``), so nothing is lost and nothing is counted twice. Acknowledged entries are deleted.

Embedded store: the SQLite log with a cursor row, moved forward only by ``ack``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

import redis

from contracts.interaction_log import (
    RETRAIN_CONSUMER,
    RETRAIN_GROUP,
    STREAM,
    Interaction,
    LoggedInteraction,
    create_sqlite_log,
)

_BATCH = 10_000


class InteractionLog(Protocol):
    def pending(self) -> list[LoggedInteraction]:
        """Everything recorded and not yet acknowledged, oldest first."""
        ...

    def ack(self, entries: list[LoggedInteraction]) -> None:
        """Mark ``entries`` as consumed (after the model trained on them is published)."""
        ...


class RedisInteractionLog:
    """The service's Redis Stream, through the retrain consumer group."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=30)
        try:
            self._redis.xgroup_create(STREAM, RETRAIN_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _read(self, start: str) -> list[LoggedInteraction]:
        out: list[LoggedInteraction] = []
        cursor = start
        while True:
            reply = self._redis.xreadgroup(RETRAIN_GROUP, RETRAIN_CONSUMER, {STREAM: cursor}, count=_BATCH)
            entries = reply[0][1] if reply else []
            out.extend(LoggedInteraction(i.decode(), Interaction.from_stream_fields(f)) for i, f in entries if f)
            if len(entries) < _BATCH:
                return out
            if start == "0":  # pending entries: page through them by id
                cursor = entries[-1][0].decode()

    def pending(self) -> list[LoggedInteraction]:
        return self._read("0") + self._read(">")

    def ack(self, entries: list[LoggedInteraction]) -> None:
        ids = [e.log_id for e in entries]
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(STREAM, RETRAIN_GROUP, *chunk).xdel(STREAM, *chunk)
                pipe.execute()


class SqliteInteractionLog:
    """The embedded store's SQLite log, with a cursor of the last acknowledged row."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        create_sqlite_log(self._db)  # the service's table, if it never ran (or predates event ids)
        self._db.execute("CREATE TABLE IF NOT EXISTS retrain_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "last_row INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO retrain_cursor VALUES (1, 0)")

    def pending(self) -> list[LoggedInteraction]:
        (last,) = self._db.execute("SELECT last_row FROM retrain_cursor").fetchone()
        rows = self._db.execute("SELECT id, user_id, item_id, timestamp, received_at, event_id FROM interactions "
                                "WHERE id > ? ORDER BY id", (last,))
        return [LoggedInteraction(str(i), Interaction(u, v, t, r, e or "")) for i, u, v, t, r, e in rows]

    def ack(self, entries: list[LoggedInteraction]) -> None:
        if entries:
            last = max(int(e.log_id) for e in entries)
            self._db.execute("UPDATE retrain_cursor SET last_row = MAX(last_row, ?) WHERE id = 1", (last,))
