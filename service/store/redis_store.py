"""Redis store: shared by every replica; the interaction log is a Redis Stream.

Keys (``{u:<id>}`` is a hash tag, so one user's keys live together on a Redis Cluster slot)::

    gnaq:interactions                      stream of accepted interactions (user, item, ts, received)
    gnaq:{u:<id>}:gen                      the user's generation (INCR per accepted post)
    gnaq:{u:<id>}:items                    set of item ids posted since training
    gnaq:{u:<id>}:codes:<version>          20-digit generation + requantized codes for that version
    gnaq:{u:<id>}:rec:<version>:<gen>:<k>  cached response body (TTL)

A failed or timed-out command opens a short circuit breaker (``retry_seconds``): calls fail fast
with ``StoreUnavailable`` instead of each paying the timeout, then the next call tries again, and
redis-py reconnects by itself once Redis answers.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from service.store.base import Interaction, StoreUnavailable, UserState

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


class RedisStore:
    """``Store`` on Redis (see ``service.store.base`` for the contract)."""

    backend = "redis"

    def __init__(self, url: str, *, timeout: float, retry_seconds: float, codes_ttl: int,
                 prefix: str = "gnaq:") -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                              retry=Retry(NoBackoff(), 1), health_check_interval=30)
        self._retry_seconds, self._codes_ttl, self._prefix = retry_seconds, codes_ttl, prefix
        self._down_until = 0.0
        self._read_cached = self._redis.register_script(_READ_CACHED)
        self._save_codes = self._redis.register_script(_SAVE_CODES)
        self.log_key = f"{prefix}interactions"

    def _user(self, user_id: str) -> str:
        return f"{self._prefix}{{u:{user_id}}}"

    async def _call(self, operation):
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("Redis is unavailable (retrying shortly)")
        try:
            return await operation()
        except _UNAVAILABLE as error:
            self._down_until = time.monotonic() + self._retry_seconds
            raise StoreUnavailable(f"Redis did not answer: {error}") from error

    async def read_cached(self, user_id: str, version: str, k: int) -> tuple[int, bytes | None]:
        user = self._user(user_id)
        reply = await self._call(lambda: self._read_cached(keys=[f"{user}:gen"],
                                                           args=[f"{user}:rec:{version}:", f":{k}"]))
        return int(reply[0]), (reply[1] if len(reply) > 1 else None)

    async def write_cached(self, user_id: str, version: str, k: int, generation: int, body: bytes,
                           ttl: float) -> None:
        key = f"{self._user(user_id)}:rec:{version}:{generation}:{k}"
        await self._call(lambda: self._redis.set(key, body, px=max(1, int(ttl * 1000))))

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
                                                  args=[generation, value, self._codes_ttl]))

    async def record(self, events: list[Interaction]) -> dict[str, UserState]:
        by_user: dict[str, list[str]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event.item_id)

        async def write():
            async with self._redis.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all or nothing
                for e in events:
                    pipe.xadd(self.log_key, {"user": e.user_id, "item": e.item_id, "ts": repr(e.timestamp),
                                             "received": repr(e.received_at)})
                for user_id, items in by_user.items():
                    user = self._user(user_id)
                    pipe.sadd(f"{user}:items", *items).incr(f"{user}:gen").smembers(f"{user}:items")
                return await pipe.execute()

        replies = (await self._call(write))[len(events):]
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
        await self._redis.aclose()
