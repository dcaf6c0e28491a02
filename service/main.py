"""The app factory: ``uvicorn --factory service.main:create_app`` or ``gnaq serve``.

The lifespan opens the store (Redis when ``REDIS_URL`` is set, else the embedded one), loads the
version ``<model dir>/CURRENT`` names (the app starts, unready, if there is none yet) and polls
``CURRENT`` for new versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import torch
from fastapi import Depends, FastAPI

from service.api.deps import require_read_key
from service.api.routes import admin, health, interactions, items, recommend
from service.core import problems
from service.core.config import Settings
from service.core.metrics import Metrics, MetricsMiddleware
from service.core.problems import Problem
from service.engine.faiss_build import describe as faiss_build
from service.engine.faiss_build import faiss
from service.engine.recommender import Recommender, UnknownItems, UnknownUser
from service.engine.registry import ModelRegistry, NoModelLoaded, ReloadRefused
from service.store.base import Store, StoreUnavailable
from service.store.local_store import LocalStore
from service.store.redis_store import RedisStore

log = logging.getLogger(__name__)

_PROBLEMS = {
    NoModelLoaded: lambda e: Problem(503, "no-model", f"no model is loaded yet: {e}", headers={"Retry-After": "5"}),
    UnknownUser: lambda e: Problem(404, "unknown-user", f"user {e.args[0]!r} is not in the model and has posted "
                                   "no interactions"),
    UnknownItems: lambda e: Problem(422, "unknown-item", f"unknown item id(s): {e}; nothing was recorded",
                                    unknown_items=e.item_ids),
    StoreUnavailable: lambda e: Problem(503, "store-unavailable", f"{e}; nothing was recorded, retry later",
                                        headers={"Retry-After": "1"}),
    ReloadRefused: lambda e: Problem(409, "artifact-refused", str(e)),
}


def open_store(settings: Settings) -> Store:
    """Redis when configured, else the embedded store next to the models."""
    if settings.redis_url:
        return RedisStore(settings.redis_url, timeout=settings.redis_timeout_seconds,
                          retry_seconds=settings.redis_retry_seconds, codes_ttl=settings.user_state_ttl_seconds,
                          write_timeout=settings.redis_write_timeout_seconds,
                          near_ttl=settings.cache_ttl_seconds * (1 - settings.cache_ttl_jitter),
                          near_capacity=settings.near_cache_entries)
    return LocalStore(settings.interaction_log_path)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment (``GNAQ_*``, ``REDIS_URL``)."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faiss.omp_set_num_threads(settings.search_threads)
        torch.set_num_threads(settings.search_threads)
        log.info("FAISS %s; %d search thread(s)", faiss_build(), settings.search_threads)
        store = open_store(settings)
        await store.start()
        registry = ModelRegistry(settings.model_dir, settings.index, metrics)
        app.state.registry = registry
        app.state.recommender = Recommender(registry, store, settings, metrics)
        try:
            await registry.reload()
        except ReloadRefused as error:
            log.error("starting without a model: %s", error)
        poller = asyncio.create_task(registry.poll(settings.reload_poll_seconds)) \
            if settings.reload_poll_seconds > 0 else None
        try:
            yield
        finally:
            if poller:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await store.close()

    app = FastAPI(title="GNAQ-Rec", version="0.1.0", lifespan=lifespan,
                  description="Recommendations from node-aware quantized graph embeddings (GNAQ).")
    app.state.settings, app.state.metrics = settings, metrics
    reads = [] if settings.open_reads else [Depends(require_read_key)]
    for module in (recommend, items):
        app.include_router(module.router, dependencies=reads)
    for module in (interactions, admin, health):
        app.include_router(module.router)
    problems.install(app, _PROBLEMS)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
