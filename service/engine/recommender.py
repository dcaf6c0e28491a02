"""Recommendations and interactions: the cache-aside read path and the requantizing write path.

Read (``GET /recommend``): one store round trip returns the user's generation and the body cached
under (model version, generation, k). On a miss the user's vector is the trained one, or, once the
user posted interactions, the codes requantized for that generation (recomputed here if missing);
training and posted items are excluded inside the index search. Concurrent misses on one key share
one computation (per process), whose cache write is not waited for. If the store is down the model alone
answers, uncached; a user the model does not know may exist through its posts, which only the store holds,
so it is refused as unavailable (503), not as unknown.

Write (``POST /interactions``): the store logs the events, bumps the users' generations and, for items the
model does not know, their per-version state (under a cap: beyond it nothing is recorded) atomically; each
user's vector is recomputed by the model's propagation rule and requantized node-aware (``model.foldin``) and
stored under the new generation for every replica to use, and each new item is folded in from its users and
served on every replica (``service.engine.catalogue``). A post whose key the store already recorded is replayed:
nothing is logged or requantized again. Items added after training are excluded and served like trained ones,
but do not feed a user's fold-in (their vectors come from the users themselves).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from contracts.interaction_log import Interaction
from model.tables import EmbeddingTable
from service.core.config import Settings
from service.core.metrics import Metrics
from service.engine.catalogue import Catalogue
from service.engine.model import ServedModel
from service.engine.registry import ModelRegistry
from service.store.base import ItemCapReached, NewItems, Post, Store, StoreUnavailable, UserState

_SETTLE_SECONDS = 1.0  # a finished computation still answers misses whose cache read raced its write (the
# key holds the generation, so it is exactly the cached answer; 1 s covers reads delayed by a loaded machine)


class UnknownUser(LookupError):
    """The user is neither in the model nor has it posted an interaction with one of its items."""


class UserUnavailable(RuntimeError):
    """The user is not in the model, and the store, which would know whether it posted, does not answer."""


class UnknownItems(LookupError):
    """Some item ids are neither in the served model nor added to it."""

    def __init__(self, item_ids: list[str]) -> None:
        super().__init__(", ".join(item_ids))
        self.item_ids = item_ids


@dataclass(frozen=True)
class UserUpdate:
    """What a post did to one user."""

    user_id: str
    generation: int
    new_user: bool
    interactions: int


@dataclass(frozen=True)
class Accepted:
    """What a post did: the model version that requantized it, per-user updates, whether it was a replay."""

    model_version: str
    users: list[UserUpdate]
    replayed: bool


class Recommender:
    """The service's use cases over the current model and the store."""

    def __init__(self, registry: ModelRegistry, store: Store, settings: Settings, metrics: Metrics) -> None:
        self.registry, self.store, self.settings, self.metrics = registry, store, settings, metrics
        self.catalogue = Catalogue(registry, store, settings, metrics)
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._writes: set[asyncio.Task] = set()  # cache writes in flight (held: the loop keeps weak references)

    # --- read path --------------------------------------------------------------------------------

    async def recommend(self, user_id: str, k: int) -> tuple[bytes, bool]:
        """JSON body of the top ``k`` for ``user_id``, and whether it came from the cache."""
        model = self.registry.model
        use_cache = self.settings.cache_ttl_seconds > 0
        try:
            generation, body = await self.store.read_cached(user_id, model.version, k)
        except StoreUnavailable:
            self.metrics.store_errors.labels("read_cached").inc()
            self.metrics.cache_misses.inc()
            rows, scores = self._search(model, self._without_store(model, user_id), k)
            return self._bodies(model, user_id, rows, scores)[1], False
        if body is not None and use_cache:
            self.metrics.cache_hits.inc()
            return body, True
        self.metrics.cache_misses.inc()
        key = (model.version, user_id, generation, k)
        pending = self._inflight.get(key)
        if pending is not None:  # someone is computing this exact answer: wait for it
            return await asyncio.shield(pending), False
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            body, writing = await self._compute(model, user_id, generation, k)
        except BaseException as error:
            del self._inflight[key]
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else needs to
            raise
        future.set_result(body)
        # Keep the answer until a moment after the cache write landed: a request whose cache read left before
        # then still misses, and must reuse this answer rather than compute it again.
        loop = asyncio.get_running_loop()

        def release(_: object = None) -> None:
            loop.call_later(_SETTLE_SECONDS, self._inflight.pop, key, None)

        if writing is None:
            release()
        else:
            writing.add_done_callback(release)
        return body, False

    async def _compute(self, model: ServedModel, user_id: str, generation: int,
                       k: int) -> tuple[bytes, asyncio.Task | None]:
        """The answer, and the task writing it to the cache (None when caching is off)."""
        if generation == 0:
            vector, exclude = self._trained_only(model, user_id)
        else:
            vector, exclude = await self._posted_user(model, user_id, generation)
        rows, scores = self._search(model, (vector, exclude), k)
        cached, fresh = self._bodies(model, user_id, rows, scores)
        if self.settings.cache_ttl_seconds <= 0:
            return fresh, None
        # Off the response path: the answer does not wait for Redis. Past the store's backlog the write is
        # dropped, so a burst of misses cannot take the connections reads need.
        if self.store.write_backlog is not None and len(self._writes) >= self.store.write_backlog:
            self.metrics.store_errors.labels("write_cached_backlog").inc()
            return fresh, None
        ttl = self.settings.cache_ttl_seconds * random.uniform(1 - self.settings.cache_ttl_jitter, 1)
        task = asyncio.create_task(self._write_cached(user_id, model.version, k, generation, cached, ttl))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return fresh, task

    async def _write_cached(self, user_id: str, version: str, k: int, generation: int, body: bytes,
                            ttl: float) -> None:
        """Best effort: a body that is not cached only costs the next read a recomputation."""
        try:
            await self.store.write_cached(user_id, version, k, generation, body, ttl)
        except StoreUnavailable:
            self.metrics.store_errors.labels("write_cached").inc()

    def _trained_only(self, model: ServedModel, user_id: str,
                      also: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The trained vector; its training items (and ``also``) excluded."""
        row = model.users.get(user_id)
        if row is None:
            raise UnknownUser(user_id)
        trained = model.trained_items(row)
        return model.user_vector(row), trained if also is None else np.union1d(trained, also)

    def _without_store(self, model: ServedModel, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The model alone, when the store cannot say what the user posted."""
        if user_id not in model.users:
            raise UserUnavailable(user_id)
        return self._trained_only(model, user_id)

    async def _posted_user(self, model: ServedModel, user_id: str, generation: int) -> tuple[np.ndarray, np.ndarray]:
        """Vector and excluded items of a user who posted interactions (trained or cold-start)."""
        try:
            state, codes = await self.store.load_user(user_id, model.version)
        except StoreUnavailable:
            self.metrics.store_errors.labels("load_user").inc()
            return self._without_store(model, user_id)
        exclude = np.union1d(self._all_items(model, user_id, state), model.added.rows(state.items))
        row = model.users.get(user_id)
        trained = model.trained_items(row) if row is not None else np.empty(0, np.int64)
        if np.setdiff1d(model.item_rows(state.items), trained).size == 0:
            # posted no trained item this model does not already have: nothing to fold in
            return self._trained_only(model, user_id, exclude)
        if codes is not None and codes[0] == state.generation:
            return model.foldin.decode_user(codes[1]).dequantize()[0], exclude
        table = await self._requantize(model, user_id, state)
        return table.dequantize()[0], exclude

    async def _requantize(self, model: ServedModel, user_id: str, state: UserState) -> EmbeddingTable:
        """The user's vector after its posts, stored for its generation (best effort: a failed store only means the
        next read recomputes it). A trained user keeps its trained vector plus its new items (``FoldIn.update``);
        a user the model never saw is folded in from its posted items alone."""
        row, posted = model.users.get(user_id), model.item_rows(state.items)
        if row is None:
            table = model.foldin.user(posted)
        else:
            table = model.foldin.update(model.user_vector(row), model.trained_items(row), posted)
        generation = state.generation
        try:
            await self.store.save_user_codes(user_id, model.version, generation, table.row_bytes())
        except StoreUnavailable:
            self.metrics.store_errors.labels("save_user_codes").inc()
        return table

    @staticmethod
    def _all_items(model: ServedModel, user_id: str, state: UserState) -> np.ndarray:
        row = model.users.get(user_id)
        trained = model.trained_items(row) if row is not None else np.empty(0, np.int64)
        return np.union1d(trained, model.item_rows(state.items))

    def _search(self, model: ServedModel, query: tuple[np.ndarray, np.ndarray], k: int):
        vector, exclude = query
        if len(model.added.dead):  # rows of older generations of added items
            exclude = np.union1d(exclude, model.added.dead)
        started = time.perf_counter()
        rows, scores = model.index.search(vector, k, exclude)
        self.metrics.search.labels(model.index.kind).observe(time.perf_counter() - started)
        return rows, scores

    @staticmethod
    def _bodies(model: ServedModel, user_id: str, rows: np.ndarray, scores: np.ndarray) -> tuple[bytes, bytes]:
        """The JSON body as cached and as answered now: serialised once, the ``cached`` flag spliced in."""
        items = [{"item_id": model.item_id(r), "score": s} for r, s in zip(rows.tolist(), scores.tolist(),
                                                                            strict=True)]
        head = json.dumps({"user_id": user_id, "model_version": model.version, "items": items},
                          separators=(",", ":"))[:-1]
        return f'{head},"cached":true}}'.encode(), f'{head},"cached":false}}'.encode()

    def similar_items(self, item_id: str, k: int) -> tuple[ServedModel, np.ndarray, np.ndarray]:
        """Items with the highest inner product with ``item_id``'s served vector (itself excluded)."""
        model = self.registry.model
        row = model.item_row(item_id)
        if row is None:
            raise UnknownItems([item_id])
        rows, scores = self._search(model, (model.item_vector(row), np.array([row])), k)
        return model, rows, scores

    # --- write path -------------------------------------------------------------------------------

    async def record(self, events: list[Interaction], post: Post) -> Accepted:
        """Log ``events`` once per ``post.key``, requantize their users and fold in the items the model lacks."""
        model = self.registry.model
        unknown = tuple(dict.fromkeys(e.item_id for e in events if e.item_id not in model.items))
        new_items = NewItems(model.version, unknown, self.settings.max_added_items) if unknown else None
        try:
            recorded = await self.store.record(events, post, new_items)
        except StoreUnavailable:
            self.metrics.store_errors.labels("record").inc()
            raise
        except ItemCapReached:
            self.metrics.item_cap_refusals.inc()
            raise
        updates, posted = [], Counter(e.user_id for e in events)
        for item_id, item in recorded.items.items():
            await self.catalogue.fold(model, item_id, item)
        for user_id, state in recorded.states.items():
            if not recorded.replayed and model.item_rows(state.items).size:
                await self._requantize(model, user_id, state)
            updates.append(UserUpdate(user_id, state.generation, user_id not in model.users, posted[user_id]))
        if not recorded.replayed:
            self.metrics.interactions.inc(len(events))
        return Accepted(model.version, updates, recorded.replayed)
