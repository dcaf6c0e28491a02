"""Redis store: shared by every replica; the interaction log is a Redis Stream.

Keys (``{u:<id>}`` is a hash tag, so one user's keys live together on a Redis Cluster slot)::

    gnaq:interactions                      the interaction log (contracts.interaction_log)
    gnaq:post:<key>                        a recorded post's fingerprint and generations (TTL: idempotency)
    gnaq:{u:<id>}:gen                      the user's generation (INCR per accepted post)
    gnaq:{u:<id>}:items                    set of item ids posted since training
    gnaq:{u:<id>}:codes:<version>          20-digit generation + requantized codes for that version
    gnaq:{u:<id>}:rec:<version>:<gen>:<k>  cached response body (TTL)
    gnaq:added:<version>:ids               set of item ids added to that model version (the cap counts it)
    gnaq:added:<version>:gen               hash item id -> generation (posts that named the item)
    gnaq:added:<version>:users:<item>      set of the users who interacted with the added item
    gnaq:added:<version>:codes             hash item id -> 20-digit generation + the item's requantized row

Added items. The recording script checks the cap and updates the item keys with the log, all or nothing. The
replica that accepted the post saves the item's row and publishes it on ``gnaq:items`` (one script: newest
generation wins); every replica applies what it receives, and reads the whole ``codes`` hash (the catch-up) each
time it (re)subscribes, so nothing published while it was away is missed. The item keys are not declared to the
scripts (they hold no hash tag): this layout assumes one Redis (or a primary with replicas), not a Cluster.

Failures. Every command this store sends is idempotent, recording included (one Lua script that does
nothing but replay the kept outcome when the post's key is already there), so a command that meets a dead
pooled connection (Redis restarted) reconnects and is sent once more; idle pooled connections are
health-checked before use. A command that still fails, or times out, is a ``StoreUnavailable``; when it was
essential (a read of user state, recording) it also opens the ``Breaker``, which fails calls fast until a
background probe finds Redis answering again. Best-effort writes (cached bodies, requantized codes) never
open it: losing one only costs a recomputation.

Near cache (``near_cache``): each replica keeps the bodies it read or wrote, trusted only while it is
subscribed to ``gnaq:invalidate``, on which every accepted post publishes its users (inside the recording
script). The replica that accepts a post drops its own entries before answering, so the next read on it
reflects the post; others follow within the pub/sub delivery time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts.interaction_log import KEY_PREFIX, STREAM, Interaction
from service.store.base import (
    AddedItem,
    ItemCapReached,
    ItemState,
    NewItems,
    Post,
    Recorded,
    StoreUnavailable,
    UserState,
)
from service.store.breaker import Breaker
from service.store.near_cache import NearCache

log = logging.getLogger(__name__)
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_GEN_DIGITS = 20
_HEALTH_CHECK_SECONDS = 1  # a pooled connection idle this long is PINGed before its next command

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
# Record a post once. KEYS: the post's key, the stream, then per user its items set and its generation.
# ARGV: fingerprint, key TTL (ms), invalidation channel, the users (newline-separated), stream arguments per
# event, the added-items key prefix, the cap, the number n of new items, the n new item ids, then per event: its
# user's number (from 1), its item, its stream fields. Replies {0, kept outcome} (a replay), {2, added, fresh}
# (the cap: nothing written) or {1, outcome, per user: generation, items, per new item: generation, users}. The
# kept outcome is ``Recorded.outcome``: the fingerprint, a colon, the generations in user order.
_RECORD = """
local kept = redis.call('GET', KEYS[1])
if kept then return {0, kept} end
local prefix, n = ARGV[6], tonumber(ARGV[8])
local new = {}
if n > 0 then
  local added, fresh = redis.call('SCARD', prefix .. 'ids'), 0
  for j = 9, 8 + n do
    new[ARGV[j]] = true
    if redis.call('SISMEMBER', prefix .. 'ids', ARGV[j]) == 0 then fresh = fresh + 1 end
  end
  if fresh > 0 and added + fresh > tonumber(ARGV[7]) then return {2, added, fresh} end
end
local names = {}
for name in string.gmatch(ARGV[4], '[^\\n]+') do names[#names + 1] = name end
local width = tonumber(ARGV[5])
local i = 9 + n
while i <= #ARGV do
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 2, i + 1 + width))
  local user, item = tonumber(ARGV[i]), ARGV[i + 1]
  redis.call('SADD', KEYS[1 + 2 * user], item)
  if new[item] then redis.call('SADD', prefix .. 'users:' .. item, names[user]) end
  i = i + 2 + width
