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

from service.api import openapi
from service.api.deps import require_read_key
from service.api.routes import admin, docs, health, interactions, items, recommend
from service.core import problems
from service.core.config import Settings
from service.core.metrics import Metrics, MetricsMiddleware
from service.core.problems import Problem
from service.engine.faiss_build import describe as faiss_build
from service.engine.faiss_build import faiss
from service.engine.recommender import Recommender, UnknownUser, UserUnavailable
from service.engine.registry import ModelRegistry, NoModelLoaded, ReloadRefused
from service.store.base import ItemCapReached, KeyReused, Store, StoreUnavailable
from service.store.local_store import LocalStore
from service.store.redis_store import RedisStore

log = logging.getLogger(__name__)

_RETRY = {"Retry-After": "1"}


def _write_unconfirmed(error: StoreUnavailable) -> Problem:
    """A write the store did not confirm: say whether it may have been recorded, and how to retry safely."""
    if not error.sent:
        return Problem(503, "store-unavailable", f"{error}; nothing was recorded, retry later",
                       headers=_RETRY, outcome="not-recorded")
    return Problem(503, "store-unavailable", f"{error}; the interactions may or may not have been recorded: "
                   "retry with the same Idempotency-Key and body to have them recorded exactly once (a retry "
                   "without one may record them twice)", headers=_RETRY, outcome="unknown")


_PROBLEMS = {
    NoModelLoaded: lambda e: Problem(503, "no-model", f"no model is loaded yet: {e}", headers={"Retry-After": "5"}),
    UnknownUser: lambda e: Problem(404, "unknown-user", f"user {e.args[0]!r} is not in the model and has posted "
                                   "no interaction with one of its items"),
    UserUnavailable: lambda e: Problem(503, "store-unavailable", f"user {e.args[0]!r} is not in the model, and "
                                       "the store that knows users from their posts does not answer; retry later",
                                       headers=_RETRY),
    KeyReused: lambda e: Problem(422, "idempotency-key-reused", "this Idempotency-Key was already used for a "
                                 "different body; nothing was recorded: use a new key for a new post"),
    ItemCapReached: lambda e: Problem(409, "item-cap-reached", f"{e} (GNAQ_MAX_ADDED_ITEMS); nothing was recorded: "
                                      "items already added, and trained ones, are still accepted, and new items "
                                      "again once the next model is served", added_items=e.added, cap=e.cap),
    StoreUnavailable: _write_unconfirmed,
    ReloadRefused: lambda e: Problem(409, "artifact-refused", str(e)),
}


def open_store(settings: Settings) -> Store:
    """Redis when configured, else the embedded store next to the models."""
    if settings.redis_url:
        return RedisStore(settings.redis_url, timeout=settings.redis_timeout_seconds,
                          retry_seconds=settings.redis_retry_seconds, codes_ttl=settings.user_state_ttl_seconds,
                          write_timeout=settings.redis_write_timeout_seconds,
                          near_ttl=settings.cache_ttl_seconds * (1 - settings.cache_ttl_jitter),
                          near_capacity=settings.near_cache_entries, connections=settings.redis_connections)
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
        app.state.recommender = recommender = Recommender(registry, store, settings, metrics)
        recommender.catalogue.start()
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
            await recommender.catalogue.close()
            await store.close()

    app = FastAPI(title="GNAQ-Rec", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Recommendations from node-aware quantized graph embeddings (GNAQ).")
    app.state.settings, app.state.metrics = settings, metrics
    reads = [] if settings.open_reads else [Depends(require_read_key)]
    unauthorized = {} if settings.open_reads else openapi.problem_responses({401: "missing or invalid API key"})
    for module in (recommend, items):
        app.include_router(module.build(settings), dependencies=reads, responses=unauthorized)
    app.include_router(interactions.build(settings))
    for module in (admin, health):
        app.include_router(module.router)
    docs.install(app)
    problems.install(app, _PROBLEMS)
    openapi.install(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
