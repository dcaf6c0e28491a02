"""New items on every replica: fold in after a post, announce, apply what others announce, catch up.

The replica that accepts a post naming an item the served model does not know folds the item in from the users
who interacted with it (``model.item_foldin``; users the model was trained with: a user known only from its
posts has no vector of its own to give), serves the row at once and saves it under the item's generation; the
store announces it and every other replica appends it to its own index. Announcements can be missed (a replica
starting, a dropped subscription) and a save can be lost (the store failing after the post was recorded), so each
replica also reads every added item back (``sync``): when it (re)subscribes, after each model swap and every
``GNAQ_ITEM_SYNC_SECONDS``; a row older than its item's generation is recomputed there. After a swap, the old
version's added items that the new model was trained with are dropped (the retrain has their interactions: nothing
is counted twice), those it lacks (first posted while it was being trained) are carried over to the new version,
and the old version's item state is retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.core.config import Settings
from service.core.metrics import Metrics
from service.engine.model import ServedModel
from service.engine.registry import ModelRegistry
from service.store.base import ItemState, Store, StoreUnavailable

log = logging.getLogger(__name__)


class Catalogue:
    """Keeps each served model's added items in step with the store."""

    def __init__(self, registry: ModelRegistry, store: Store, settings: Settings, metrics: Metrics) -> None:
        self.registry, self.store, self.settings, self.metrics = registry, store, settings, metrics
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        store.watch_items(self._announced, self._resync)
        registry.on_swap.append(self._swapped)

    def start(self) -> None:
        """The periodic catch-up (the event loop runs)."""
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        for task in [self._poller, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _current(self) -> ServedModel | None:
        return self.registry.current

    async def fold(self, model: ServedModel, item_id: str, state: ItemState) -> bool:
        """Fold ``item_id`` in from ``state``'s users, serve it here and save it for the others; False if none of
        its users is in the model (it waits for one, or for the retrain)."""
        users = [model.users[u] for u in state.users if u in model.users]
        if not users or state.generation <= model.added.generation(item_id):
            return False
        started = time.perf_counter()
        row = model.item_foldin.item(users)
        self.metrics.item_foldin.observe(time.perf_counter() - started)
        self._apply(model, item_id, state.generation, row)
        try:
            await self.store.save_item_codes(model.version, item_id, state.generation, row.row_bytes())
        except StoreUnavailable:  # the others recompute it at their next catch-up
            self.metrics.store_errors.labels("save_item_codes").inc()
        return True

    def _apply(self, model: ServedModel, item_id: str, generation: int, row) -> bool:
        applied = model.added.apply(item_id, generation, row)
        if applied and model is self._current():
            self.metrics.items_added.set(len(model.added))
        return applied

    def _announced(self, version: str, item_id: str, generation: int, payload: bytes, saved_at: float) -> None:
        model = self._current()
        if model is None or model.version != version:
            return  # another version's item (a replica mid-swap): this one's catch-up covers its own version
        if self._apply(model, item_id, generation, model.item_foldin.decode(payload)):
            self.metrics.item_sync_delay.observe(max(0.0, time.time() - saved_at))

    def _resync(self) -> None:
        model = self._current()
        if model is not None:
            self._spawn(self.sync(model))

    def _swapped(self, previous: ServedModel | None, model: ServedModel) -> None:
        self.metrics.items_added.set(len(model.added))
        if previous is None or previous.version == model.version:
            self._spawn(self.sync(model))
        else:
            self._spawn(self._succeed(previous.version, model))

    async def _succeed(self, old: str, model: ServedModel) -> None:
        """After a swap: carry the old version's added items the new model lacks (posted after the retrain read
        the log), catch up, then retire the old version's item state."""
        try:
            lacking = [i for i in await self.store.load_added_items(old) if i not in model.items]
            if lacking:
                await self.store.carry_items(old, model.version, lacking)
            await self.sync(model)
            await self.store.retire_items(old)
        except StoreUnavailable:  # the old state stays; the next catch-up still serves what was carried
            self.metrics.store_errors.labels("carry_items").inc()
            await self.sync(model)

    async def sync(self, model: ServedModel) -> int:
        """Catch up with every item added to ``model``'s version; how many rows changed here."""
        try:
            added = await self.store.load_added_items(model.version)
        except StoreUnavailable:
            self.metrics.store_errors.labels("load_added_items").inc()
            return 0
        changed = 0
        for item_id, item in added.items():
            if item_id in model.items:
                continue  # trained into this model after all
            if item.codes is not None:
                changed += self._apply(model, item_id, item.codes[0], model.item_foldin.decode(item.codes[1]))
            if item.generation > model.added.generation(item_id):  # its save was lost: recompute it here
                try:
                    state = await self.store.item_users(model.version, item_id)
                except StoreUnavailable:
                    self.metrics.store_errors.labels("item_users").inc()
                    return changed
                changed += await self.fold(model, item_id, state)
        return changed

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.item_sync_seconds)
            model = self._current()
            if model is not None:
                try:
                    await self.sync(model)
                except Exception:  # noqa: BLE001 - a bad row must not stop the catch-up for good
                    log.exception("catching up with added items failed; retrying in %.0f s",
                                  self.settings.item_sync_seconds)