end
local reply, gens = {1, ''}, {}
for u = 1, (#KEYS - 2) / 2 do
  gens[u] = redis.call('INCR', KEYS[2 + 2 * u])
  reply[#reply + 1] = gens[u]
  reply[#reply + 1] = redis.call('SMEMBERS', KEYS[1 + 2 * u])
end
for j = 9, 8 + n do
  redis.call('SADD', prefix .. 'ids', ARGV[j])
  reply[#reply + 1] = redis.call('HINCRBY', prefix .. 'gen', ARGV[j], 1)
  reply[#reply + 1] = redis.call('SMEMBERS', prefix .. 'users:' .. ARGV[j])
end
reply[2] = ARGV[1] .. ':' .. table.concat(gens, ',')
redis.call('SET', KEYS[1], reply[2], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return reply
"""
# Save an added item's row unless a newer generation is there, and announce it. KEYS: the codes hash.
# ARGV: item id, generation, stored value, channel, message.
_SAVE_ITEM = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(string.sub(current, 1, 20)) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""
# Carry items from one version's state to another's. KEYS: the old prefix, the new one. ARGV: the item ids.
_CARRY_ITEMS = """
for _, item in ipairs(ARGV) do
  local users = KEYS[2] .. 'users:' .. item
  redis.call('SUNIONSTORE', users, users, KEYS[1] .. 'users:' .. item)
  redis.call('SADD', KEYS[2] .. 'ids', item)
  redis.call('HINCRBY', KEYS[2] .. 'gen', item, tonumber(redis.call('HGET', KEYS[1] .. 'gen', item) or '1'))
end
return 1
"""
# Let a version's item state expire. KEYS: its key prefix. ARGV: seconds.
_RETIRE_ITEMS = """
for _, item in ipairs(redis.call('SMEMBERS', KEYS[1] .. 'ids')) do
  redis.call('EXPIRE', KEYS[1] .. 'users:' .. item, ARGV[1])
end
for _, name in ipairs({'ids', 'gen', 'codes'}) do redis.call('EXPIRE', KEYS[1] .. name, ARGV[1]) end
return 1
"""
# A retired version's item state stays this long for replicas that still serve it (a rolling swap).
RETIRE_GRACE_SECONDS = 3600


def _pool(url: str, *, timeout: float, connect_timeout: float, retries: int, connections: int) -> aioredis.Redis:
    """A client of at most ``connections`` connections whose commands are sent again (``retries`` times, at
    once) when their connection drops.

    The pool blocks: when every connection is busy a command waits up to ``timeout`` for one. redis-py's default
    pool instead fails at once past its limit ("Too many connections"), which at 64 concurrent clients opened
    the breaker on a healthy Redis. No ``CLIENT SETINFO`` on connect: servers before Redis 7.2 answer it with an
    error that a reconnect under timeouts surfaced as a 500 (seen against 7.0.15)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=connect_timeout, health_check_interval=_HEALTH_CHECK_SECONDS, driver_info=None,
        retry=Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)))
    return aioredis.Redis.from_pool(pool)


class RedisStore:
    """``Store`` on Redis (see ``service.store.base`` for the contract)."""

    backend = "redis"

    def __init__(self, url: str, *, timeout: float, retry_seconds: float, codes_ttl: int,
                 write_timeout: float = 5.0, near_ttl: float = 60.0, near_capacity: int = 100_000,
                 connections: int = 64) -> None:
        self._redis = _pool(url, timeout=timeout, connect_timeout=timeout, retries=1, connections=connections)
        self.write_backlog = connections // 2  # cache writes share the readers' pool: half stays for reads
        # Recording may wait longer than a read, connecting included (a burst of posts opens many connections
        # at once, and on a loaded machine 0.25 s did not always suffice). A timeout is not retried here (the
        # answer may still come): the caller reports the outcome as unknown, and the client's retry with the
        # same key is safe.
        self._writer = _pool(url, timeout=max(timeout, write_timeout), connect_timeout=max(timeout, write_timeout),
                             retries=1, connections=connections)
        # The subscription must see every disconnect (messages sent meanwhile are lost): no silent retry.
        self._events = _pool(url, timeout=timeout, connect_timeout=timeout, retries=0, connections=connections)
        self._retry_seconds, self._codes_ttl = retry_seconds, codes_ttl
        self._near_ttl = near_ttl  # for bodies read from Redis, whose remaining TTL is not fetched
        self._breaker = Breaker(self._redis.ping, retry_seconds, _UNAVAILABLE)
        self._read_cached = self._redis.register_script(_READ_CACHED)
        self._save_codes = self._redis.register_script(_SAVE_CODES)
        self._record = self._writer.register_script(_RECORD)
        self._save_item = self._writer.register_script(_SAVE_ITEM)
        self._retire_items = self._writer.register_script(_RETIRE_ITEMS)
        self._carry_items = self._writer.register_script(_CARRY_ITEMS)
        self.channel = f"{KEY_PREFIX}invalidate"
        self.items_channel = f"{KEY_PREFIX}items"
        self._on_saved: Callable[[str, str, int, bytes, float], None] | None = None
        self._on_resync: Callable[[], None] | None = None
        self.near = NearCache(near_capacity)
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        """Start listening for invalidations (the near cache stays off until subscribed)."""
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            pubsub = self._events.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self.items_channel)
                self.near.reset(live=True)
                if self._on_resync is not None:  # subscribed first: nothing saved from now on can be missed
                    self._on_resync()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["channel"].decode() == self.items_channel:
                        self._item_saved(message["data"])
                        continue
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

    def watch_items(self, on_saved: Callable[[str, str, int, bytes, float], None],
                    on_resync: Callable[[], None]) -> None:
        self._on_saved, self._on_resync = on_saved, on_resync

    def _item_saved(self, data: bytes) -> None:
        """One ``gnaq:items`` message: version, item, generation and save time, newline-separated, then the row."""
        version, item_id, generation, saved_at, payload = data.split(b"\n", 4)
        if self._on_saved is not None:
            self._on_saved(version.decode(), item_id.decode(), int(generation), payload, float(saved_at))

    @staticmethod
    def _added(version: str) -> str:
        return f"{KEY_PREFIX}added:{version}:"

    def _user(self, user_id: str) -> str:
        return f"{KEY_PREFIX}{{u:{user_id}}}"

    async def _call(self, operation, *, essential: bool = True):
        if self._breaker.open:
            raise StoreUnavailable("Redis is not answering (probing it in the background)", sent=False)
        try:
            return await operation()
        except _UNAVAILABLE as error:
            if essential:
                self._breaker.trip(error)
            raise StoreUnavailable(f"Redis did not answer: {error}", sent=True) from error

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
        await self._call(lambda: self._redis.set(key, body, px=max(1, int(ttl * 1000))), essential=False)
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
                                                  client=self._writer), essential=False)

    async def record(self, events: list[Interaction], post: Post, new_items: NewItems | None = None) -> Recorded:
        users = list(dict.fromkeys(e.user_id for e in events))
        number = {user_id: n for n, user_id in enumerate(users, 1)}
        keys = [f"{KEY_PREFIX}post:{post.key}", STREAM]
        for user_id in users:
            keys += [f"{self._user(user_id)}:items", f"{self._user(user_id)}:gen"]
        fields = [list(itertools.chain.from_iterable(e.stream_fields().items())) for e in events]
        args = [post.fingerprint, max(1, int(post.ttl * 1000)), self.channel, "\n".join(users), len(fields[0])]
        items = new_items.ids if new_items else ()
        args += [self._added(new_items.version) if new_items else "", new_items.cap if new_items else 0,
                 len(items), *items]
        for event, stream_fields in zip(events, fields, strict=True):
            args += [number[event.user_id], event.item_id, *stream_fields]
        try:
            reply = await self._call(lambda: self._record(keys=keys, args=args, client=self._writer))
        finally:  # whether or not it committed, this replica's copies may now be stale
            for user_id in users:
                self.near.invalidate(user_id)
        if reply[0] == 0:
            return Recorded.replay(post, reply[1].decode(), users)
        if reply[0] == 2:
            raise ItemCapReached(int(reply[1]), int(reply[2]), new_items.cap)
        states = {user_id: UserState(int(reply[2 + 2 * n]), frozenset(i.decode() for i in reply[3 + 2 * n]))
                  for n, user_id in enumerate(users)}
        first = 2 + 2 * len(users)
        return Recorded(states, items={item_id: ItemState(int(reply[first + 2 * n]),
                                                          frozenset(u.decode() for u in reply[first + 1 + 2 * n]))
                                       for n, item_id in enumerate(items)})

    async def save_item_codes(self, version: str, item_id: str, generation: int, payload: bytes) -> None:
        value = f"{generation:0{_GEN_DIGITS}d}".encode() + payload
        message = f"{version}\n{item_id}\n{generation}\n{time.time()!r}\n".encode() + payload
        await self._call(lambda: self._save_item(keys=[f"{self._added(version)}codes"],
                                                 args=[item_id, generation, value, self.items_channel, message],
                                                 client=self._writer), essential=False)

    async def load_added_items(self, version: str) -> dict[str, AddedItem]:
        prefix = self._added(version)

        async def fetch():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(f"{prefix}gen").hgetall(f"{prefix}codes")
                return await pipe.execute()

        generations, codes = await self._call(fetch)
        saved = {k.decode(): (int(v[:_GEN_DIGITS]), bytes(v[_GEN_DIGITS:])) for k, v in codes.items()}
        return {k.decode(): AddedItem(int(g), saved.get(k.decode())) for k, g in generations.items()}

    async def item_users(self, version: str, item_id: str) -> ItemState:
        prefix = self._added(version)

        async def fetch():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(f"{prefix}gen", item_id).smembers(f"{prefix}users:{item_id}")
                return await pipe.execute()

        generation, users = await self._call(fetch)
        return ItemState(int(generation or 0), frozenset(u.decode() for u in users))

    async def carry_items(self, old: str, new: str, item_ids: list[str]) -> None:
        await self._call(lambda: self._carry_items(keys=[self._added(old), self._added(new)], args=item_ids,
                                                   client=self._writer))

    async def retire_items(self, version: str) -> None:
        await self._call(lambda: self._retire_items(keys=[self._added(version)], args=[RETIRE_GRACE_SECONDS],
                                                    client=self._writer), essential=False)

    async def ping(self) -> bool:
        try:
            await self._redis.ping()
        except _UNAVAILABLE:
            return False
        self._breaker.close()
        return True

    async def close(self) -> None:
        await self._breaker.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for client in (self._redis, self._writer, self._events):
            await client.aclose()
