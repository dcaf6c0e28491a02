"""Redis store: shared by every replica; the interaction log is a Redis Stream.

Keys (``{u:<id>}`` is a hash tag, so one user's keys live together on a Redis Cluster slot)::

    gnaq:interactions                      the interaction log (contracts.interaction_log)
    gnaq:{u:<id>}:gen                      the user's generation (INCR per accepted post)
    gnaq:{u:<id>}:items                    set of item ids posted since training
    gnaq:{u:<id>}:codes:<version>          20-digit generation + requantized codes for that version
    gnaq:{u:<id>}:rec:<version>:<gen>:<k>  cached response body (TTL)

A failed or timed-out command opens a short circuit breaker (``retry_seconds``): calls fail fast
with ``StoreUnavailable`` instead of each paying the timeout, then the next call tries again, and
redis-py reconnects by itself once Redis answers.

Near cache: a cache hit through Redis costs a round trip and ~150 us of client CPU, more than the
whole HTTP stack, so each replica also keeps the bodies it read or wrote in process memory, keyed
like the Redis ones (version, generation, k). It is only trusted while this replica is subscribed
to ``gnaq:invalidate``, on which every accepted post publishes its users (inside the same MULTI). A
message drops that user's local entries; a lost subscription drops them all until it is back; a read
that raced with a message is not stored (per-user invalidation epochs). The replica that accepts a
post drops its own entries before answering, so the next read on it reflects the post; others follow
within the pub/sub delivery time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from contracts.interaction_log import KEY_PREFIX, STREAM, Interaction
from service.store.base import StoreUnavailable, UserState

log = logging.getLogger(__name__)
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_GEN_DIGITS = 20

# One round trip for the hot path: the user's generation, then the body cached under it.
_READ_CACHED = """
local gen = redis.call('GET', KEYS[1]) or '0'
return {gen, redis.call('GET', ARGV[1] .. gen .. ARGV[2])}
"""
# Keep the codes of the newest generation when two writers race.
_SAVE_CODES = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(string.sub(current, 1, 20)) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class NearCache:
    """Per-process copy of cached bodies, valid only while invalidations are being received."""

    def __init__(self, capacity: int) -> None:
        self._entries: OrderedDict[str, dict[tuple[str, int], tuple[int, float, bytes]]] = OrderedDict()
        self._epochs: dict[str, int] = {}
        self._capacity, self.live = capacity, False

    def epoch(self, user_id: str) -> int:
        return self._epochs.get(user_id, 0)

    def get(self, user_id: str, version: str, k: int) -> tuple[int, bytes] | None:
        if not self.live:
            return None
        entry = self._entries.get(user_id, {}).get((version, k))
        if entry is None or entry[1] < time.monotonic():
            return None
        self._entries.move_to_end(user_id)
        return entry[0], entry[2]

    def put(self, user_id: str, version: str, k: int, generation: int, body: bytes, ttl: float, epoch: int) -> None:
        """Store unless ``user_id`` was invalidated since ``epoch`` was read (the read may be stale)."""
        if not self.live or self._epochs.get(user_id, 0) != epoch:
            return
        self._entries.setdefault(user_id, {})[(version, k)] = (generation, time.monotonic() + ttl, body)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def invalidate(self, user_id: str) -> None:
        self._epochs[user_id] = self._epochs.get(user_id, 0) + 1
        self._entries.pop(user_id, None)

    def reset(self, live: bool) -> None:
        """Forget everything (subscription lost or re-established)."""
        self._entries.clear()
        self._epochs = {user: epoch + 1 for user, epoch in self._epochs.items()}
        self.live = live


class RedisStore:
    """``Store`` on Redis (see ``service.store.base`` for the contract)."""

    backend = "redis"

    def __init__(self, url: str, *, timeout: float, retry_seconds: float, codes_ttl: int,
                 write_timeout: float = 5.0, near_ttl: float = 60.0, near_capacity: int = 100_000) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                              retry=Retry(NoBackoff(), 1), health_check_interval=30)
        # Recording interactions may wait longer than a read: a timed-out MULTI may still have committed,
        # and the client's retry would then log the interactions twice. No automatic retry here either.
        self._writer = aioredis.Redis.from_url(url, socket_timeout=max(timeout, write_timeout),
                                               socket_connect_timeout=timeout, health_check_interval=30)
        self._retry_seconds, self._codes_ttl = retry_seconds, codes_ttl
        self._near_ttl = near_ttl  # for bodies read from Redis, whose remaining TTL is not fetched
        self._down_until = 0.0
        self._read_cached = self._redis.register_script(_READ_CACHED)
        self._save_codes = self._redis.register_script(_SAVE_CODES)
        self.channel = f"{KEY_PREFIX}invalidate"
        self.near = NearCache(near_capacity)
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        """Start listening for invalidations (the near cache stays off until subscribed)."""
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.near.reset(live=True)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        for user_id in message["data"].decode().split("\n"):
                            self.near.invalidate(user_id)
            except _UNAVAILABLE as error:
                if self.near.live:
                    log.warning("invalidation channel lost (%s): near cache off until resubscribed", error)
                self.near.reset(live=False)
                await asyncio.sleep(self._retry_seconds or 0.5)
            finally:
                self.near.reset(live=False)
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()

    def _user(self, user_id: str) -> str:
        return f"{KEY_PREFIX}{{u:{user_id}}}"

    async def _call(self, operation):
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("Redis is unavailable (retrying shortly)")
        try:
            return await operation()
        except _UNAVAILABLE as error:
            self._down_until = time.monotonic() + self._retry_seconds
            raise StoreUnavailable(f"Redis did not answer: {error}") from error

    async def read_cached(self, user_id: str, version: str, k: int) -> tuple[int, bytes | None]:
        near = self.near.get(user_id, version, k)
        if near is not None:
            return near
        epoch, user = self.near.epoch(user_id), self._user(user_id)
        reply = await self._call(lambda: self._read_cached(keys=[f"{user}:gen"],
                                                           args=[f"{user}:rec:{version}:", f":{k}"]))
        generation, body = int(reply[0]), (reply[1] if len(reply) > 1 else None)
        if body is not None:
            self.near.put(user_id, version, k, generation, body, self._near_ttl, epoch)
        return generation, body

    async def write_cached(self, user_id: str, version: str, k: int, generation: int, body: bytes,
                           ttl: float) -> None:
        epoch, key = self.near.epoch(user_id), f"{self._user(user_id)}:rec:{version}:{generation}:{k}"
        await self._call(lambda: self._redis.set(key, body, px=max(1, int(ttl * 1000))))
        self.near.put(user_id, version, k, generation, body, ttl, epoch)

    async def load_user(self, user_id: str, version: str) -> tuple[UserState, tuple[int, bytes] | None]:
        user = self._user(user_id)

        async def fetch():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(f"{user}:gen").smembers(f"{user}:items").get(f"{user}:codes:{version}")
                return await pipe.execute()

        generation, items, codes = await self._call(fetch)
        state = UserState(int(generation or 0), frozenset(i.decode() for i in items))
        if codes is None:
            return state, None
        return state, (int(codes[:_GEN_DIGITS]), bytes(codes[_GEN_DIGITS:]))

    async def save_user_codes(self, user_id: str, version: str, generation: int, payload: bytes) -> None:
        value = f"{generation:0{_GEN_DIGITS}d}".encode() + payload
        await self._call(lambda: self._save_codes(keys=[f"{self._user(user_id)}:codes:{version}"],
                                                  args=[generation, value, self._codes_ttl],
                                                  client=self._writer))

    async def record(self, events: list[Interaction]) -> dict[str, UserState]:
        by_user: dict[str, list[str]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event.item_id)

        async def write():
            async with self._writer.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all or nothing
                for e in events:
                    pipe.xadd(STREAM, e.stream_fields())
                for user_id, items in by_user.items():
                    user = self._user(user_id)
                    pipe.sadd(f"{user}:items", *items).incr(f"{user}:gen").smembers(f"{user}:items")
                pipe.publish(self.channel, "\n".join(by_user))
                return await pipe.execute()

        try:
            replies = (await self._call(write))[len(events):]
        finally:  # whether or not it committed, this replica's copies may now be stale
            for user_id in by_user:
                self.near.invalidate(user_id)
        return {user_id: UserState(int(replies[3 * n + 1]), frozenset(i.decode() for i in replies[3 * n + 2]))
                for n, user_id in enumerate(by_user)}

    async def ping(self) -> bool:
        try:
            await self._redis.ping()
        except _UNAVAILABLE:
            return False
        self._down_until = 0.0
        return True

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()
        await self._writer.aclose()
